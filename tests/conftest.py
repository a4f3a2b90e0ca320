"""Shared fixtures: tiny tokenizers and models built from configs (no downloads), small data."""

from __future__ import annotations

import json
import os
import random
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    """One torch thread: the test models are tiny, and a second thread only adds contention
    (on a busy 2-core machine it made backward passes an order of magnitude slower)."""
    import torch

    torch.set_num_threads(1)

WORDS = (
    "the a movie film plot acting was is great good bad dull fun long short i liked loved hated it "
    "and but very quite story ending cast music . ! ,"
).split()


def build_word_tokenizer(folder: Path, bos: bool = False):
    """A word-level fast tokenizer: one token per word above, plus <eos>, <pad> (and <bos>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"] + (["<bos>"] if bos else [])
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        bos_token="<bos>" if bos else None, model_max_length=128,
    )
    fast.save_pretrained(folder)
    return fast


def build_tiny_model(folder: Path, arch: str = "gpt2", seed: int = 0, bos: bool = False):
    """A few-layer, small-width causal LM of the given architecture, saved with the tokenizer.

    Dropout is off so runs with different process counts draw the same computation.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

    tok = build_word_tokenizer(folder, bos=bos)
    v = len(tok)
    common = dict(vocab_size=v, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = {
        "gpt2": lambda: GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0, **common),
        "llama": lambda: LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                     num_key_value_heads=1, max_position_embeddings=128, **common),
        "gpt_neox": lambda: GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                          num_attention_heads=2, max_position_embeddings=128, **common),
    }[arch]()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder)
    return folder


@contextmanager
def crash_at_save(step: int, written: bool = True):
    """A crash at the worst moment: inside the block, `TrainSession.save` for checkpoint `step`
    raises KeyboardInterrupt right after writing it (`written`) or instead of writing it; the
    block must end with that interrupt."""
    from rlhfkit.train import session

    original = session.TrainSession.save

    def save(self, at, *a, **k):
        if written:
            original(self, at, *a, **k)
        if at == step:
            raise KeyboardInterrupt
        if not written:
            original(self, at, *a, **k)

    session.TrainSession.save = save
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        session.TrainSession.save = original


def free_port() -> int:
    """An explicit free TCP port for torchrun: with --master_port=0 the workers are told port 0
    and can hang in rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(verb: str, nproc: int, out: Path, args: list[str], *extra: str, timeout: int = 300) -> list[dict]:
    """`python -m torch.distributed.run --nproc_per_node=N -m rlhfkit.cli VERB --out OUT --set A ...`
    on CPU (gloo), one torch thread per process, tests/ importable (for `module:function` specs).
    Asserts it succeeded; returns the rows of OUT/metrics.jsonl ([] if there is none)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "-m", "rlhfkit.cli", verb, "--out", str(out), *extra]
    for a in args:
        cmd += ["--set", a]
    path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONPATH": path, "RLHFKIT_PROGRESS": "0"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = Path(out) / "metrics.jsonl"
    return [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []


def launch_one_and_two(verb: str, args: list[str], tmp_path: Path, steps: int) -> tuple[list[dict], list[dict]]:
    """The parity tests' runs: `verb` with `args` under torchrun on 1 process (tmp_path/one), then 2
    (tmp_path/two); asserts each logged `steps` rows and returns both runs' rows."""
    one = torchrun(verb, 1, tmp_path / "one", args)
    two = torchrun(verb, 2, tmp_path / "two", args)
    assert len(one) == len(two) == steps
    return one, two


def assert_metrics_match(one: list[dict], two: list[dict], keys) -> None:
    """Row by row, each of `keys` in run `one` within rel 1e-4 / abs 1e-5 of run `two` (the parity
    tests say in their docstrings what was measured and what a bug would move them by)."""
    for a, b in zip(one, two, strict=True):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key


def offline_parity_args(model: Path, train: Path, *extra: str) -> list[str]:
    """What test_{dpo,kto,orpo}_distributed train with: 8 rows a step in micro-batches of 2 (M = 4),
    4 steps at lr 1e-2, no sampling or evaluation, + `extra` (beta, the step-1 checkpoint)."""
    return [f"model.name_or_path={model}", f"data.train={train}", "sampling.prompts=null", "sampling.text=null",
            "train.batch_size=8", "train.micro_batch_size=2", "train.lr=1e-2", "train.max_steps=4",
            "log.progress=false", "log.eval_every=0", *extra]


def assert_reference_logps_match(one: Path, two: Path, atol: float) -> None:
    """The cached training-set reference log-probs of runs `one` and `two` within `atol` (DPO, KTO:
    the reference pass is sharded, so its batches differ between the runs)."""
    import torch
    from safetensors.torch import load_file

    ref_one, ref_two = (load_file(str(Path(d) / "ref_logps.safetensors")) for d in (one, two))
    torch.testing.assert_close(ref_one["train"], ref_two["train"], rtol=0, atol=atol)


def random_demos(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    content = [w for w in WORDS if w not in ".!,"]
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(content) for _ in range(rng.randint(1, 4)))
        response = " ".join(rng.choice(content) for _ in range(rng.randint(1, 6))) + " ."
        rows.append({"prompt": prompt, "response": response})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return build_tiny_model(tmp_path / "model")


@pytest.fixture
def demos(tmp_path) -> tuple[Path, Path]:
    return write_jsonl(tmp_path / "train.jsonl", random_demos(48, 0)), write_jsonl(tmp_path / "eval.jsonl", random_demos(16, 1))

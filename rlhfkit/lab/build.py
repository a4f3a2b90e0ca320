"""Build the lab (corpus, tokenizer, tiny base LM, measurements) and find built labs.

Why atomic: the lab is a cache shared by every command and test. It is built in a
temporary sibling folder and renamed into place only once complete, manifest written
last, so a crashed or interrupted build can never be mistaken for a finished one.

Sizes: "full" is the default world (about two minutes on one CPU core); "tiny" builds in
a few seconds, with a barely trained model, for fast unit tests of other components.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import torch
import transformers

from rlhfkit.data.jsonl import write_jsonl
from rlhfkit.lab import corpus, layout, measure
from rlhfkit.lab.gold import A_MALFORMED, B_REPETITION, C_SHOUTING
from rlhfkit.lab.pretrain import pretrain
from rlhfkit.lab.spec import SIZES, LabSize, lab_key
from rlhfkit.lab.tokenizer import save_tokenizer, train_tokenizer


@contextlib.contextmanager
def _one_torch_thread():
    """Run torch on one thread, restoring the caller's setting afterwards.

    The lab model's (32, ~31, 128) matmuls split badly across cores: on an idle 2-core
    machine two threads would save perhaps a third of the time, but on a busy one
    (parallel tests, other jobs) oversubscribed OpenMP threads spin-wait on each other
    and a step took 1.0-2.8 s instead of 0.12-0.39 s with one thread. One thread keeps
    the build time predictable, and its numbers independent of the thread count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def write_data(folder: Path, seed: int, size: LabSize) -> dict[str, list[dict]]:
    """Generate and write every data file; SFT and prompt splits respect the held-out prompts."""
    train_prompts, eval_prompts = corpus.prompt_splits(size.prompt_draws, seed)
    data = {
        "pretrain_eval": corpus.documents("review", size.pretrain_eval, seed, "pretrain_eval"),
        "sft_train": corpus.documents(
            "demonstration", size.sft_train, seed, "sft_train",
            keep=lambda d: not corpus.is_eval_prompt(d["prompt"]),
        ),
        "sft_eval": corpus.documents(
            "demonstration", size.sft_eval, seed, "sft_eval",
            keep=lambda d: corpus.is_eval_prompt(d["prompt"]),
        ),
        "prompts_train": [{"prompt": p} for p in train_prompts],
        "prompts_eval": [{"prompt": p} for p in eval_prompts],
    }
    for name, records in data.items():
        write_jsonl(layout.data_path(folder, name), records)
    return data


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the finished build into place, replacing an older lab at `out_dir` if any."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_lab(
    out_dir: str | Path, seed: int = 0, size: str = "full", progress: bool = True
) -> Path:
    """Build a lab into `out_dir` (replacing what is there) and return its path.

    `progress` shows the pretraining bar and prints a summary of the measured metrics.
    """
    if size not in SIZES:
        raise ValueError(f"unknown lab size {size!r}; choose from {', '.join(SIZES)}")
    spec, out_dir = SIZES[size], Path(out_dir).expanduser().resolve()
    start, cpu_start = time.time(), time.process_time()
    key = lab_key()  # of the code as it starts building
    cfg = replace(spec.pretrain, seed=seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        with _one_torch_thread():
            texts = [
                d["text"]
                for d in corpus.documents("review", cfg.steps * cfg.batch_size, seed, "pretrain")
            ]
            tokenizer = train_tokenizer(texts[: spec.tokenizer_docs], max_length=cfg.n_positions)
            model, losses = pretrain(texts, tokenizer, cfg, progress=progress)
            model.save_pretrained(tmp / layout.BASE_DIR)
            save_tokenizer(tokenizer, tmp / layout.BASE_DIR)
            data = write_data(tmp, seed, spec)
            metrics = _measure(model, tokenizer, data, spec, losses, seed)
        manifest = {
            "key": key,
            "seed": seed,
            "size": size,
            "build_seconds": round(time.time() - start, 1),
            # CPU time of the build process: close to the wall time on an idle machine,
            # and what to compare when the wall time was inflated by other jobs.
            "build_cpu_seconds": round(time.process_time() - cpu_start, 1),
            "metrics": metrics,
            "model": {
                **asdict(cfg),
                "parameters": sum(p.numel() for p in model.parameters()),
                "vocab_size": len(tokenizer),
            },
            "records": {name: len(records) for name, records in data.items()},
            "gold_formula": (
                "compound*wellformed*(1-repetition)*(1-shouting)"
                f" - {A_MALFORMED}*(1-wellformed) - {B_REPETITION}*repetition"
                f" - {C_SHOUTING}*shouting"
            ),
            "software": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        (tmp / layout.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(summary(manifest, out_dir))
    return out_dir


def _measure(model, tokenizer, data, spec: LabSize, losses: list[float], seed: int) -> dict:
    """The build's certificate: perplexity, base-sample quality, demonstration gold."""
    eval_prompts = [r["prompt"] for r in data["prompts_eval"]]
    prompts = [eval_prompts[i % len(eval_prompts)] for i in range(spec.samples)]
    responses = measure.sample_responses(model, tokenizer, prompts, seed=seed)
    demos = data["sft_train"]
    tail = losses[-50:]
    return {
        "pretrain_final_loss": round(sum(tail) / len(tail), 4),
        "base_perplexity": round(
            measure.perplexity(model, tokenizer, [r["text"] for r in data["pretrain_eval"]]), 4
        ),
        "base_samples": measure.sample_metrics(prompts, responses),
        "sft_demonstrations": measure.sample_metrics(
            [d["prompt"] for d in demos], [d["response"] for d in demos]
        ),
    }


def summary(manifest: dict, lab: Path) -> str:
    """A few lines for the terminal after a build."""
    m = manifest["metrics"]
    base, demos = m["base_samples"], m["sft_demonstrations"]
    return "\n".join(
        [
            f"lab built at {lab} ({manifest['size']}, seed {manifest['seed']}) "
            f"in {manifest['build_seconds']:.0f} s (CPU {manifest['build_cpu_seconds']:.0f} s)",
            f"  base perplexity on held-out reviews: {m['base_perplexity']:.3f}",
            f"  base samples (T=1): {base['well_formed_share']:.1%} well-formed, "
            f"gold mean {base['gold']['mean']:+.3f} (std {base['gold']['std']:.3f})",
            f"  SFT demonstrations: gold mean {demos['gold']['mean']:+.3f} "
            f"(std {demos['gold']['std']:.3f})",
        ]
    )


def ensure_lab(path: str | Path | None = None, size: str = "full") -> Path:
    """The lab at `path` (default: `default_lab_dir()`), built first if missing or stale.

    A cached lab is reused when its manifest has the current key (`spec.lab_key`) and a size at
    least `size` (a full lab serves tiny requests). Anything else is rebuilt, atomically and under
    the build lock, with the seed its manifest records (0 for a new lab).
    """
    if size not in SIZES:
        raise ValueError(f"unknown lab size {size!r}; choose from {', '.join(SIZES)}")
    lab = Path(path).expanduser() if path is not None else layout.default_lab_dir()
    if layout.is_built(lab, size):
        return lab
    with _build_lock(lab):
        if layout.is_built(lab, size):  # another process built it while we waited
            return lab
        old = layout.read_manifest(lab) or {}
        if old:
            why = (f"a {old.get('size')} lab, {size} requested" if old.get("key") == lab_key()
                   else f"built by other lab code or config (key {old.get('key')}, now {lab_key()})")
            print(f"[lab] rebuilding the lab at {lab}: {why}", flush=True)
        return build_lab(lab, seed=int(old.get("seed", 0)), size=size)


@contextlib.contextmanager
def _build_lock(lab: Path):
    """Serialise builds of one lab folder across processes (parallel test workers, two
    shells): the second waits, then finds the first one's lab instead of replacing it
    under the feet of a process already reading it. No-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    lab.parent.mkdir(parents=True, exist_ok=True)
    with open(lab.with_name(f".{lab.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def data_file(name: str, lab: str | Path | None = None) -> Path:
    """Path of a lab data file, e.g. `data_file("sft_train")`; builds the default lab if needed."""
    if name not in layout.DATA_FILES:  # fail on a typo before starting a two-minute build
        raise KeyError(f"unknown lab data file {name!r}; choose from {', '.join(layout.DATA_FILES)}")
    return layout.data_path(ensure_lab(lab) if lab is None else Path(lab), name)


def base_model_dir(lab: str | Path | None = None) -> Path:
    """The base model folder (HF model + tokenizer); builds the default lab if needed."""
    return (ensure_lab(lab) if lab is None else Path(lab)) / layout.BASE_DIR

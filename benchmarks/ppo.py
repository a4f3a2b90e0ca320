"""rlhfkit PPO vs TRL 0.29.1's PPOTrainer (trl.experimental.ppo, TRL's last release with PPO),
side by side in one run, on the same tiny policy, reward model, prompts, batch, response length
and PPO epochs.

    .venv/bin/python benchmarks/ppo.py                      # builds the TRL venv on first use
    .venv/bin/python benchmarks/ppo.py --steps 8 --threads 2 --out runs/bench_ppo.json

TRL 0.29.1 cannot share a venv with the trl 1.x rlhfkit's dev extras pin, so it lives in its own
venv (default benchmarks/.venv-trl029, created with `pip install torch==<this torch> trl==0.29.1`
when missing). Each framework runs in its own subprocess (this same file with --child), so peak
memory (max RSS) is per framework. Throughput is steady-state episodes/s: batch * (steps - 1) /
(time from the end of step 1 to the end of the last step), i.e. the first step (allocator and
kernel warm-up) is excluded for both; the same over the process's CPU time (episodes/CPU-s) is
reported too, as it is much less disturbed by other work on a shared machine.

Same work on both sides: policy/ref = one GPT-2-style model, reward = value init = one
sequence-classifier built from it (TRL's convention: the critic starts from the RM), pad != EOS
(TRL finds padding by the pad id), temperature 1, stop at EOS, k1 KL with beta 0.05, GAE
gamma 1 / lambda 0.95, clip 0.2, vf_coef 0.1, no whitening of rewards, advantages whitened.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_TRL_VENV = HERE / ".venv-trl029"


# ----------------------------------------------------------------------------- shared workspace


def build_workspace(root: Path, args, reward_model: bool = True) -> dict:
    """Tokenizer, policy, reward model (unless reward_model=False) and prompts, saved as plain HF
    folders / JSONL."""
    import random

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        AutoModelForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )

    root.mkdir(parents=True, exist_ok=True)
    if args.policy:
        return _workspace_from_policy(root, args)
    words = [f"w{i}" for i in range(args.vocab - 3)]
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=512)
    policy_dir, rm_dir = root / "policy", root / "rm"
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=max(1, args.width // 32), n_positions=256,
                     vocab_size=len(vocab), eos_token_id=1, pad_token_id=0, bos_token_id=1)
    policy = GPT2LMHeadModel(cfg)
    if args.eos_logit:
        # Raise EOS's logit by about `eos_logit` nats at every position (logits = ln_f(h) @ wte^T, so
        # a shift of ln_f's bias along wte[EOS] does it), so responses end at varied lengths the way
        # an SFT model's do; --eos-logit 0 gives responses that (almost) all run to the limit.
        with torch.no_grad():
            e = policy.transformer.wte.weight[1]
            policy.transformer.ln_f.bias += args.eos_logit * e / e.dot(e)
    policy.save_pretrained(policy_dir)
    fast.save_pretrained(policy_dir)
    if reward_model:
        rm = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1)
        rm.config.pad_token_id = 0
        rm.save_pretrained(rm_dir)
        fast.save_pretrained(rm_dir)
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(4, args.prompt_words))) for _ in range(args.prompts)]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return {"policy": str(policy_dir), "rm": str(rm_dir), "prompts": str(root / "prompts.jsonl")}


def _workspace_from_policy(root: Path, args) -> dict:
    """A given policy folder (e.g. the lab SFT model; its pad must differ from EOS for TRL), an RM
    built from it, and the first --prompts prompts of --prompt-source."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.data import read_records

    tok = AutoTokenizer.from_pretrained(args.policy)
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        raise SystemExit("--policy needs a tokenizer whose pad token differs from EOS (TRL finds padding by id)")
    rm_dir = root / "rm"
    rm = AutoModelForSequenceClassification.from_pretrained(args.policy, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    prompts = [r.prompt for r in read_records(args.prompt_source, "prompt")][: args.prompts]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return {"policy": str(Path(args.policy).resolve()), "rm": str(rm_dir), "prompts": str(root / "prompts.jsonl")}


# ----------------------------------------------------------------------------- children


def child_rlhfkit(ws: dict, args) -> dict:
    import torch

    from rlhfkit.config import load_config
    from rlhfkit.recipes.ppo import PPOConfig, run
    from rlhfkit.train.run_dir import read_metrics
    from rlhfkit.train.session import TrainSession

    torch.set_num_threads(args.threads)
    marks: list[tuple[float, float]] = []  # (wall, CPU) at the end of every step, as TRL's on_step_end
    log = TrainSession.log
    TrainSession.log = lambda self, step, metrics: (marks.append((time.time(), time.process_time())), log(self, step, metrics))[1]
    out = Path(ws["root"]) / "run-rlhfkit"
    cfg = load_config(PPOConfig, None, [
        f"model.name_or_path={ws['policy']}", f"reward.source={ws['rm']}", "critic.init=reward",
        f"data.prompts={ws['prompts']}", "eval.text=null", "eval.gold=false", "log.progress=false",
        "log.save_every=0", f"train.batch_size={args.batch}", f"train.micro_batch_size={args.micro}",
        f"train.max_steps={args.steps}", f"train.seed={args.seed}", "train.lr=1e-5", "train.schedule=linear",
        f"ppo.ppo_epochs={args.epochs}", f"ppo.num_minibatches={args.minibatches}", "ppo.kl_coef=0.05",
        f"rollout.max_new_tokens={args.response_length}", "rollout.temperature=1.0",
        f"rollout.generate_batch_size={args.batch}", "reward.missing_eos_penalty=-1.0",
        "rollout.max_prompt_length=128",
    ] + ([f"rollout.backend={args.rlhfkit_backend}"] if args.rlhfkit_backend else []))
    run(cfg, out)
    rows = read_metrics(out / "metrics.jsonl")
    from sidebyside import time_parts

    return {"step_end_s": [w for w, _ in marks], "step_end_cpu_s": [c for _, c in marks], "time_parts": time_parts(rows),
            "response_length": [r["response/length"] for r in rows],
            "reward": [r["reward/mean"] for r in rows], "kl": [r["kl/mean"] for r in rows]}


def child_trl(ws: dict, args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(ws["policy"], padding_side="left")
    prompts = [json.loads(line)["prompt"] for line in Path(ws["prompts"]).read_text().splitlines()]
    ds = Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in prompts]})
    cfg = PPOConfig(
        output_dir=str(Path(ws["root"]) / "run-trl"), per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.batch // args.micro, num_mini_batches=args.minibatches,
        num_ppo_epochs=args.epochs, total_episodes=args.batch * args.steps, response_length=args.response_length,
        local_rollout_forward_batch_size=args.batch, temperature=1.0, stop_token="eos", missing_eos_penalty=1.0,
        kl_coef=0.05, learning_rate=1e-5, lr_scheduler_type="linear", seed=args.seed, report_to="none",
        save_strategy="no", num_sample_generations=0, logging_steps=1, use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True, bf16=False, fp16=False, dataloader_num_workers=0,
    )
    policy = AutoModelForCausalLM.from_pretrained(ws["policy"])
    ref = AutoModelForCausalLM.from_pretrained(ws["policy"])
    rm = AutoModelForSequenceClassification.from_pretrained(ws["rm"], num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(ws["rm"], num_labels=1)
    ends: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.time())
            cpu.append(time.process_time())

    clock = Clock()
    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                         train_dataset=ds, value_model=value, eval_dataset=ds.select(range(8)), callbacks=[clock])
    logs: list[dict] = []
    trainer.log = lambda m, *a, **k: logs.append(dict(m))  # keep metrics, skip printing
    trainer.train()
    return {"step_end_s": ends, "step_end_cpu_s": cpu, "reward": [m.get("objective/scores") for m in logs], "kl": [m.get("objective/kl") for m in logs]}


# ----------------------------------------------------------------------------- parent


def ensure_trl_venv(path: Path) -> Path:
    python = path / "bin" / "python"
    if python.exists():
        return python
    import torch

    print(f"[bench] creating {path} with torch=={torch.__version__.split('+')[0]} and trl==0.29.1 ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "trl==0.29.1"], check=True)
    return python


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6, help="PPO steps (rollout batches); the first is warm-up")
    p.add_argument("--batch", type=int, default=64, help="episodes per rollout batch")
    p.add_argument("--micro", type=int, default=16, help="episodes per forward/backward")
    p.add_argument("--minibatches", type=int, default=1)
    p.add_argument("--epochs", type=int, default=4, help="PPO epochs per rollout batch")
    p.add_argument("--response-length", type=int, default=32)
    p.add_argument("--prompts", type=int, default=512)
    p.add_argument("--prompt-words", type=int, default=16)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--eos-logit", type=float, default=4.5,
                   help="extra logit of EOS at every step (4.5: responses end at varied lengths; 0: most run to the limit)")
    p.add_argument("--policy", help="use this policy folder (e.g. the lab SFT model) instead of building one")
    p.add_argument("--prompt-source", default="lab:prompts_train", help="prompt records for --policy")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each child (same for both)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="runs per side, alternating; medians are reported")
    p.add_argument("--trl-python", help="python of a venv with trl==0.29.1 (default: benchmarks/.venv-trl029)")
    p.add_argument("--workdir", default="runs/bench_ppo", help="where models and runs are written")
    p.add_argument("--out", help="write the results JSON here too")
    p.add_argument("--only", choices=["rlhfkit", "trl"], help="run one side only")
    p.add_argument("--baseline-src", help="also run rlhfkit from this source tree (e.g. an older commit's)")
    p.add_argument("--rlhfkit-backend", help="rollout.backend for the rlhfkit side (default: its default)")
    args = p.parse_args(argv)

    import sidebyside

    root = Path(args.workdir).resolve()
    ws = {**build_workspace(root, args), "root": str(root)}
    sides = sidebyside.sides(args, lambda: args.trl_python or str(ensure_trl_venv(DEFAULT_TRL_VENV)))
    setup = {k: v for k, v in vars(args).items() if k not in ("trl_python", "workdir", "out", "only")}
    summary = sidebyside.compare(Path(__file__).resolve(), sides, ws, args, f"PPO throughput (median of {args.repeats}), "
                                 f"CPU threads={args.threads}, {json.dumps(setup)}", setup)
    return summary

if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        import sidebyside

        sidebyside.child_main({"rlhfkit": child_rlhfkit, "trl": child_trl})
    else:
        main()

"""rlhfkit GRPO vs TRL's GRPOTrainer (and, with --method rloo, RLOO vs RLOOTrainer), side by side
in one run, on the same tiny policy, prompts, group size G, response length, beta, updates per
batch, batch size and a deterministic reward function.

    .venv/bin/python benchmarks/grpo.py                          # GRPO, 6 steps, 3 repeats per side
    .venv/bin/python benchmarks/rloo.py                          # the same for RLOO
    .venv/bin/python benchmarks/grpo.py --baseline-src /tmp/base  # + rlhfkit from another tree (before/after)

TRL is the one installed next to rlhfkit (the dev extras' trl 1.x). Each run is its own subprocess
(benchmarks/sidebyside.py), the sides interleaved, so peak RSS (max RSS) is per run and machine
load hits both. Throughput is steady-state episodes (completions) per second: 64 x (steps - 1)
over the time from the end of step 1 to the end of the last, in wall and in process CPU time (the
latter is much less disturbed by other work on a shared machine).

Same work on both sides, read from TRL's GRPOConfig / RLOOConfig:
- model: GPT-2, 4 layers, width 128, a 2048-word vocabulary (benchmarks/ppo.py's workspace: EOS
  logit raised so responses end at varied lengths), pad != EOS; reference = the initial policy;
  dropout off on both (TRL: disable_dropout=True), fp32, no gradient checkpointing (TRL's default
  is on: turned off), same torch threads;
- one step = one generation batch of 64 completions = 64 / G prompts x G (num_generations /
  rollout.group_size), all generated in one call (generation_batch_size / rollout.generate_batch_size
  = 64), then one optimizer step (num_iterations / ppo_epochs = 1, steps_per_generation =
  gradient_accumulation_steps = 64 / 16: micro-batches of 16 = per_device_train_batch_size /
  train.micro_batch_size, one minibatch);
- sampling: temperature 1, top-k off, top-p 1, at most 32 new tokens (max_completion_length /
  rollout.max_new_tokens), stop at EOS;
- reward: `reward` below, a pure function of the completion's text, no EOS penalty
  (reward.missing_eos_penalty=0; TRL has none), no clipping;
- GRPO: beta 0.04 with the k3 KL in the loss, advantages (r - group mean) / group std
  (scale_rewards="group"), clip epsilon 0.2, token-level loss over the batch's tokens
  (loss_type="dapo" = rlhfkit's token_mean);
- RLOO: G = 4, beta 0.05 with the k1 KL summed into the sequence reward, leave-one-out baseline,
  no advantage normalisation, clip 0.2, a sequence-level loss (TRL: the sequence log-ratio;
  rlhfkit: seq_mean of the token losses, the same passes and cost);
- AdamW lr 1e-5 constant, no warmup, weight decay 0, gradient clipping at 1.0; TRL's logging,
  evaluation, saving and completion logging off (a metrics dict per step kept, as rlhfkit's
  metrics.jsonl line); rlhfkit's held-out text and gold judge off, no checkpoints.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "grpo.py"


def reward(prompts, completions, **_) -> list[float]:
    """Deterministic and cheap: the share of the completion's words w<k> with k divisible by 3
    (the workspace's words are w0 ... w2044), so rewards vary within a group."""
    out = []
    for text in completions:
        words = text.split()
        out.append(sum(1 for w in words if w[1:].isdigit() and int(w[1:]) % 3 == 0) / (len(words) + 1))
    return out


METHODS = {
    # name: (TRL trainer and config class names, group size G, beta)
    "grpo": ("GRPOTrainer", "GRPOConfig", 8, 0.04),
    "rloo": ("RLOOTrainer", "RLOOConfig", 4, 0.05),
}


# ----------------------------------------------------------------------------- children


def child_rlhfkit(ws: dict, args) -> dict:
    import torch

    from rlhfkit.config import load_config
    from rlhfkit.train.run_dir import read_metrics
    from rlhfkit.train.session import TrainSession

    if args.method == "grpo":
        from rlhfkit.recipes.grpo import GRPOConfig as Config
        from rlhfkit.recipes.grpo import run
    else:
        from rlhfkit.recipes.rloo import RLOOConfig as Config
        from rlhfkit.recipes.rloo import run
    torch.set_num_threads(args.threads)
    marks: list[tuple[float, float]] = []  # (wall, CPU) at the end of every step, as TRL's on_step_end
    log = TrainSession.log
    TrainSession.log = lambda self, step, metrics: (marks.append((time.time(), time.process_time())), log(self, step, metrics))[1]
    _, _, G, beta = METHODS[args.method]
    out = Path(ws["root"]) / f"run-rlhfkit-{args.method}"
    overrides = [
        f"model.name_or_path={ws['policy']}", f"reward.source={SCRIPT}:reward", "reward.missing_eos_penalty=0",
        f"data.prompts={ws['prompts']}", "eval.text=null", "eval.gold=none", "log.progress=false", "log.save_every=0",
        f"train.batch_size={args.batch}", f"train.micro_batch_size={args.micro}", f"train.max_steps={args.steps}",
        f"train.seed={args.seed}", "train.lr=1e-5", "train.schedule=constant", "train.warmup_ratio=0",
        "train.weight_decay=0", "train.max_grad_norm=1.0", f"rollout.group_size={G}",
        f"rollout.max_new_tokens={args.response_length}", "rollout.temperature=1.0",
        f"rollout.generate_batch_size={args.batch}", "rollout.max_prompt_length=128", "algo.ppo_epochs=1",
        "algo.num_minibatches=1", "algo.clip_eps=0.2", f"algo.kl_coef={beta}",
    ]
    if args.method == "rloo":
        overrides += ["algo.loss_aggregation=seq_mean"]
    if args.rlhfkit_backend:
        overrides += [f"rollout.backend={args.rlhfkit_backend}"]
    run(load_config(Config, None, overrides), out)
    rows = read_metrics(out / "metrics.jsonl")
    from sidebyside import time_parts

    return {"step_end_s": [w for w, _ in marks], "step_end_cpu_s": [c for _, c in marks], "time_parts": time_parts(rows),
            "response_length": [r["response/length"] for r in rows], "reward": [r["reward/mean"] for r in rows]}


def child_trl(ws: dict, args) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback

    torch.set_num_threads(args.threads)
    trainer_name, config_name, G, beta = METHODS[args.method]
    from rlhfkit.data.jsonl import read_jsonl

    prompts = [r["prompt"] for r in read_jsonl(ws["prompts"])]
    tok = AutoTokenizer.from_pretrained(ws["policy"], padding_side="left")
    cfg = getattr(trl, config_name)(
        output_dir=str(Path(ws["root"]) / f"run-trl-{args.method}"), per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.batch // args.micro, num_generations=G,
        max_completion_length=args.response_length, beta=beta, num_iterations=1, epsilon=0.2, temperature=1.0,
        top_p=1.0, top_k=0, max_steps=args.steps, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, seed=args.seed, gradient_checkpointing=False, disable_dropout=True,
        bf16=False, fp16=False, use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
        eval_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, log_completions=False,
        **({"loss_type": "dapo", "scale_rewards": "group"} if args.method == "grpo" else {"normalize_advantages": False}),
    )
    ends: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.time())
            cpu.append(time.process_time())

    trainer = getattr(trl, trainer_name)(model=ws["policy"], reward_funcs=reward, args=cfg,
                                         train_dataset=Dataset.from_dict({"prompt": prompts}),
                                         processing_class=tok, callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # per-step log lines; the metrics are kept in log_history
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {"step_end_s": ends, "step_end_cpu_s": cpu, "reward": [h["reward"] for h in logs],
            "response_length": [h.get("completions/mean_length") for h in logs]}


# ----------------------------------------------------------------------------- parent


def main(argv: list[str] | None = None, method: str = "grpo") -> dict:
    import sidebyside
    from ppo import build_workspace

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", choices=sorted(METHODS), default=method)
    p.add_argument("--steps", type=int, default=6, help="optimizer steps (generation batches); the first is warm-up")
    p.add_argument("--batch", type=int, default=64, help="completions per step (prompts x G)")
    p.add_argument("--micro", type=int, default=16, help="completions per forward/backward")
    p.add_argument("--response-length", type=int, default=32)
    p.add_argument("--prompts", type=int, default=512)
    p.add_argument("--prompt-words", type=int, default=16)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--eos-logit", type=float, default=4.5, help="extra EOS logit at every step (varied lengths)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each child (same for all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="runs per side, interleaved; medians are reported")
    p.add_argument("--baseline-src", help="also run rlhfkit from this source tree (e.g. an older commit's)")
    p.add_argument("--rlhfkit-backend", help="rollout.backend for the rlhfkit side (default: its default)")
    p.add_argument("--workdir", default="runs/bench_grpo", help="where models and runs are written")
    p.add_argument("--out", help="write the results JSON here too")
    p.add_argument("--only", choices=["rlhfkit", "trl"], help="run one side only")
    args = p.parse_args(argv)
    args.policy, args.prompt_source = None, None  # build_workspace's options: a fresh GPT-2
    root = Path(args.workdir).resolve()
    ws = {**build_workspace(root, args, reward_model=False), "root": str(root)}
    setup = {k: v for k, v in vars(args).items() if k not in ("workdir", "out", "only", "policy", "prompt_source")}
    summary = sidebyside.compare(SCRIPT, sidebyside.sides(args), ws, args, f"{args.method.upper()} throughput (median of "
                                 f"{args.repeats}), CPU threads={args.threads}, {setup}", setup)
    return summary


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        import sidebyside

        sidebyside.child_main({"rlhfkit": child_rlhfkit, "trl": child_trl})
    else:
        main()

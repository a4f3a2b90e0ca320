"""Peak memory (RSS) and throughput of SFT, reward, DPO and PPO: full vs LoRA, gradient checkpointing off/on.

    python benchmarks/memory.py                                   # lab model (~1M params), all recipes
    python benchmarks/memory.py --model gpt2-100m --steps 3 --batch 4 --examples 16
    python benchmarks/memory.py --recipes sft,ppo --variants full,lora --repeats 3 --json out.json
    python benchmarks/memory.py --model gpt2-100m --recipes sft,ppo --variants full,lora --processes 2 \
        --sharding none,fsdp --steps 3 --batch 4 --examples 16    # DDP vs FSDP2, peak RSS per process

One subprocess per run (OMP_NUM_THREADS=1, torch.set_num_threads(1)), so runs do not share an
allocator and compare on a busy machine. Peak memory is `resource.getrusage(RUSAGE_SELF).ru_maxrss`
read inside the child at its end (tracemalloc does not see torch's allocator); "base" is its RSS
right after imports and one model load, so `peak - base` is roughly what training added:
gradients, optimizer state, activations, reference / critic copies, the final save.

Throughput is steady-state: the child stamps the time of every logged step (`TrainSession.log`)
and divides the work of steps 2..N by the time between the first and last stamp, so loading, the
DPO reference pass and the final save are not counted. Units are what each recipe counts: SFT
tokens/s (`train/tokens`), reward and DPO pairs/s, PPO episodes/s (the recipe's own
`perf/episodes_per_s` is also per step; this is the same quantity over steps 2..N).

Variants: `full`, `lora` (r 16, alpha 32, all linear layers), `+gc` = `model.gradient_checkpointing`.
With `--processes N` each run is N processes under torchrun (gloo on CPU), once per `--sharding`
(`none` = DDP, `fsdp` = train.sharding=fsdp); every process reports its own peak RSS and the table
shows the largest ("x2 fsdp" in the variant). Sharded PPO also reports "gather MB": the RSS added
by gathering the policy for generation (`shard.gathered`, the current RSS just after the
all-gather minus just before, the largest over steps and processes). These runs set glibc's
MALLOC_MMAP_THRESHOLD_=131072 (both DDP and FSDP): by default glibc raises its mmap threshold after
freeing large blocks, so FSDP's per-block gather and gradient buffers (freed after every block) are
then served from the heap and never returned, and RSS grows to about DDP's (measured: 86M SFT, 2.3
GB peak either way) while the live memory is half.
Reward-model LoRA trains the adapters and a full copy of the scalar head (peft SEQ_CLS). PPO
uses the lab gold judge as reward (no reward model to load), critic initialised from the policy;
with LoRA the reference is the policy with its adapters off (no copy) and the critic has its own
adapters (its frozen backbone is still a second copy).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

MODELS = {"lab": None, "gpt2-100m": dict(n_layer=12, n_embd=768, n_head=12, n_positions=128)}
VARIANTS = {"full": (False, False), "lora": (True, False), "full+gc": (False, True), "lora+gc": (True, True)}
UNITS = {"sft": "tokens/s", "reward": "pairs/s", "dpo": "pairs/s", "ppo": "episodes/s"}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:  # Linux: pages
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _prepare(work: Path, model: str, examples: int) -> tuple[str, Path, Path]:
    """Model folder (lab, or a random GPT-2 of the given size with the lab tokenizer), demonstrations
    and comparisons (the lab demonstration vs its words reversed: quality does not matter here)."""
    from rlhfkit.data import read_records, write_jsonl
    from rlhfkit.lab import base_model_dir

    lab = base_model_dir()
    name = "lab"
    if MODELS[model] is not None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

        tok = AutoTokenizer.from_pretrained(lab)
        cfg = GPT2Config(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **MODELS[model])
        torch.manual_seed(0)
        folder = work / model
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
        tok.save_pretrained(folder)
        name = str(folder)
    demos = read_records("lab:sft_train", "demonstration")[:examples]
    sft = write_jsonl(work / "demos.jsonl", [{"prompt": d.prompt, "response": d.response} for d in demos])
    pairs = [{"prompt": d.prompt, "responses": [d.response, " " + " ".join(reversed(d.response.split()))], "ranking": [0, 1]}
             for d in demos]
    dpo = write_jsonl(work / "pairs.jsonl", pairs)
    return name, sft, dpo


def _overrides(recipe: str, model: str, data: str, steps: int, batch: int, lora: bool, gc: bool, new_tokens: int,
               sharding: str = "none", processes: int = 1) -> list[str]:
    sets = [f"model.name_or_path={model}", f"train.batch_size={batch}", f"train.micro_batch_size={batch // processes}",
            f"train.sharding={sharding}",
            f"train.max_steps={steps}", "log.save_every=0", "log.eval_every=0", "log.progress=false",
            f"model.gradient_checkpointing={str(gc).lower()}"]
    sets.append(f"model.lora.enabled={str(lora).lower()}")
    if recipe in ("sft", "dpo", "reward"):
        sets += [f"data.train={data}", *(["data.eval=null"] if recipe == "sft" else [])]
    if recipe == "dpo":
        sets += ["sampling.prompts=null", "sampling.text=null"]
    if recipe == "reward":
        sets += ["data.eval_fraction=0", "normalize.source=none", "data.gold=none"]
    if recipe == "ppo":
        sets += ["reward.source=lab:gold", "data.prompts=lab:prompts_train", f"rollout.max_new_tokens={new_tokens}",
                 f"rollout.generate_batch_size={batch // processes}", "eval.text=null"]
    return sets


def child(recipe: str, lora: bool, gc: bool, model: str, data: str, steps: int, batch: int, new_tokens: int, out: str,
          sharding: str = "none") -> dict:
    import torch

    torch.set_num_threads(1)
    from rlhfkit import experience
    from rlhfkit.config import load_config
    from rlhfkit.models.loading import load_policy
    from rlhfkit.recipes import dpo, ppo, reward, sft
    from rlhfkit.train.session import TrainSession

    mod, cls = {"sft": (sft, sft.SFTConfig), "dpo": (dpo, dpo.DPOConfig), "reward": (reward, reward.RewardConfig),
                "ppo": (ppo, ppo.PPOConfig)}[recipe]
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = load_config(cls, None, _overrides(recipe, model, data, steps, batch, lora, gc, new_tokens, sharding, processes))
    if recipe == "reward":  # a backbone + scalar head; under LoRA the head is trained in full
        from rlhfkit.models.reward import build_reward_model

        probe = build_reward_model(cfg.model, pad_token_id=0)
    else:
        probe = load_policy(cfg.model)  # what loading alone costs, then freed
    trainable = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    # the model's own weights (not adapters, not peft's copy of a trained head)
    total = sum(p.numel() for n, p in probe.named_parameters() if "lora_" not in n and ".modules_to_save." not in n)
    base = _rss_mb()
    del probe

    stamps: list[tuple[float, dict]] = []
    logged = TrainSession.log

    def log(self, step, metrics):  # benchmark-only probe: the wall-clock time of each step's end
        stamps.append((time.time(), dict(metrics)))
        return logged(self, step, metrics)

    TrainSession.log = log
    gathers: list[float] = []
    gathered = experience.gathered

    @contextmanager
    def measured(*models):  # benchmark-only probe: what gathering the policy for generation adds
        before = _current_rss_mb()
        with gathered(*models):
            gathers.append(_current_rss_mb() - before)
            yield

    experience.gathered = measured
    t0 = time.time()
    mod.run(cfg, out)
    seconds = time.time() - t0
    per_step = {"sft": lambda m: m["train/tokens"], "dpo": lambda m: batch, "reward": lambda m: m["train/pairs"],
                "ppo": lambda m: batch}[recipe]
    if len(stamps) < 2:
        raise SystemExit("need at least 2 steps for a steady-state rate")
    span = stamps[-1][0] - stamps[0][0]
    work = sum(per_step(m) for _, m in stamps[1:])
    return {"recipe": recipe, "lora": lora, "gc": gc, "params": total, "trainable": trainable, "sharding": sharding,
            "processes": processes, "rank": int(os.environ.get("RANK", "0")), "gather_mb": round(max(gathers, default=0), 1),
            "base_rss_mb": round(base, 1), "peak_rss_mb": round(_rss_mb(), 1), "seconds": round(seconds, 2),
            "s_per_step": round(span / (len(stamps) - 1), 3), "throughput": round(work / span, 2), "unit": UNITS[recipe]}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spread(xs: list[float], digits: int = 1) -> str:
    med = statistics.median(xs)
    return f"{med:.{digits}f}" if len(xs) == 1 else f"{med:.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def table(results: list[dict]) -> str:
    """Markdown: one row per (model, recipe, variant); medians with (min–max) over repeats."""
    rows = ["| model | recipe | variant | params | trainable | base RSS MB | peak RSS MB | peak - base MB | throughput | s/step | gather MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["model"], r["recipe"], r["variant"]) for r in results))
    for key in keys:
        rs = [r for r in results if (r["model"], r["recipe"], r["variant"]) == key]
        r = rs[0]
        rows.append(f"| {key[0]} | {key[1]} | {key[2]} | {r['params']:,} | {r['trainable']:,} | "
                    f"{_spread([x['base_rss_mb'] for x in rs])} | {_spread([x['peak_rss_mb'] for x in rs])} | "
                    f"{_spread([x['peak_rss_mb'] - x['base_rss_mb'] for x in rs])} | "
                    f"{_spread([x['throughput'] for x in rs], 2)} {r['unit']} | {_spread([x['s_per_step'] for x in rs], 2)} | "
                    f"{_spread([x['gather_mb'] for x in rs]) if r['sharding'] == 'fsdp' and r['recipe'] == 'ppo' else ''} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=list(MODELS), default="lab")
    ap.add_argument("--recipes", default="sft,reward,dpo,ppo")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8, help="examples / pairs / episodes per step (= micro-batch)")
    ap.add_argument("--new-tokens", type=int, default=16, help="PPO rollout length")
    ap.add_argument("--examples", type=int, default=256, help="training demonstrations / pairs (DPO scores all once)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each configuration (interleaved)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--processes", type=int, default=1, help="processes per run (torchrun, gloo on CPU)")
    ap.add_argument("--sharding", default="none", help="comma-separated train.sharding values: none (DDP), fsdp")
    ap.add_argument("--child", nargs=7, metavar=("RECIPE", "LORA", "GC", "MODEL", "DATA", "OUT", "SHARDING"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        recipe, lora, gc, model, data, out, sharding = args.child
        res = child(recipe, lora == "1", gc == "1", model, data, args.steps, args.batch, args.new_tokens, out, sharding)
        # a file per process: torchrun interleaves the processes' stdout
        Path(f"{out}.result-{res['rank']}.json").write_text(json.dumps(res))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        name, sft_data, pair_data = _prepare(work, args.model, args.examples)
        runs = [(recipe, v, sh) for recipe in args.recipes.split(",") for v in args.variants.split(",")
                for sh in args.sharding.split(",")]
        for rep in range(args.repeats):
            for recipe, variant, sharding in runs:
                lora, gc = VARIANTS[variant]
                out = work / f"{recipe}-{variant}-{sharding}-{rep}"
                launch = [sys.executable]
                if args.processes > 1:
                    launch += ["-m", "torch.distributed.run", f"--nproc_per_node={args.processes}", f"--master_port={_free_port()}"]
                cmd = [*launch, __file__, "--steps", str(args.steps), "--batch", str(args.batch), "--new-tokens",
                       str(args.new_tokens), "--child", recipe, str(int(lora)), str(int(gc)), name,
                       str(sft_data if recipe == "sft" else pair_data), str(out), sharding]
                env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_PROGRESS": "0", "ACCELERATE_USE_CPU": "1",
                       **({"MALLOC_MMAP_THRESHOLD_": "131072"} if args.processes > 1 else {})}
                res = subprocess.run(cmd, env=env, capture_output=True, text=True)
                lines = [json.loads(f.read_text()) for f in sorted(work.glob(f"{out.name}.result-*.json"))]
                if res.returncode or len(lines) != args.processes:
                    sys.exit(f"{recipe} {variant} {sharding} failed:\n{res.stderr[-3000:]}")
                for x in lines:
                    print(json.dumps(x), flush=True)
                # the table shows the process that needed the most memory
                worst = max(lines, key=lambda x: x["peak_rss_mb"])
                worst["gather_mb"] = max(x["gather_mb"] for x in lines)
                label = variant if args.processes == 1 else f"{variant} x{args.processes} {'ddp' if sharding == 'none' else sharding}"
                results.append({"model": args.model, "variant": label, "repeat": rep, **worst})
    print(f"\n{args.model}: {args.steps} steps of {args.batch}, {args.repeats} repeat(s); median (min–max)\n")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

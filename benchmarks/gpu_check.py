"""GPU check: does every distributed route train every recipe family on this machine? One command,
under 10 minutes:

    make gpu-check                                  # = python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --routes fsdp --recipes sft,ppo --steps 3

Routes, each a real launch of `rlhfkit <verb>`:
    ddp    torchrun, one process per GPU, train.sharding=none (DDP)
    fsdp   torchrun, one process per GPU, train.sharding=fsdp (FSDP2; one GPU = a group of one)
    zero3  accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml (needs CUDA + deepspeed)
    vllm   ppo and grpo with rollout.backend=vllm, one process (needs CUDA + vllm)
Recipes: sft, dpo, ppo, grpo, a few steps each of a small random GPT-2 (4 layers, 256 wide) with a
word tokenizer made here (no downloads, no lab build).

One table row per (route, recipe): works / fails (with the error's last line) / skipped (with why);
tokens/s over steps 2..N (SFT: trained target tokens; DPO: chosen + rejected tokens; PPO, GRPO:
generated response tokens, the step's update included); peak memory of each process (CUDA:
torch.cuda.max_memory_allocated; without CUDA: peak RSS). Without CUDA the ddp and fsdp routes run
on 2 CPU processes (gloo) and zero3 / vllm are skipped: a dry run of the script itself. Nothing in
the test suite needs it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUTES = ("ddp", "fsdp", "zero3", "vllm")
RECIPES = ("sft", "dpo", "ppo", "grpo")
BUDGET_S = 540  # the whole check stays under 10 minutes: later runs are skipped past this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skip_reason(route: str, recipe: str, cuda: bool) -> str | None:
    """Why (route, recipe) cannot run here, or None."""
    import importlib.util

    if route in ("zero3", "vllm") and not cuda:
        return f"{route} needs CUDA"
    if route == "zero3" and importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed"
    if route == "vllm" and importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    return None


# ----------------------------------------------------------------------------- the world it runs on


def make_world(work: Path, seq_words: int = 12) -> dict[str, Path]:
    """A small random GPT-2 with a word tokenizer, and fixed-length data (so tokens per step are known)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from conftest import WORDS, build_word_tokenizer  # the test suite's no-download tokenizer
    from transformers import AutoModelForCausalLM, GPT2Config

    from rlhfkit.data import write_jsonl

    folder = work / "model"
    tok = build_word_tokenizer(folder)
    cfg = GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=256, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, bos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    rng = random.Random(0)
    words = [w for w in WORDS if w not in ".!,"]

    def text(n):
        return " ".join(rng.choice(words) for _ in range(n))

    demos = [{"prompt": text(4), "response": text(seq_words)} for _ in range(256)]
    pairs = [{"prompt": text(4), "chosen": text(seq_words), "rejected": text(seq_words)} for _ in range(256)]
    return {"model": folder, "demos": write_jsonl(work / "demos.jsonl", demos),
            "pairs": write_jsonl(work / "pairs.jsonl", pairs),
            "prompts": write_jsonl(work / "prompts.jsonl", [{"prompt": d["prompt"]} for d in demos])}


def length_reward(prompts, responses):  # a reward any response gets: its length in characters
    return [float(len(r)) for r in responses]


def overrides(recipe: str, world: dict, steps: int, batch: int, processes: int, route: str) -> list[str]:
    sets = [f"model.name_or_path={world['model']}", f"train.batch_size={batch}",
            f"train.micro_batch_size={max(batch // processes // 2, 1)}", f"train.max_steps={steps}",
            "log.save_every=0", "log.eval_every=0", "log.progress=false",
            f"train.sharding={'fsdp' if route == 'fsdp' else 'none'}"]
    if recipe == "sft":
        sets += [f"data.train={world['demos']}", "data.eval=null"]
    if recipe == "dpo":
        sets += [f"data.train={world['pairs']}", "sampling.prompts=null", "sampling.text=null"]
    if recipe in ("ppo", "grpo"):
        sets += [f"data.prompts={world['prompts']}", f"reward.source={Path(__file__).resolve()}:length_reward",
                 "eval.text=null", "eval.gold=none", "rollout.max_new_tokens=16",
                 f"rollout.generate_batch_size={max(batch // processes, 1)}",
                 f"rollout.backend={'vllm' if route == 'vllm' else 'hf'}"]
    if recipe == "grpo":
        sets += ["rollout.group_size=4"]
    return sets


# ----------------------------------------------------------------------------- one process of one run


def child(verb: str, out: str, tokens_per_item: int, sets: list[str]) -> dict:
    import torch

    from rlhfkit.cli import main
    from rlhfkit.train.session import TrainSession

    stamps: list[tuple[float, dict]] = []
    logged = TrainSession.log

    def log(self, step, metrics):  # check-only probe: when each step ended, and its metrics
        stamps.append((time.time(), dict(metrics)))
        return logged(self, step, metrics)

    TrainSession.log = log
    cuda = torch.cuda.is_available()
    code = main([verb, "--out", out, "--overwrite", *[x for s in sets for x in ("--set", s)]])
    if code:
        raise SystemExit(code)
    per_step = {"sft": lambda m, b: m["train/tokens"], "dpo": lambda m, b: b * tokens_per_item,
                "ppo": lambda m, b: b * m["response/length"], "grpo": lambda m, b: b * m["response/length"]}[verb]
    batch = int(next(s for s in sets if s.startswith("train.batch_size=")).split("=")[1])
    span = stamps[-1][0] - stamps[0][0] if len(stamps) > 1 else float("nan")
    tokens = sum(per_step(m, batch) for _, m in stamps[1:])
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rank": int(os.environ.get("RANK", "0")), "tokens_per_s": tokens / span if span > 0 else None,
            "peak_mb": round(peak, 1), "memory": "GPU allocated" if cuda else "RSS"}


# ----------------------------------------------------------------------------- the check


def launch(route: str, recipe: str, world: dict, args, processes: int, work: Path) -> dict:
    verb_out = work / f"{route}-{recipe}"
    nproc = 1 if route == "vllm" else processes
    if route == "zero3":
        launcher = ["-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/deepspeed_zero3.yaml"),
                    "--num_processes", str(nproc), "--main_process_port", str(_free_port())]
    else:
        launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}"]
    tokens_per_item = 2 * (args.seq_words + 1)  # DPO: chosen + rejected words (+ EOS) at one token a word
    cmd = [sys.executable, *launcher, str(Path(__file__).resolve()), "--child", recipe, str(verb_out), str(tokens_per_item),
           *overrides(recipe, world, args.steps, args.batch, nproc, route)]
    env = {**os.environ, "RLHFKIT_PROGRESS": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           **({} if args.cuda else {"ACCELERATE_USE_CPU": "1"})}
    t0 = time.time()
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        return {"status": "fails", "why": f"timed out after {args.run_timeout} s", "seconds": args.run_timeout}
    seconds = round(time.time() - t0, 1)
    results = [json.loads(f.read_text()) for f in sorted(work.glob(f"{verb_out.name}.result-*.json"))]
    if res.returncode or len(results) != nproc:
        lines = [x for x in res.stderr.splitlines() if x.strip() and "Warning" not in x]
        errors = [x for x in lines if "Error" in x or "error:" in x]
        return {"status": "fails", "why": (errors or lines or ["no output"])[-1][-160:], "seconds": seconds}
    results.sort(key=lambda r: r["rank"])
    return {"status": "works", "seconds": seconds, "processes": nproc, "tokens_per_s": results[0]["tokens_per_s"],
            "peak_mb": [r["peak_mb"] for r in results], "memory": results[0]["memory"]}


def table(rows: list[dict]) -> str:
    out = ["| route | recipe | result | tokens/s | peak memory per process (MB) | s | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else ""
        mem = f"{', '.join(f'{m:.0f}' for m in r['peak_mb'])} ({r['memory']})" if r.get("peak_mb") else ""
        out.append(f"| {r['route']} | {r['recipe']} | {r['status']} | {tps} | {mem} | {r.get('seconds', '')} | {r.get('why', '')} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--routes", default=",".join(ROUTES))
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16, help="global batch: examples, pairs or episodes per step")
    ap.add_argument("--seq-words", type=int, default=12, help="words (= tokens) per response in the made-up data")
    ap.add_argument("--run-timeout", type=int, default=150, help="seconds one launch may take")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        verb, out, tokens_per_item, *sets = args.child
        res = child(verb, out, int(tokens_per_item), sets)
        Path(f"{out}.result-{res['rank']}.json").write_text(json.dumps(res))  # torchrun interleaves stdout
        return
    import torch

    cuda = args.cuda = torch.cuda.is_available()
    processes = torch.cuda.device_count() if cuda else 2
    print(f"[gpu-check] {'CUDA: ' + torch.cuda.get_device_name(0) if cuda else 'no CUDA: CPU dry run'}, "
          f"{processes} process(es) per launch, torch {torch.__version__}", flush=True)
    rows, start = [], time.time()
    work = Path(tempfile.mkdtemp(prefix="rlhfkit-gpu-check-"))
    try:
        world = make_world(work, args.seq_words)
        for route in args.routes.split(","):
            for recipe in args.recipes.split(","):
                if route == "vllm" and recipe not in ("ppo", "grpo"):
                    continue  # vLLM samples online rollouts only
                row = {"route": route, "recipe": recipe}
                why = skip_reason(route, recipe, cuda)
                if why is None and time.time() - start > BUDGET_S:
                    why = f"the check's {BUDGET_S} s budget is spent"
                row.update({"status": "skipped", "why": why} if why else launch(route, recipe, world, args, processes, work))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.steps} steps of {args.batch} per run; {time.time() - start:.0f} s in all\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

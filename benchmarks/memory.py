"""Peak memory (RSS) and throughput of SFT and DPO, full fine-tuning vs LoRA, one subprocess per run.

    python benchmarks/memory.py                      # lab model (~1M params)
    python benchmarks/memory.py --model gpt2-100m    # a ~100M-parameter GPT-2 from a config, random weights
    python benchmarks/memory.py --recipes sft --steps 4 --json out.json

Peak memory is `resource.getrusage(RUSAGE_SELF).ru_maxrss` read inside each child process at its
end (tracemalloc does not see torch's allocator). Each child also reports its RSS right after
imports and model loading ("base"), so `peak - base` is roughly what training added: gradients,
optimizer state, activations, reference log-probs. Runs are short (a few steps) and on CPU; the
numbers are for comparing configurations on one machine, not absolute figures for a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {"lab": None, "gpt2-100m": dict(n_layer=12, n_embd=768, n_head=12, n_positions=128)}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


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


def child(recipe: str, lora: bool, model: str, data: str, steps: int, batch: int, out: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from rlhfkit.config import load_config
    from rlhfkit.models.loading import load_policy
    from rlhfkit.recipes import dpo, sft

    mod = {"sft": sft, "dpo": dpo}[recipe]
    cls = sft.SFTConfig if recipe == "sft" else dpo.DPOConfig
    sets = [f"model.name_or_path={model}", f"data.train={data}", "data.eval=null", f"train.batch_size={batch}",
            f"train.micro_batch_size={batch}", f"train.max_steps={steps}", "log.save_every=0", "log.eval_every=0",
            "log.progress=false", f"model.lora.enabled={str(lora).lower()}"]
    if recipe == "dpo":
        sets += ["sampling.prompts=null", "sampling.text=null"]
    cfg = load_config(cls, None, sets)
    probe = load_policy(cfg.model)  # what loading alone costs, then freed
    trainable = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in probe.named_parameters() if "lora_" not in n)  # the model's own weights
    base = _rss_mb()
    del probe
    t0 = time.time()
    mod.run(cfg, out)
    seconds = time.time() - t0
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    tokens = sum(r.get("train/tokens", 0) for r in rows)
    return {"recipe": recipe, "lora": lora, "params": total, "trainable": trainable, "base_rss_mb": round(base, 1),
            "peak_rss_mb": round(_rss_mb(), 1), "seconds": round(seconds, 2), "steps_per_s": round(steps / seconds, 3),
            "examples_per_s": round(steps * batch / seconds, 2), **({"tokens_per_s": round(tokens / seconds, 1)} if tokens else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=list(MODELS), default="lab")
    ap.add_argument("--recipes", default="sft,dpo")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--examples", type=int, default=256, help="training demonstrations / pairs (DPO scores all once)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", nargs=5, metavar=("RECIPE", "LORA", "MODEL", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        recipe, lora, model, data, out = args.child
        print("RESULT " + json.dumps(child(recipe, lora == "1", model, data, args.steps, args.batch, out)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        name, sft_data, dpo_data = _prepare(work, args.model, args.examples)
        for recipe in args.recipes.split(","):
            for lora in (False, True):
                out = work / f"{recipe}-{int(lora)}"
                cmd = [sys.executable, __file__, "--steps", str(args.steps), "--batch", str(args.batch), "--child", recipe,
                       str(int(lora)), name, str(sft_data if recipe == "sft" else dpo_data), str(out)]
                env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_PROGRESS": "0"}
                res = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
                if res.returncode or not line:
                    sys.exit(f"{recipe} lora={lora} failed:\n{res.stderr[-3000:]}")
                r = {"model": args.model, **json.loads(line[0][7:])}
                results.append(r)
                print(json.dumps(r), flush=True)
    print("\n| model | recipe | LoRA | params | trainable | base RSS MB | peak RSS MB | peak - base | examples/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['recipe']} | {'yes' if r['lora'] else 'no'} | {r['params']:,} | {r['trainable']:,} | "
              f"{r['base_rss_mb']} | {r['peak_rss_mb']} | {r['peak_rss_mb'] - r['base_rss_mb']:.1f} | {r['examples_per_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

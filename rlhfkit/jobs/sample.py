"""`rlhfkit sample`: K samples per prompt from any causal LM, written as {prompt, responses, finished}
records (what `rlhfkit label`, `judge` and `score` read).

One seed for the whole sampling run, so under `accelerate launch` the main process samples and
writes and the others wait for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import ModelConfig, doc, section
from rlhfkit.data import read_records, write_jsonl
from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.evaluate import prompts_to_sample
from rlhfkit.models.loading import load_policy, load_tokenizer
from rlhfkit.rollout import SamplingParams, generate
from rlhfkit.train.processes import on_main_process


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = doc(64, "response length limit in tokens")
    temperature: float = doc(1.0, "sampling temperature")
    top_p: float = doc(1.0, "nucleus sampling threshold; 1.0 = off")
    seed: int = doc(0, "sampling seed")

    def params(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)


@dataclass(frozen=True)
class SampleConfig:
    model: ModelConfig = section(ModelConfig, "model to sample")
    prompts: str = doc("auto", "prompt records (file, dataset folder, lab:NAME); auto = lab:prompts_eval for the lab's models, else name them")
    k: int = doc(1, "samples per prompt")
    limit: int = doc(0, "use only the first N prompts; 0 = all")
    sampling: SamplingConfig = section(SamplingConfig, "sampling")


def run(cfg: SampleConfig, out: str | Path, resume: bool = False) -> Path:
    on_main_process(_sample, cfg, out)
    return Path(out)


def _sample(cfg: SampleConfig, out: str | Path) -> None:
    records = read_records(prompts_to_sample("sample", cfg.model.name_or_path, cfg.prompts), "prompt")[: cfg.limit or None]
    model, tokenizer = load_policy(cfg.model), load_tokenizer(cfg.model)
    ids = [encode_prompt(tokenizer, r) for r in records for _ in range(cfg.k)]
    samples = generate(model, tokenizer, ids, cfg.sampling.params(), generator_seed=cfg.sampling.seed)
    rows = []
    for i, r in enumerate(records):
        mine = samples[i * cfg.k : (i + 1) * cfg.k]
        rows.append({**r.to_json(), "responses": [s.text for s in mine], "finished": [s.finished for s in mine]})
    write_jsonl(out, rows)
    print(f"wrote {len(rows)} prompts x {cfg.k} samples to {out}")

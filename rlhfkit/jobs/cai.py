"""Constitutional AI, supervised stage (Bai et al. 2022, §3): critique -> revision -> SL-CAI data.

    for each chunk of prompts (seeds fixed by position, so a resumed run redoes nothing):
        response_0 ~ model(prompt)                              (or inside the conversation template)
        for round r = 1..N:
            principle_r ~ uniform(constitution.principles)
            context  = few-shot examples + conversation(prompt, response_{r-1})   (history: latest)
                     | the whole transcript so far + ...                          (history: full)
            critique_r ~ model(context + critique request(principle_r))           cut at critique.stop
            revision_r ~ model(... + critique_r + revision request(principle_r))  cut at revision.stop
            response_r = revision_r if it finished (stop or EOS) and is non-empty, else response_{r-1}
        append {prompt, response, rounds: [...], final} to steps.jsonl (fsynced)
    at the end: sl_cai.jsonl = {prompt, response: final} demonstrations for `rlhfkit sft`,
                summary.json = counts, among them rounds whose contexts were cut to fit the model

Each context is fitted to the model before sampling (`feedback/fit.py`): worked examples dropped
first, then the longest responses / critiques / revisions shortened from their end; requests,
principles and the prompt never. A round is skipped (and counted) only when those alone do not fit.

Under `accelerate launch` / torchrun each process revises whole chunks (same positional seeds) and
the main process writes both files in prompt order, byte-identical to a 1-process run.

The stage after it (RL-CAI) needs no code of its own: label comparisons with the AI judge
(`rlhfkit compare --set annotator.name=judge`, or `rlhfkit sample` + `rlhfkit judge`), train
`rlhfkit reward` on the soft labels, then `rlhfkit ppo`. Templates and principles come from a
constitution (`feedback/constitution.yaml`; "lab" for the lab's short format).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.config import ConfigError, ModelConfig, doc, section, to_yaml
from rlhfkit.data import append_jsonl, encode_prompt, read_jsonl, read_records, write_jsonl
from rlhfkit.feedback.constitution import Constitution, Step, load_constitution
from rlhfkit.feedback.fit import Prompt, fit_prompt
from rlhfkit.feedback.judge import max_positions
from rlhfkit.jobs.compare import todo_indices
from rlhfkit.models.loading import load_policy, load_tokenizer
from rlhfkit.rollout import SamplingParams, generate
from rlhfkit.train.processes import processes, sharded_chunks

STEPS_FILE, DEMOS_FILE, SUMMARY_FILE = "steps.jsonl", "sl_cai.jsonl", "summary.json"
SKIPPED = "context longer than the model's positions even with every text cut"


@dataclass(frozen=True)
class CAISamplingConfig:
    temperature: float = doc(1.0, "temperature of the initial responses")
    revise_temperature: float = doc(1.0, "temperature of critiques and revisions (0 = greedy)")
    top_p: float = doc(1.0, "nucleus sampling threshold; 1.0 = off")
    max_new_tokens: int = doc(64, "initial response length limit (critique/revision limits are in the constitution)")


@dataclass(frozen=True)
class CAIConfig:
    model: ModelConfig = section(ModelConfig, "the helpful model that writes responses, critiques and revisions")
    prompts: str = doc("lab:prompts_train", "prompt records: JSONL/JSON/Parquet file, dataset folder, or lab:NAME")
    limit: int = doc(0, "use only the first N prompts; 0 = all")
    constitution: str = doc("default", "principles and templates: default (feedback/constitution.yaml), lab, or a YAML path")
    rounds: int = doc(2, "critique -> revision rounds per prompt (a principle sampled at random each round)")
    few_shot: int = doc(-1, "worked examples from the constitution placed before each conversation; -1 = all")
    history: Literal["full", "latest"] = doc("full", "full: later rounds see the whole transcript (the paper); latest: only the latest revision (short-context models)")
    initial: Literal["prompt", "conversation"] = doc("prompt", "initial response: the model's own answer to the prompt record, or sampled inside the conversation template")
    initial_model: str | None = doc(None, "model whose answers (initial: prompt) are critiqued, e.g. the policy to improve ('lab' = lab base); null = the CAI model")
    sampling: CAISamplingConfig = section(CAISamplingConfig, "sampling")
    revise_no_flaw: bool = doc(False, "revise even when the critique is one of the constitution's no-flaw answers (critique.no_flaw, e.g. the lab's 'none .'); false = keep the response as it is for that round")
    only_revised: bool = doc(False, "keep only prompts with at least one accepted revision in sl_cai.jsonl")
    batch_size: int = doc(32, "prompts per generation batch")
    seed: int = doc(0, "seed for sampling and principle choice")


@dataclass(frozen=True)
class Sampled:
    text: str  # cut at the step's stop string
    finished: bool  # ended by the stop string or EOS, not by max_new_tokens
    cut: int  # worked examples dropped + texts shortened to fit the context (0: as built)


def _sample(model, tokenizer, contexts: list[Prompt], examples: list[str], step: Step, temperature: float,
            top_p: float, seed: int, positions: int | None) -> list[Sampled | None]:
    """Continue each `examples + context` up to `step.stop` (or EOS), first fitted into the model's
    positions less `step.max_new_tokens` (`fit.fit_prompt`); None where even the context's fixed
    text (templates, requests, the prompt) does not fit."""
    limit = None if positions is None else positions - step.max_new_tokens
    fitted = [fit_prompt(c, tokenizer, limit, examples) for c in contexts]
    todo = [encode_prompt(tokenizer, f.text) for f in fitted if f is not None]
    params = SamplingParams(max_new_tokens=step.max_new_tokens, temperature=temperature, top_p=top_p, stop=step.stop)
    samples = iter(generate(model, tokenizer, todo, params, batch_size=len(todo), generator_seed=seed) if todo else [])
    out: list[Sampled | None] = []
    for f in fitted:
        if f is None:
            out.append(None)
            continue
        s = next(samples)
        text = s.text[: -len(step.stop)] if step.stop and s.text.endswith(step.stop) else s.text
        out.append(Sampled(text, s.finished, f.cut))
    return out


def _clean(text: str, step: Step) -> str:
    return text.strip() if step.strip else text.rstrip()


def revise_chunk(model, tokenizer, c: Constitution, cfg: CAIConfig, records: list, first_index: int,
                 responder: tuple | None = None) -> list[dict]:
    """The critique -> revision loop for a batch of prompt records; one steps.jsonl row per record.
    `responder` = (model, tokenizer) that writes the initial responses instead of `model`.

    Contexts are kept as `fit.Prompt`s (template text around responses, critiques and revisions)
    and fitted to the model at each sampling step: worked examples dropped, then the longest texts
    shortened; each round records how many parts were cut (`truncated`), and a round is skipped
    only when its templates and prompt alone are longer than the model's positions."""
    positions = max_positions(model)
    seed = cfg.seed * 1_000_003 + first_index * 97
    prompts = [r.prompt for r in records]
    if cfg.initial == "prompt":
        params = SamplingParams(max_new_tokens=cfg.sampling.max_new_tokens, temperature=cfg.sampling.temperature,
                                top_p=cfg.sampling.top_p)
        r_model, r_tok = responder or (model, tokenizer)
        first = generate(r_model, r_tok, [encode_prompt(r_tok, r) for r in records], params,
                         batch_size=len(records), generator_seed=seed)
        current = [s.text for s in first]
    else:
        step = Step(c.revision.request, c.revision.stop, cfg.sampling.max_new_tokens, c.revision.strip)
        got = _sample(model, tokenizer, [c.show_prompt(p, "") for p in prompts], [], step, cfg.sampling.temperature,
                      cfg.sampling.top_p, seed, positions)
        current = [_clean(g.text, step) if g else "" for g in got]
    rows = [{"prompt": p, "response": r, "rounds": []} for p, r in zip(prompts, current, strict=True)]
    examples = c.examples(cfg.few_shot)
    transcript = [c.show_prompt(p, r) for p, r in zip(prompts, current, strict=True)]
    active = [True] * len(records)  # False once a context's fixed text no longer fits the model
    for rnd in range(cfg.rounds):
        principles = [c.sample_principle(random.Random(f"{cfg.seed}:{first_index + i}:{rnd}")) for i in range(len(records))]
        if cfg.history == "latest":
            transcript = [c.show_prompt(p, r) for p, r in zip(prompts, current, strict=True)]
        asks = [t + c.request_prompt(c.critique, pr.critique, p, r)
                for t, pr, p, r in zip(transcript, principles, prompts, current, strict=True)]
        idx = [i for i in range(len(records)) if active[i]]
        critiques = dict(zip(idx, _sample(model, tokenizer, [asks[i] for i in idx], examples, c.critique,
                                          cfg.sampling.revise_temperature, cfg.sampling.top_p, seed + 2 * rnd + 1,
                                          positions), strict=True))
        said = {i: _clean(critiques[i].text, c.critique) for i in idx if critiques[i] is not None}
        # A critique that finds nothing (one of critique.no_flaw) leaves the response as it is: on the
        # lab, revising such drafts anyway lowered their gold (docs/FINDINGS.md, CAI).
        clean = set() if cfg.revise_no_flaw else {i for i, text in said.items() if text in c.critique.no_flaw}
        revise = {i: asks[i] + " " + Prompt.text(text) + c.request_prompt(c.revision, principles[i].revision, prompts[i], current[i])
                  for i, text in said.items() if i not in clean}
        order = sorted(revise)
        revisions = dict(zip(order, _sample(model, tokenizer, [revise[i] for i in order], examples, c.revision,
                                            cfg.sampling.revise_temperature, cfg.sampling.top_p, seed + 2 * rnd + 2,
                                            positions), strict=True))
        for i in idx:
            if i in clean:
                rows[i]["rounds"].append({"principle": principles[i].name, "critique_request": principles[i].critique,
                                          "critique": said[i], "no_flaw": True, "accepted": False,
                                          "truncated": {"critique": critiques[i].cut}})
                transcript[i] = asks[i] + " " + Prompt.text(said[i])
                continue
            if revisions.get(i) is None:
                active[i] = False
                rows[i]["rounds"].append({"principle": principles[i].name, "skipped": SKIPPED})
                continue
            critique = said[i]
            revision = _clean(revisions[i].text, c.revision)
            finished = revisions[i].finished
            accepted = finished and bool(revision.strip())
            rows[i]["rounds"].append({"principle": principles[i].name, "critique_request": principles[i].critique,
                                      "critique": critique, "revision_request": principles[i].revision,
                                      "revision": revision, "finished": finished, "accepted": accepted,
                                      "truncated": {"critique": critiques[i].cut, "revision": revisions[i].cut}})
            transcript[i] = revise[i] + (" " if c.revision.strip else "") + Prompt.text(revision)
            if accepted:
                current[i] = revision
    for row, final in zip(rows, current, strict=True):
        row["final"] = final
        row["revised"] = any(r.get("accepted") for r in row["rounds"])
    return rows


def summarise(rows: list[dict]) -> dict:
    """Counts over steps.jsonl rows: rounds run, rounds whose contexts were cut to fit the model
    (and the contexts cut), rounds skipped because even their fixed text did not fit, rounds whose
    critique found no flaw (response kept)."""
    rounds = [r for row in rows for r in row["rounds"]]
    cut = [sum(v > 0 for v in r["truncated"].values()) for r in rounds if "truncated" in r]
    return {"prompts": len(rows), "rounds": len(rounds), "rounds_truncated": sum(n > 0 for n in cut),
            "contexts_truncated": sum(cut), "rounds_skipped": sum("skipped" in r for r in rounds),
            "revised": sum(row["revised"] for row in rows), "rounds_no_flaw": sum(bool(r.get("no_flaw")) for r in rounds)}


def write_demonstrations(folder: Path, rows: list[dict], only_revised: bool = False) -> tuple[Path, int]:
    """sl_cai.jsonl from steps.jsonl rows: {prompt, response: final revision}, atomically replaced."""
    demos = [{"prompt": r["prompt"], "response": r["final"]} for r in rows
             if r["final"].strip() and (r["revised"] or not only_revised)]
    return write_jsonl(folder / DEMOS_FILE, demos), len(demos)


def run(cfg: CAIConfig, out: str | Path, resume: bool = False) -> Path:
    if cfg.rounds < 1:
        raise ConfigError(f"config key 'rounds': expected at least 1, got {cfg.rounds}")
    folder = Path(out)
    steps = folder / STEPS_FILE
    if steps.exists() and steps.stat().st_size > 0 and not resume:
        raise ConfigError(f"{steps} already holds CAI steps; pass --resume to continue it, or choose another --out")
    state = processes()
    main = state.is_main_process
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(to_yaml(cfg))
    constitution = load_constitution(cfg.constitution)  # validated before any model is loaded
    records = read_records(cfg.prompts, "prompt")[: cfg.limit or None]
    todo = todo_indices(records, steps, resume, state)
    if todo:
        model, tokenizer = load_policy(cfg.model), load_tokenizer(cfg.model)
        responder = None
        if cfg.initial_model:
            rcfg = ModelConfig(name_or_path=cfg.initial_model, trust_remote_code=cfg.model.trust_remote_code)
            responder = (load_policy(rcfg), load_tokenizer(rcfg))

        def revise(chunk: list[int]) -> list[dict]:
            # The whole chunk is redone with its positional seed (any process); rows already written are dropped.
            return revise_chunk(model, tokenizer, constitution, cfg, [records[i] for i in chunk], chunk[0], responder)

        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="cai", dynamic_ncols=True, disable=not main)
        todo_set = set(todo)
        # Under several processes each takes one chunk of a wave; the main process writes them in order.
        for chunk, rows in sharded_chunks(len(records), cfg.batch_size, todo, state, revise):
            for i, row in zip(chunk, rows, strict=True):
                if i in todo_set and main:
                    append_jsonl(steps, row)
                    bar.update(1)
        bar.close()
    path = folder / DEMOS_FILE
    if main:
        rows = read_jsonl(steps)
        path, n = write_demonstrations(folder, rows, cfg.only_revised)
        summary = {**summarise(rows), "demonstrations": n}
        (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"[cai] {len(records)} prompts, {cfg.rounds} rounds; {n} SL-CAI demonstrations in {path}; steps in {steps}; "
              f"{summary['rounds_truncated']} of {summary['rounds']} rounds cut to fit the model's context "
              f"({summary['contexts_truncated']} contexts), {summary['rounds_skipped']} skipped as too long")
    state.wait_for_everyone()  # every process returns once both files are written
    return path

"""Run the shell lines a document shows (README's tour, the TUTORIAL's stages), as written but tiny.

A line runs as a user at the repository root would run it, except (the rules test_tour states):
- `source .venv/bin/activate` is skipped: the tests already run in that environment;
- `rlhfkit ARGS` is `rlhfkit.cli.main(ARGS)` in this process (one import of torch for every line),
  and `> FILE` writes what it printed to FILE;
- tiny sizes: each verb config on the line, and each verb config nested in it (iterate's compare,
  reward and ppo; a pipeline's stage configs), has every TINY field it holds capped at TINY's
  value (0 for a limit or max_steps means "all", above any cap); a short flag for the field is
  rewritten in place, otherwise `--set field=value` is appended. `--print-config` lines are left
  alone, so they print the real defaults;
- `rlhfkit label` and `accelerate launch` run as processes (see test_tour).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

# field -> cap. Two optimizer steps of 4 examples, 8 prompts or records, one round; rollouts of 8
# new tokens, samples of 32 (a lab response is ~30 tokens: shorter ones are all unfinished, and
# thumbs then has no thumbs up for kto).
TINY: dict[str, int] = {
    "train.max_steps": 2, "train.batch_size": 4, "train.micro_batch_size": 4,
    "limit": 8, "rounds": 1, "label_budget": 8, "ensemble.members": 2,
    "sampling.max_new_tokens": 32, "rollout.max_new_tokens": 8, "rollout.group_size": 2,
    "normalize.num_prompts": 8, "normalize.max_new_tokens": 8,
    "data.eval_examples": 8, "data.eval_pairs": 8, "eval.examples": 8,
    "sampling.num_prompts": 4, "sampling.text_examples": 8,
    "eval.num_prompts": 4, "eval.max_new_tokens": 8, "eval.best_of_n": 2,
}
ZERO_IS_ALL = ("limit", "max_steps")  # 0 = every record / steps derived from epochs


def bash_block(doc: Path, heading: str) -> str:
    """The first ```bash block after the line `heading` in `doc`."""
    text = doc.read_text()
    at = text.index("\n" + heading + "\n")
    start = text.index("```bash\n", at) + len("```bash\n")
    return text[start:text.index("```", start)]


@dataclass
class Line:
    """One command of a block: its words, and the file its stdout goes to (`> FILE`), if any."""

    text: str
    argv: list[str]
    stdout_to: str | None = None


def commands(block: str) -> list[Line]:
    """The block's commands in order: `\\` continuations joined, `#` comments dropped."""
    out = []
    for text in block.replace("\\\n", " ").split("\n"):
        lex = shlex.shlex(text, posix=True, punctuation_chars=">")
        lex.whitespace_split = True
        argv, stdout_to = list(lex), None
        if ">" in argv:
            at = argv.index(">")
            argv, stdout_to = argv[:at], argv[at + 1]
        if argv:
            out.append(Line(" ".join(text.split("#")[0].split()), argv, stdout_to))
    return out


# ----------------------------------------------------------------------------- tiny sizes


def verb_of(args: list[str]) -> int:
    """Index of the verb in `rlhfkit` arguments (after global options such as `--threads N`)."""
    i = 0
    while args[i].startswith("-"):
        i += 2
    return i


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cfg) or not hasattr(cfg, part):
            return None
        cfg = getattr(cfg, part)
    return cfg


def _capped(key: str, value: Any, cap: int) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return sorted({min(v, cap) for v in value})
    if value == 0 and key.rsplit(".", 1)[-1] in ZERO_IS_ALL:
        return cap
    return min(value, cap)


def caps(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """`{dotted field: tiny value}` for `cfg` and every verb config nested in it, changed ones only."""
    from rlhfkit.verbs import VERBS, config_class

    verb_configs = {config_class(v) for v in VERBS.values() if v.config}
    out = {}
    if type(cfg) in verb_configs:
        for key, cap in TINY.items():
            value = _get(cfg, key)
            new = _capped(key, value, cap)
            if new != value and not (isinstance(value, tuple) and list(value) == new):
                out[prefix + key] = new
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(caps(value, f"{prefix}{f.name}."))
    return out


def _tiny_stages(cfg) -> list[dict]:
    """A pipeline's stages, each stage's `config:` with the caps of its recipe's config added."""
    from rlhfkit.config import load_config
    from rlhfkit.pipeline.stages import RECIPES
    from rlhfkit.verbs import VERBS, config_class

    stages = []
    for stage in cfg.stages:
        tree = json.loads(json.dumps(stage.config))  # a deep copy of plain data
        if stage.kind in RECIPES:
            for key, value in caps(load_config(config_class(VERBS[stage.kind]), None, (), base=tree)).items():
                *parents, leaf = key.split(".")
                node = tree
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = value
        stages.append({**dataclasses.asdict(stage), "config": tree})
    return stages


def tiny(args: list[str]) -> list[str]:
    """`rlhfkit` arguments with the tiny sizes applied (module docstring)."""
    from rlhfkit.cli import build_parser, resolve_config
    from rlhfkit.verbs import VERBS

    at = verb_of(args)
    verb = VERBS[args[at]]
    if verb.kind == "tool" or "--print-config" in args:
        return list(args)
    cfg = resolve_config(verb, build_parser().parse_args(args))
    changes = caps(cfg)
    args = list(args)
    for flag in verb.flags:
        if flag.key in changes and flag.name in args:
            args[args.index(flag.name) + 1] = str(changes.pop(flag.key))
    extra = [x for key, value in changes.items() for x in ("--set", f"{key}={json.dumps(value)}")]
    if hasattr(cfg, "stages"):  # a pipeline: its stage configs are mappings, capped one by one
        # YAML, not JSON: a --set value is read as YAML 1.1, where JSON's 3e-05 is a string
        extra += ["--set", "stages=" + yaml.safe_dump(_tiny_stages(cfg), default_flow_style=True, width=1 << 30).strip()]
    return args + extra


# ----------------------------------------------------------------------------- running


@dataclass
class Ran:
    line: Line
    argv: list[str]  # what ran (after the tiny rewrite)
    stdout: str
    stderr: str
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)


def run_rlhfkit(line: Line) -> Ran:
    """`rlhfkit ...` in this process; asserts exit 0; `> FILE` gets the printed text."""
    from rlhfkit.cli import main

    argv = tiny(line.argv[1:])
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    seconds = time.perf_counter() - t0
    assert rc == 0, f"`{line.text}` exited {rc}: {err.getvalue()[-2000:]}"
    if line.stdout_to:
        Path(line.stdout_to).write_text(out.getvalue())
    return Ran(line, argv, out.getvalue(), err.getvalue(), seconds)


def last_json(stdout: str) -> dict:
    """The CLI's closing line: `{"verb": ..., "final" | "out": ...}`."""
    lines = [x for x in stdout.splitlines() if re.match(r'\{"verb"', x)]
    assert lines, f"no result line in: {stdout[-1000:]}"
    return json.loads(lines[-1])

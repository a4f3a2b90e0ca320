"""`rlhfkit <verb>`: parse arguments, resolve a config, call one verb (`verbs.VERBS`). No logic here.

    rlhfkit VERB [--config FILE] [--set key=value ...] [--out PATH] [--resume | --overwrite] [--print-config]

Config resolution: the config class's defaults < the verb's packaged base YAML (demo) < --config
(pipeline: the demo's YAML when none is named) < --set < the verb's shortcut flags. User errors (`errors.UserError`) print one line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from rlhfkit.verbs import KIND_TITLES, VERBS, Verb, config_class

SPEC_NOTE = ("Fields that take `module:function` or `path/to/file.py:function` (reward.source, annotator.name) "
             "run that Python code: name only code you trust.")


def build_parser() -> argparse.ArgumentParser:
    lines = []
    for kind, title in KIND_TITLES.items():
        lines.append(f"{title}:")
        lines += [f"  {v.name:<10} {v.summary}" for v in VERBS.values() if v.kind == kind]
    parser = argparse.ArgumentParser(
        prog="rlhfkit", description="Align causal language models with human preferences.",
        epilog="\n".join(lines) + "\n\n`rlhfkit VERB --help` lists a verb's options; `--print-config` every field.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("RLHFKIT_THREADS", 0)) or None, metavar="N",
                        help="torch CPU threads (default $RLHFKIT_THREADS, else torch's choice). Small models on a "
                             "busy CPU run far faster with 1: threads that wait for each other spin")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", help="one of the verbs below")
    for verb in VERBS.values():  # listed, grouped by kind, in the epilog
        p = sub.add_parser(verb.name, description=verb.summary)
        if verb.kind == "tool":
            _TOOL_ARGS[verb.name](p)
        else:
            _add_config_args(p, verb)
    return parser


def _add_config_args(p: argparse.ArgumentParser, verb: Verb) -> None:
    if verb.positional_config:
        p.add_argument("config_file", nargs="?", metavar="CONFIG", help="YAML config (same as --config)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=1e-5 (repeatable)")
    what = "run folder" if verb.run_folder or verb.kind == "pipeline" else "output (a file or folder)"
    p.add_argument("--out", default=verb.out or None,
                   help=f"{what}" + (f" (default {verb.out})" if verb.out else " (required)" if verb.out is None else ""))
    p.add_argument("--print-config", action="store_true", help="print the resolved config (every field, its help) and exit")
    for flag in verb.flags:
        if flag.type is bool:
            p.add_argument(flag.name, dest=_dest(flag.key), action="store_true", help=f"{flag.help} (= --set {flag.key}=true)")
        else:
            p.add_argument(flag.name, dest=_dest(flag.key), type=flag.type, metavar=flag.key.rsplit(".", 1)[-1].upper(),
                           help=f"{flag.help} (= --set {flag.key}=...)")
    if verb.resumes:
        p.add_argument("--fresh", action="store_true", help="start interrupted stages again instead of resuming them "
                                                            "(completed, unchanged stages are still skipped)")
        return
    if not verb.run_folder:
        p.add_argument("--resume", action="store_true", help="continue what --out already holds")
        return
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its newest checkpoint, with the same config (only "
                            "train.max_steps, train.epochs, train.micro_batch_size, model.gradient_checkpointing "
                            "and log.* may change); a finished run has nothing to do")
    start.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out: its config, metrics, checkpoints, best/, final/, alarms, "
                            "plots and reports are removed first (after the new run's inputs are checked)")


def _dest(key: str) -> str:
    return "flag:" + key


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["RLHFKIT_THREADS"] = str(args.threads)  # wins over a pipeline YAML's `threads:`
    from rlhfkit.errors import UserError

    try:
        return _dispatch(args)
    except UserError as e:
        print(f"rlhfkit {args.verb}: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    verb = VERBS[args.verb]
    return _TOOLS[verb.name](args) if verb.kind == "tool" else _run(verb, args)


def resolve_config(verb: Verb, args: argparse.Namespace):
    """The verb's config from its packaged YAML, --config, --set and the shortcut flags."""
    from importlib import resources

    from rlhfkit.config import load_config, load_yaml

    def packaged(name: str) -> Path:
        return Path(str(resources.files(verb.module.rsplit(".", 1)[0]) / name))

    path = args.config or getattr(args, "config_file", None)
    if path is None and verb.default_config:  # pipeline: the demo's stages unless the user names a YAML
        path = packaged(verb.default_config)
    base = load_yaml(packaged(verb.base_config)) if verb.base_config else None  # demo: always under the user's
    flags = []
    for flag in verb.flags:
        value = getattr(args, _dest(flag.key))
        if value is not None and value is not False:
            flags.append(f"{flag.key}={json.dumps(value) if not isinstance(value, str) else value}")
    return load_config(config_class(verb), path, [*args.overrides, *flags], base=base)


def _run(verb: Verb, args: argparse.Namespace) -> int:
    from rlhfkit.config import ConfigError, to_yaml

    cfg = resolve_config(verb, args)
    if args.print_config:
        text = to_yaml(cfg)
        if "module:function" in text:
            text = f"# {SPEC_NOTE}\n" + text
        print(text, end="")
        return 0
    if args.out is None and verb.out is None:
        raise ConfigError(f"{verb.name} needs --out (where to write)")
    module = importlib.import_module(verb.module)
    resume = not args.fresh if verb.resumes else args.resume
    if verb.run_folder:
        from rlhfkit.train.run_dir import check_start

        if check_start(args.out, cfg, args.resume, args.overwrite):
            print(f"{args.out} is already complete; nothing to do")
            print(json.dumps({"verb": verb.name, "final": str(Path(args.out) / "final")}))
            return 0
    # --overwrite runs fresh (resume=False): the recipe clears the old run once its inputs are checked.
    result = module.run(cfg, args.out, resume=resume)
    if not isinstance(result, (str, Path)):  # eval returns its metrics (printed): name the file it wrote, if any
        result = args.out or None
    print(json.dumps({"verb": verb.name, "final" if verb.run_folder else "out": result and str(result)}))
    return 0


# ----------------------------------------------------------------------------- tools


def _lab_args(p: argparse.ArgumentParser) -> None:
    lab_sub = p.add_subparsers(dest="lab_verb", required=True)
    b = lab_sub.add_parser("build", help="build (or rebuild) the lab")
    b.add_argument("--out", help="lab folder (default: the user cache, or $RLHFKIT_LAB_DIR)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", choices=["full", "tiny"], default="full")
    b.add_argument("--force", action="store_true", help="rebuild even if a built lab is there")


def _lab(args: argparse.Namespace) -> int:
    from rlhfkit.lab import build_lab, default_lab_dir, is_built

    out = Path(args.out) if args.out else default_lab_dir()
    if not args.force and is_built(out, args.size):  # current key, size at least args.size
        print(f"lab already built at {out} (use --force to rebuild)")
        return 0
    build_lab(out, seed=args.seed, size=args.size, progress=True)
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run folder (one recipe's --out) or pipeline folder")
    p.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html)")


def _report(args: argparse.Namespace) -> int:
    from rlhfkit.monitor.report import write_report
    from rlhfkit.monitor.run_data import discover

    path = write_report(args.run_dir, args.out)
    for st in discover(Path(args.run_dir)):
        for a in st.alarms:
            print(f"[alarm] {st.label} step {a['step']}: {a['name']}: {a['message']}")
    print(f"report: {path}")
    return 0


def _agreement_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="labels JSONL (rankings or thumbs, e.g. from rlhfkit label)")
    p.add_argument("--reference", help="also score each annotator against these labels (e.g. gold or a trusted labeller)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")


def _agreement(args: argparse.Namespace) -> int:
    from rlhfkit.jobs.label import agreement

    return agreement(args.file, args.reference, args.json)


_TOOL_ARGS = {"lab": _lab_args, "report": _report_args, "agreement": _agreement_args}
_TOOLS = {"lab": _lab, "report": _report, "agreement": _agreement}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

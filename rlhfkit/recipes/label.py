"""CLI glue for `rlhfkit label` (the human labelling server) and `rlhfkit agreement`."""

from __future__ import annotations

import argparse
import json


def label(args: argparse.Namespace) -> int:
    from rlhfkit.feedback.label_server import serve

    serve(args.samples, args.out, host=args.host, port=args.port, token=args.token, overlap=args.overlap,
          overlap_annotators=args.overlap_annotators, seed=args.seed, verbose=args.verbose, mode=args.mode)
    return 0


def agreement(args: argparse.Namespace) -> int:
    from rlhfkit.feedback.agreement import (
        agreement_report,
        compare_to_reference,
        format_report,
        read_labels,
    )

    records = read_labels(args.file)  # rankings or thumbs, told apart by the first record
    report = agreement_report(records)
    if args.reference:
        report["reference"] = {"file": args.reference, "by_annotator": compare_to_reference(records, read_labels(args.reference))}
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def add_parsers(sub) -> None:
    """The `label` and `agreement` subcommands (called from cli.build_parser)."""
    lb = sub.add_parser("label", help="human labelling page: people rank K responses per prompt (appends comparisons) "
                                      "or give each response a thumbs up/down (--mode thumbs: appends feedback records)")
    lb.add_argument("--samples", required=True, help="JSONL of {prompt, responses} (e.g. rlhfkit sample --k 4); "
                                                     "thumbs mode labels each response on its own")
    lb.add_argument("--out", required=True, help="comparisons (rank) or feedback (thumbs) JSONL: appended and fsynced "
                                                 "per judgement; a restart resumes")
    lb.add_argument("--mode", choices=("rank", "thumbs"), default="rank",
                    help="rank: order the K responses of a prompt; thumbs: 👍/👎 one response at a time (for KTO)")
    lb.add_argument("--host", default="127.0.0.1",
                    help="interface to bind (default localhost only; any other host requires an access token)")
    lb.add_argument("--port", type=int, default=8765)
    lb.add_argument("--token", help="access token the API requires, at least 16 visible ASCII characters "
                                    "(generated when binding beyond localhost; set it on a shared machine)")
    lb.add_argument("--overlap", type=float, default=0.0, help="share of items given to several annotators (for agreement)")
    lb.add_argument("--overlap-annotators", type=int, default=2, help="annotators per overlapping item")
    lb.add_argument("--seed", type=int, default=0, help="seeds which items overlap and the display shuffles")
    lb.add_argument("--verbose", action="store_true", help="log every HTTP request")

    ag = sub.add_parser("agreement", help="inter-annotator agreement of a labels file (items judged by several annotators): "
                        "rankings (pairwise agreement, kappa, Kendall tau) or thumbs (agreement, Cohen's / Fleiss' kappa)")
    ag.add_argument("file", help="comparisons or feedback (thumbs) JSONL, e.g. from rlhfkit label; the kind is detected")
    ag.add_argument("--reference", help="also score each annotator against these labels (e.g. gold or a trusted labeller)")
    ag.add_argument("--json", action="store_true", help="print the full report as JSON")

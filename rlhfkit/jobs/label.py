"""`rlhfkit label` (the local labelling page: people rank K responses, or give thumbs up/down) and
the report behind `rlhfkit agreement` (inter-annotator agreement of what they wrote)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.config import ConfigError, doc


@dataclass(frozen=True)
class LabelConfig:
    samples: str = doc("", "JSONL of {prompt, responses} to label (e.g. rlhfkit sample --k 4); thumbs mode labels each response on its own")
    mode: Literal["rank", "thumbs"] = doc("rank", "rank: order the K responses of a prompt (writes comparisons); thumbs: up or down on one response at a time (writes feedback records, for KTO)")
    host: str = doc("127.0.0.1", "interface to bind (localhost only by default; any other host requires an access token)")
    port: int = doc(8765, "port")
    token: str | None = doc(None, "access token the API requires, at least 16 visible ASCII characters (generated when binding beyond localhost; set it on a shared machine)")
    overlap: float = doc(0.0, "share of items given to several annotators (for agreement)")
    overlap_annotators: int = doc(2, "annotators per overlapping item")
    seed: int = doc(0, "seeds which items overlap and the display shuffles")
    verbose: bool = doc(False, "log every HTTP request")


def run(cfg: LabelConfig, out: str | Path, resume: bool = True) -> Path:
    """Serve the page until Ctrl-C; every judgement is appended to `out` (and fsynced) as it is
    made, so a restart always resumes (`resume` is implied)."""
    from rlhfkit.feedback.label_server import serve

    if not cfg.samples:
        raise ConfigError("label needs --samples (config key 'samples'): the {prompt, responses} records to label")
    serve(cfg.samples, out, host=cfg.host, port=cfg.port, token=cfg.token, overlap=cfg.overlap,
          overlap_annotators=cfg.overlap_annotators, seed=cfg.seed, verbose=cfg.verbose, mode=cfg.mode)
    return Path(out)


def agreement(file: str, reference: str | None = None, as_json: bool = False) -> int:
    """Print the agreement report of a labels file: rankings (pairwise agreement, kappa, Kendall tau)
    or thumbs (agreement, Cohen's / Fleiss' kappa), told apart by its first record."""
    from rlhfkit.feedback.agreement import (
        agreement_report,
        compare_to_reference,
        format_report,
        read_labels,
    )

    records = read_labels(file)
    report = agreement_report(records)
    if reference:
        report["reference"] = {"file": reference, "by_annotator": compare_to_reference(records, read_labels(reference))}
    print(json.dumps(report, indent=2) if as_json else format_report(report))
    return 0

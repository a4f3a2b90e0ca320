"""benchmarks/sidebyside.py's step breakdown and benchmarks/beforeafter.py's before/after runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import sidebyside  # noqa: E402


def test_breakdown_other_is_each_runs_remainder_never_negative():
    """Three runs, step 1 dropped (warm-up). By hand, steps 2..3 means per run:
    run a: generate 1, update 4, step 5 (other 0); b: generate 3, update 1, step 4 (other 0);
    c: generate 2, update 2, step 5 (other 1). Medians: generate 2, update 2, step 5, other
    median(0, 0, 1) = 0; the step's median less the parts' medians gave 5 - 2 - 2 = 1, and goes
    negative when run c is generate 3, update 4, step 7.5: 5 - 3 - 4 = -2, where the remainders
    within the runs are 0, 0, 0.5 (median 0). Small integers and halves: exact in float."""
    def run(gen, upd, step):
        return {"time_parts": {"generate": [9.0, *gen], "update": [9.0, *upd], "step": [9.0, *step]}}

    rs = [run([1, 1], [4, 4], [5, 5]), run([3, 3], [1, 1], [4, 4]), run([2, 2], [2, 2], [5, 5])]
    assert sidebyside.breakdown(rs) == {"generate": 2, "update": 2, "step": 5, "other": 0}
    rs[2] = run([3, 3], [4, 4], [7.5, 7.5])
    assert sidebyside.breakdown(rs) == {"generate": 3, "update": 4, "step": 5, "other": 0}


@pytest.mark.slow
def test_beforeafter_same_tree_trains_the_same_pairs(tmp_path):
    """The same tree on both sides: both children train (2 steps each) on the same inputs, so the
    per-step losses agree exactly (same code, same data, one thread: bit-identical) and a rate
    ratio is reported for the end-to-end, CPU and loop times."""
    out = tmp_path / "ba.json"
    root = str(BENCH.parent)
    subprocess.run([sys.executable, str(BENCH / "beforeafter.py"), "reward", "--baseline-src", root, "--src", root,
                    "--steps", "2", "--batch", "4", "--repeats", "1", "--json", str(out)], check=True,
                   capture_output=True, text=True)
    res = json.loads(out.read_text())
    assert res["max_abs_loss_diff"] == 0.0
    assert len(res["runs"]["now"][0]["losses"]) == 2
    assert {"ratio_now_over_before_seconds", "ratio_now_over_before_cpu_seconds",
            "ratio_now_over_before_loop_seconds"} <= set(res)

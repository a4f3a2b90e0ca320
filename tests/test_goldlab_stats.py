"""The findings' intervals (benchmarks/goldlab.py): 95% t-intervals over seeds, checked against
Student's t table and a hand-worked interval."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


# Printed t tables (97.5% quantile) at degrees of freedom the table in goldlab.py does not hold;
# the expansion (to the df^-3 term) errs by under 0.0005 there and the tables are rounded to
# 0.0005, so 0.001 bounds the difference.
@pytest.mark.parametrize("df, table", [(11, 2.201), (15, 2.131), (20, 2.086), (30, 2.042), (60, 2.000), (120, 1.980)])
def test_t_quantile_beyond_the_table_matches_printed_tables(df, table):
    import goldlab as g

    assert g.t975(df) == pytest.approx(table, abs=0.001)


def test_interval_of_three_seeds_by_hand():
    import goldlab as g

    # 1, 2, 3: mean 2, sample sd 1, half-width t(2) * 1 / sqrt(3) = 4.303 / 1.7320508 = 2.48434
    m, h = g.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(2.48434, abs=1e-5)
    assert g.mean_ci([0.5]) == (0.5, 0.0)  # one seed: no interval

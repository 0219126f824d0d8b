"""Result tables: paired differences and confidence intervals, from synthetic runs."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vldlib.collect import dropout_table, mean_ci


def test_mean_ci_matches_student_t():
    x = np.array([0.1, 0.3, 0.2, 0.4, 0.25])
    mean, half = mean_ci(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert mean == pytest.approx(x.mean()) and half == pytest.approx((hi - lo) / 2)


def test_dropout_table_pairs_by_seed():
    rng = np.random.default_rng(0)
    rows = []
    for env, domain in enumerate(["a", "b"]):
        for seed in range(5):
            seed_effect = rng.normal(0, 0.05)  # shared by both methods: pairing removes it
            for dropout, gain in ((0.0, 0.0), (0.9, 0.02)):
                rows.append(
                    dict(
                        method="model", test_env=env, test_domain=domain, seed=seed,
                        dropout=dropout, ood_acc=0.6 + seed_effect + gain, iid_acc=0.8,
                    )
                )  # fmt: skip
    table = dropout_table(pd.DataFrame(rows)).set_index("held-out domain")
    assert list(table.index) == ["a", "b", "average"]
    assert table.loc["average", "ood diff [95% CI]"] == "+0.020 [+0.020, +0.020]"
    assert table.loc["a", "seeds"] == 5

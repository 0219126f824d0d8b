"""Verdicts are computed from the interval, per comparison and per claim."""

import math
from pathlib import Path

import pandas as pd
import pytest

from vldlib.claims import Effect, Row, claims_rows, claims_summary, verdict
from vldlib.figures import Benchmark


def effect(mean: float, half: float, n: int = 5) -> Effect:
    return Effect(mean, half, n, "seeds")


@pytest.mark.parametrize(
    ("e", "side", "expected"),
    [
        (effect(0.02, 0.01), "above", "holds"),
        (effect(-0.02, 0.01), "above", "does not hold"),
        (effect(0.005, 0.01), "above", "inconclusive"),
        (effect(-0.02, 0.01), "below", "holds"),
        (effect(0.02, 0.01), "below", "does not hold"),
        (effect(0.02, math.nan, n=1), "above", "inconclusive"),
        (effect(math.nan, math.nan, n=0), "above", "not run"),
    ],
)
def test_verdict_reads_the_interval_against_the_threshold(e, side, expected):
    assert verdict(e, side, 0.0, started=True) == expected


def test_paired_effect_uses_the_common_units_only():
    a = pd.Series({0: 0.50, 1: 0.60, 2: 0.70})
    b = pd.Series({1: 0.65, 2: 0.72, 3: 0.99})
    e = Effect.paired(a, b, "seeds")
    assert e.n == 2
    assert e.mean == pytest.approx(0.035)


def test_summary_is_over_the_comparisons_with_a_result():
    holds, fails = effect(0.02, 0.01), effect(-0.02, 0.01)
    missing = effect(math.nan, math.nan, n=0)
    rows = [
        Row(1, "a", "", holds, True),
        Row(1, "b", "", missing, False),
        Row(2, "c", "", holds, True),
        Row(2, "d", "", fails, True),
        Row(3, "e", "", missing, False),
    ]
    summary = claims_summary(rows).set_index("#")
    assert summary.verdict.to_dict() == {1: "holds", 2: "does not hold", 3: "not run"}
    assert summary.loc[1, "comparisons with a result"] == "1 of 2"
    assert summary.loc[3, "comparisons with a result"] == "0 of 1"


def _bench(accs: dict[float, list[float]], domain: str) -> Benchmark:
    """A finished benchmark on one held-out domain: ``accs[λ][seed]`` is the o.o.d. accuracy."""
    rows = [
        dict(test_env=0, test_domain=domain, dropout=p, seed=s, method="model", ood_acc=a,
             iid_acc=a)
        for p, values in accs.items()
        for s, a in enumerate(values)
    ]  # fmt: skip
    runs = pd.DataFrame(rows)
    status = runs[["test_env", "test_domain", "dropout", "seed"]].assign(run="r", status="finished")
    return Benchmark(
        "smoke", Path("."), (domain,), (0, 1, 2), tuple(accs), status, runs, pd.DataFrame()
    )


def test_claim_3_reads_the_rate_sweep_of_its_own_grid():
    main = _bench({0.0: [0.5, 0.5, 0.5], 0.9: [0.4, 0.41, 0.42]}, "sketch")
    sweep = _bench(
        {0.0: [0.6, 0.6, 0.6], 0.5: [0.7, 0.71, 0.72], 0.9: [0.8, 0.8, 0.8], 0.95: [0.9] * 3},
        "silhouette",
    )
    (no_sweep,) = [r for r in claims_rows(main) if r.number == 3]
    assert no_sweep.verdict == "not run" and "needs two rates" in no_sweep.comparison
    (row,) = [r for r in claims_rows(main, rates=sweep) if r.number == 3]
    assert "λ=0.5, held-out silhouette" in row.comparison
    assert row.effect.n == 3 and row.effect.mean == pytest.approx(0.09)  # 0.8 − 0.71
    assert row.verdict == "holds"
    (row1,) = [r for r in claims_rows(main, rates=sweep) if r.number == 1]
    assert row1.effect.mean == pytest.approx(-0.09)  # claim 1 still reads the main grid

"""The paper's claims: our measured effect, the paper's plot reading, and a computed verdict.

An effect is a mean over paired units (seeds, or held-out domains for the 1× combinations) with a
95% Student-t interval. Its verdict compares the interval with the claim's threshold: ``holds``
when the whole interval lies on the claimed side, ``does not hold`` when it lies wholly on the
other side, ``inconclusive`` when it straddles the threshold. A single unit gives no interval:
``inconclusive``; no unit at all: ``not run``.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vldlib.collect import mean_ci
from vldlib.figures import (
    COMBINED_METHODS,
    METHOD_LABELS,
    PAPER_FIG2_1X,
    PAPER_FIG3,
    PAPER_SOURCE,
    Benchmark,
    by_seed,
    per_domain,
    seed_average,
)

# One accuracy point: the threshold of "adds little" and "competitive" (our choice; the paper
# gives none).
MARGIN = 0.01
# Residual sum: the tolerance of analysis.decomposition.check_sum on float64 parts.
SUM_TOLERANCE = 1e-5
# Training loss "levelled off": it fell by less than this fraction over the last quarter.
PLATEAU_DROP = 0.10


@dataclass(frozen=True)
class Effect:
    """A measured effect: ``mean`` ± ``half`` (95% CI half-width; 0 for a worst case)."""

    mean: float
    half: float
    n: int
    unit: str

    @classmethod
    def paired(cls, a: pd.Series, b: pd.Series, unit: str) -> "Effect":
        """Mean of b − a over the units (index) present in both."""
        common = a.index.intersection(b.index)
        diff = (b[common] - a[common]).to_numpy(dtype=float)
        mean, half = mean_ci(diff) if len(diff) else (math.nan, math.nan)
        return cls(mean, half, len(diff), unit)

    @classmethod
    def worst(cls, values: Sequence[float], unit: str) -> "Effect":
        """The largest of ``values``: a bound, not an estimate, so no interval."""
        return cls(float(np.max(values)) if len(values) else math.nan, 0.0, len(values), unit)

    def text(self, fmt: str = "{:+.3f}") -> str:
        if self.n == 0:
            return "—"
        if self.half == 0.0 or math.isnan(self.half):
            return fmt.format(self.mean)
        lo, hi = self.mean - self.half, self.mean + self.half
        return f"{fmt.format(self.mean)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def verdict(effect: Effect, side: str, threshold: float, started: bool) -> str:
    """``holds`` / ``does not hold`` / ``inconclusive`` for the claim effect ``side`` threshold
    (``above`` or ``below``); ``inconclusive`` (a single unit) or ``not run`` when there is
    no interval."""
    if effect.n == 0 or (effect.n < 2 and effect.half != 0.0):
        return "inconclusive" if started and effect.n else "not run"
    lo, hi = effect.mean - effect.half, effect.mean + effect.half
    if side == "above":
        claimed, opposite = lo > threshold, hi < threshold
    else:
        claimed, opposite = hi < threshold, lo > threshold
    return "holds" if claimed else "does not hold" if opposite else "inconclusive"


@dataclass(frozen=True)
class Claim:
    """A claim of the paper and the test of its effect: ``side`` of ``threshold``."""

    text: str
    figure: str
    side: str
    threshold: float


CLAIMS = {
    1: Claim("VLD beats plain fine-tuning o.o.d.", "Figs. 2, 3", "above", 0.0),
    2: Claim("VLD beats ensembles and weight averaging o.o.d.", "Fig. 2", "above", 0.0),
    3: Claim("The o.o.d. optimum is near λ=0.9", "Fig. 3", "above", 0.0),
    4: Claim("VLD hurts when training from scratch", "Fig. 5", "below", 0.0),
    5: Claim("Richer pre-training beats sophisticated fine-tuning", "Fig. 8", "above", -MARGIN),
    6: Claim("Ensembles and averaging add little on top of VLD", "Fig. 7", "below", MARGIN),
    7: Claim("Linear fine-tuning is competitive o.o.d.", "Figs. 9, 10", "above", -MARGIN),
    8: Claim("Φ is the exact sum of its residual blocks' parts", "§3.1", "below", SUM_TOLERANCE),
}


@dataclass(frozen=True)
class Row:
    """One comparison measuring claim ``number``; ``started`` if any of its runs exist."""

    number: int
    comparison: str
    paper: str
    effect: Effect
    started: bool

    @property
    def verdict(self) -> str:
        claim = CLAIMS[self.number]
        return verdict(self.effect, claim.side, claim.threshold, self.started)

    def record(self) -> dict[str, object]:
        claim = CLAIMS[self.number]
        is_bound = self.effect.half == 0.0 and self.effect.n > 1
        return {
            "#": self.number,
            "claim (paper)": claim.text,
            "figure": claim.figure,
            "we compare": self.comparison,
            f"paper ({PAPER_SOURCE})": self.paper,
            "ours: effect [95% CI]": self.effect.text("{:.1e}" if is_bound else "{:+.3f}"),
            "n": f"{self.effect.n} {self.effect.unit}" if self.effect.n else "—",
            "verdict": self.verdict,
        }


def _seeds(frame: pd.DataFrame | None, **where: Any) -> pd.Series:
    """``figures.seed_average`` of an analysis table; empty when it is not computed."""
    return pd.Series(dtype=float) if frame is None else seed_average(frame, **where)


def _best_weight_decay(frame: pd.DataFrame, **where: Any) -> float:
    """The weight decay with the best mean i.i.d. accuracy: chosen without the held-out domain."""
    sub = frame
    for key, value in where.items():
        sub = sub[sub[key] == value]
    return float(sub.groupby("weight_decay").iid_acc.mean().idxmax())


def _readings_range(values: Sequence[float]) -> str:
    return f"{min(values):+.3f} to {max(values):+.3f} over {len(values)} datasets"


def _fig3_gain(high: float, low: float) -> str:
    return _readings_range([f[high][1] - f[low][1] for f in PAPER_FIG3.values()])


def _vld_minus_1x(method: str) -> str:
    return _readings_range(
        [PAPER_FIG3[d][0.9][1] - PAPER_FIG2_1X[d][method][1] for d in PAPER_FIG2_1X]
    )


def _by_domain_effect(bench: Benchmark, a: tuple[float, str], b: tuple[float, str]) -> Effect:
    """b − a per held-out domain (mean over seeds, or the single 1× value); 1× groups count only
    when every domain has one."""
    sa, sb = per_domain(bench, *a), per_domain(bench, *b)
    complete = all(len(s) == len(bench.held_out) for s in (sa, sb))
    empty = pd.Series(dtype=float)
    return Effect.paired(sa if complete else empty, sb if complete else empty, "domains")


def claims_rows(
    bench: Benchmark,
    decomposition: pd.DataFrame | None = None,
    scratch: pd.DataFrame | None = None,
    pretraining: pd.DataFrame | None = None,
    linear: pd.DataFrame | None = None,
    full: pd.DataFrame | None = None,
    rates: Benchmark | None = None,
) -> list[Row]:
    """Every claim of the paper against our runs.

    Args:
        bench: the main benchmark (``figures.load_benchmark``), rich pre-training, λ = 0 and
            0.9 (and, when ``rates`` is None, the other rates of Fig. 3: ``all_rates=True``).
        rates: Fig. 3's sweep of the dropout rate (``load_benchmark`` with ``all_rates=True``)
            when it runs on a grid of its own (the cpu book's extension grid); None: claim 3
            reads the rates of ``bench``.
        decomposition: ``figures.decomposition_table`` output.
        scratch, pretraining, linear, full: the analyses' tables (``scratch``, ``pretraining``,
            ``linear_ft``, ``full_ft`` of ``python -m vldlib.analysis``).
        None means not computed: its claims are ``not run``.
    """
    started = bool((bench.status.status != "not run").any())
    erm, vld = by_seed(bench, 0.0), by_seed(bench, 0.9)
    rows = [
        Row(
            1,
            "VLD (λ=0.9) − λ=0, paired seeds",
            _fig3_gain(0.9, 0.0),
            Effect.paired(erm, vld, "seeds"),
            started,
        )
    ]

    for m in ("traj_avg", "traj_ens"):
        effect = Effect.paired(by_seed(bench, 0.0, m), vld, "seeds")
        comparison = f"VLD − {METHOD_LABELS[m]} of λ=0, paired seeds"
        rows.append(
            Row(2, comparison, "VLD cloud above it on 4 datasets (not read)", effect, started)
        )
    for m in ("soup_1x", "ens_1x"):
        effect = _by_domain_effect(bench, (0.0, m), (0.9, "model"))
        comparison = f"VLD − {METHOD_LABELS[m]} of λ=0, per domain"
        rows.append(Row(2, comparison, _vld_minus_1x(m), effect, started))

    # Fig. 3 needs a sweep: two rates away from 0.9 (0.95 counts as near it), else this would
    # only repeat claim 1.
    sweep = rates if rates is not None else bench
    others = [p for p in sweep.dropouts if p not in (0.9, 0.95)]
    swept = 0.9 in sweep.dropouts and len(others) >= 2
    at_09 = by_seed(sweep, 0.9)
    if swept:
        means = {p: by_seed(sweep, p).mean() if len(by_seed(sweep, p)) else -1.0 for p in others}
        best = max(others, key=means.__getitem__)
        effect, rival = Effect.paired(by_seed(sweep, best), at_09, "seeds"), f"λ={best:g}"
        if rates is not None:
            rival += f", held-out {', '.join(sweep.held_out)}"
    else:
        effect = Effect.paired(pd.Series(), at_09, "seeds")
        rival = "needs two rates besides 0.9 and 0.95"
    rows.append(
        Row(
            3,
            f"λ=0.9 − best other rate ({rival}), paired seeds",
            f"λ=0.9 − λ=0.5: {_fig3_gain(0.9, 0.5)}",
            effect,
            swept,
        )
    )

    # From scratch: every learning rate of the grid, averaged per seed.
    effect = Effect.paired(_seeds(scratch, dropout=0.0), _seeds(scratch, dropout=0.9), "seeds")
    rows.append(
        Row(
            4,
            "λ=0.9 − λ=0 from scratch, paired seeds",
            "optimum ≈ 0; λ > 0.5 hurts (not read)",
            effect,
            scratch is not None,
        )
    )

    # Each recipe is reported by its own method: naive by the model, advanced by its average.
    naive_rich = _seeds(pretraining, weights="rich", recipe="naive", reported=True)
    advanced_plain = _seeds(pretraining, weights="plain", recipe="advanced", reported=True)
    rows.append(
        Row(
            5,
            "naive on rich − advanced on plain pre-training, paired seeds",
            "naive #2 ≈ advanced #1 on 3 of 4 datasets (not read)",
            Effect.paired(advanced_plain, naive_rich, "seeds"),
            pretraining is not None,
        )
    )

    fig7 = "marginal on 2 datasets, none on 2 (not read)"
    for m in ("traj_avg", "traj_ens"):
        effect = Effect.paired(vld, by_seed(bench, 0.9, m), "seeds")
        rows.append(
            Row(6, f"{METHOD_LABELS[m]} of λ=0.9 − VLD, paired seeds", fig7, effect, started)
        )
    for m in COMBINED_METHODS:
        effect = _by_domain_effect(bench, (0.9, "model"), (0.9, m))
        label = f"{METHOD_LABELS[m]} of λ=0.9 − VLD, per domain"
        rows.append(Row(6, label, fig7, effect, started))

    if linear is not None and full is not None:
        at = {"dropout": 0.9, "selection": "iid"}
        wd = _best_weight_decay(linear, **at)
        effect = Effect.paired(_seeds(full, **at), _seeds(linear, weight_decay=wd, **at), "seeds")
        comparison = f"linear (wd {wd:g}) − full fine-tuning, λ=0.9, paired seeds"
    else:
        effect, comparison = Effect.paired(pd.Series(), pd.Series(), "seeds"), "linear − full"
    rows.append(
        Row(
            7,
            comparison,
            "competitive o.o.d. (not read)",
            effect,
            linear is not None and full is not None,
        )
    )

    errors = [] if decomposition is None else list(decomposition["max |error|"])
    rows.append(
        Row(
            8,
            "max |entry + Σ blocks − Φ| over backbones × domains",
            "an identity (Veit et al. 2016)",
            Effect.worst(errors, "backbone × domain"),
            decomposition is not None,
        )
    )
    return rows


def claims_table(rows: Sequence[Row]) -> pd.DataFrame:
    """One line per comparison; the verdict is computed from the effect, never typed."""
    return pd.DataFrame([r.record() for r in rows])


def claims_summary(rows: Sequence[Row]) -> pd.DataFrame:
    """One verdict per claim, over the comparisons that have a result: ``holds`` if all of them
    hold, ``does not hold`` if any does not, else ``inconclusive``; ``not run`` if none has a
    result. The comparisons column says how many of the claim's comparisons had one."""
    out = []
    for number in dict.fromkeys(r.number for r in rows):
        verdicts = [r.verdict for r in rows if r.number == number]
        measured = {v for v in verdicts if v != "not run"}
        if not measured:
            v = "not run"
        elif measured == {"holds"}:
            v = "holds"
        elif "does not hold" in measured:
            v = "does not hold"
        else:
            v = "inconclusive"
        out.append(
            {
                "#": number,
                "claim (paper)": CLAIMS[number].text,
                "verdict": v,
                "comparisons with a result": f"{sum(x != 'not run' for x in verdicts)} of "
                f"{len(verdicts)}",
            }
        )
    return pd.DataFrame(out)


def plateau_check(bench: Benchmark) -> pd.DataFrame:
    """Per λ: has the training loss levelled off? The relative fall of each run's loss from 3/4
    of the schedule to its end (mean over runs, 95% CI); ``levelled off`` when the whole interval
    is below ``PLATEAU_DROP``, ``still falling`` when it is wholly above."""
    curves = bench.curves()
    rows = []
    for p in bench.dropouts:
        sub = curves[curves.dropout == p]
        drops = []
        for _, run in sub.groupby(["seed", "test_domain"]):
            steps = np.sort(run.step.unique())
            if len(steps) < 4:  # no last quarter to compare with (the smoke profile)
                continue
            mark = steps[int(round(0.75 * len(steps))) - 1]
            loss = run.set_index("step").train_loss
            drops.append((loss[mark] - loss[steps[-1]]) / loss[mark])
        mean, half = mean_ci(drops) if drops else (math.nan, math.nan)
        effect = Effect(mean, half, len(drops), "runs")
        v = verdict(effect, "below", PLATEAU_DROP, bool(drops))
        rows.append(
            {
                "λ": p,
                "runs": len(drops),
                "loss fall over the last quarter [95% CI]": effect.text("{:.1%}"),
                "verdict": {
                    "holds": "levelled off",
                    "does not hold": "still falling",
                    "not run": "too few evaluations",
                }.get(v, v),
            }
        )
    return pd.DataFrame(rows)

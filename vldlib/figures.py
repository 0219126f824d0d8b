"""Figures and tables of the book: each notebook makes one call per figure or table.

Runs are read from their result files only (``vldlib.collect``). A notebook trains the missing runs
of its grid only when asked (``train_missing``), so the book also builds from committed results
alone, and then says which runs are missing. The paper's numbers shown beside ours are plot
readings of arXiv v1 (``PAPER_FIG2_1X``, ``PAPER_FIG3``); the paper has no numeric table.
"""

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from PIL import Image

from vldlib.collect import load_runs, loss_plateau, mean_ci, methods_table, read_combined
from vldlib.config import load_config, make_config
from vldlib.runs import CONFIG, RunDir

PAPER_SOURCE = "paper v1, plot reading ±0.002"
PAPER_DATASETS = ("VLCS", "OfficeHome", "PACS", "TerraInc")
# Plot readings of the paper's Fig. 3 (v1): mean i.i.d. and o.o.d. accuracy per dropout rate.
_FIG3_RATES = (0.0, 0.5, 0.9, 0.95)
_FIG3_READINGS = """
VLCS        .874 .787  .876 .796  .874 .800  .873 .799
OfficeHome  .849 .708  .859 .729  .859 .734  .851 .729
PACS        .975 .865  .977 .875  .978 .884  .979 .885
TerraInc    .913 .513  .901 .531  .879 .536  .866 .523
"""


def _parse_fig3(text: str) -> dict[str, dict[float, tuple[float, float]]]:
    """``dataset iid ood iid ood ...`` lines, one (i.i.d., o.o.d.) pair per rate."""
    table = {}
    for line in text.strip().splitlines():
        name, *values = line.split()
        pairs = zip(values[::2], values[1::2], strict=True)
        table[name] = {
            p: (float(i), float(o)) for p, (i, o) in zip(_FIG3_RATES, pairs, strict=True)
        }
    return table


PAPER_FIG3 = _parse_fig3(_FIG3_READINGS)
# Plot readings of the paper's Fig. 2 (v1): the single 1× markers (i.i.d., o.o.d.) of plain
# fine-tuning's 18 final models, weight-averaged (★) and ensembled (▲).
PAPER_FIG2_1X: dict[str, dict[str, tuple[float, float]]] = {
    "VLCS": {"soup_1x": (0.873, 0.789), "ens_1x": (0.881, 0.791)},
    "OfficeHome": {"soup_1x": (0.847, 0.713), "ens_1x": (0.860, 0.713)},
    "PACS": {"soup_1x": (0.971, 0.870), "ens_1x": (0.979, 0.871)},
    "TerraInc": {"soup_1x": (0.897, 0.520), "ens_1x": (0.933, 0.525)},
}

# Our methods and the paper's markers (Fig. 2 legend); "1296×" are the trajectory baselines.
METHOD_LABELS = {
    "model": "fine-tuned model (●/◆)",
    "traj_avg": "weight average along the run (★ 1296×)",
    "traj_ens": "ensemble along the run (▲ 1296×)",
    "soup_1x": "uniform soup of the seeds (★ 1×)",
    "greedy_1x": "greedy soup of the seeds",
    "ens_1x": "ensemble of the seeds (▲ 1×)",
}
PER_RUN_METHODS = ("model", "traj_avg", "traj_ens")
COMBINED_METHODS = ("soup_1x", "greedy_1x", "ens_1x")


@dataclass
class Benchmark:
    """The runs of a grid (held-out domain × λ × seed) of one profile, as far as they exist.

    ``status`` has one row per expected run (``finished``, ``in progress`` when its folder holds no
    ``done`` marker yet, ``not run``); ``runs`` holds ``collect.load_runs`` rows of the finished
    ones only; ``combined`` the 1× combinations of the (domain, λ) groups whose seeds all
    finished.
    """

    profile: str
    runs_dir: Path
    domains: tuple[str, ...]
    seeds: tuple[int, ...]
    dropouts: tuple[float, ...]
    status: pd.DataFrame
    runs: pd.DataFrame
    combined: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        counts = self.status.status.value_counts()
        n = len(self.status)
        text = f"{self.profile} profile, {self.runs_dir}: {counts.get('finished', 0)} of {n} runs "
        text += "finished"
        others = [f"{counts[s]} {s}" for s in ("in progress", "not run") if s in counts]
        return text + (f" ({', '.join(others)})" if others else "") + "."

    @property
    def held_out(self) -> list[str]:
        """The held-out domains of the grid (all of the dataset's unless ``test_envs`` chose)."""
        return list(dict.fromkeys(self.status.test_domain))

    def curves(self) -> pd.DataFrame:
        """Every evaluation record of the finished runs' models (train loss, accuracies)."""
        rows = []
        for r in self.status[self.status.status == "finished"].itertuples():
            for rec in RunDir(self.runs_dir / r.run).records():
                if not rec.get("final") and rec["method"] == "model":
                    keys = ("step", "train_loss", "iid_acc", "ood_acc")
                    rows.append(
                        {"dropout": r.dropout, "seed": r.seed, "test_domain": r.test_domain}
                        | {k: rec[k] for k in keys}
                    )
        return pd.DataFrame(rows, columns=["dropout", "seed", "test_domain", *keys])


def _overrides(**kwargs: Any) -> dict[str, Any]:
    """Config overrides from notebook parameters; ``None`` keeps the profile's value."""
    return {k: v for k, v in kwargs.items() if v is not None}


def rates_in(runs_dir: str | Path, profile: str, **overrides: Any) -> list[float]:
    """Dropout rates of the finished runs under ``runs_dir`` whose config is the profile's (with
    ``overrides``) up to held-out domain, dropout and seed: the rates a sweep has added."""
    rates = set()
    for path in Path(runs_dir).glob(f"*/{CONFIG}"):
        run = RunDir(path.parent)
        if not run.is_done():
            continue
        c = load_config(json.loads(path.read_text())["config"])
        same = make_config(
            profile, test_env=c.test_env, dropout=c.dropout, seed=c.seed, **overrides
        )
        if same.hash() == c.hash():
            rates.add(c.dropout)
    return sorted(rates)


def load_benchmark(
    profile: str,
    runs_dir: str | Path,
    seeds: Sequence[int],
    dropouts: Sequence[float] = (0.0, 0.9),
    test_envs: Sequence[int] | None = None,
    train_missing: bool = False,
    all_rates: bool = False,
    **overrides: Any,
) -> Benchmark:
    """The benchmark grid of ``profile``: its finished runs under ``runs_dir``, after training
    the missing ones if ``train_missing`` (a finished run, found by its config hash, is reused).

    Args:
        profile: ``smoke``, ``cpu`` or ``paper``.
        runs_dir: the folder of run folders.
        seeds, dropouts, test_envs: the grid; ``test_envs=None`` holds out every domain in turn.
        train_missing: train what is not finished (and the 1× combinations of complete groups);
            otherwise only read.
        all_rates: also include every other dropout rate that finished runs under ``runs_dir``
            have with this profile's config (Fig. 3).
        **overrides: config fields (``dataset``, ``data_dir``, ``weights``, ...); ``None``
            values are ignored.
    """
    from vldlib.data import get_dataset
    from vldlib.sweeps import combine_grid, grid, run_dir, run_local

    overrides = _overrides(**overrides)
    runs_dir = Path(runs_dir)
    base = make_config(profile, **overrides)
    data = get_dataset(base.dataset, base.data_dir)
    envs = list(range(len(data.domains)) if test_envs is None else test_envs)
    rates = {float(p) for p in dropouts}
    rates = sorted(rates | set(rates_in(runs_dir, profile, **overrides)) if all_rates else rates)
    configs = grid(profile, list(seeds), rates, envs, **overrides)
    if train_missing:
        run_local(configs, runs_dir, progress=False)

    rows = []
    for c in configs:
        folder = run_dir(runs_dir, c, data)
        state = "in progress" if folder.exists() else "not run"
        rows.append(
            {
                "test_env": c.test_env,
                "test_domain": data.domains[c.test_env],
                "dropout": c.dropout,
                "seed": c.seed,
                "run": folder.name,
                "status": "finished" if RunDir(folder).is_done() else state,
            }
        )
    status = pd.DataFrame(rows)
    finished = set(status[status.status == "finished"].run)
    runs = load_runs(runs_dir) if finished else pd.DataFrame()
    if len(runs):
        runs = runs[runs.run.isin(finished)].reset_index(drop=True)

    # 1× combinations: only groups whose seeds all finished; computed only when training is allowed
    # and the group's checkpoints are here (they are not committed).
    notes = []
    done = status.groupby(["test_env", "dropout"]).status.apply(lambda s: (s == "finished").all())
    complete = [c for c in configs if done[(c.test_env, c.dropout)]]
    absent = {
        (c.test_env, c.dropout)
        for c in complete
        if not RunDir(run_dir(runs_dir, c, data)).checkpoint_path.exists()
    }
    computable = [c for c in complete if (c.test_env, c.dropout) not in absent]
    if computable and train_missing:
        combine_grid(computable, runs_dir)
    # Only records of exactly this grid's runs: a group combined from another seed set (a
    # smaller grid over the same folder) neither counts nor hides this one.
    groups = {g: list(s.run) for g, s in status.groupby(["test_env", "dropout"]) if done[g]}
    combined = read_combined(runs_dir, runs=groups)
    shown = set(zip(combined.test_env, combined.dropout, strict=True)) if len(combined) else set()
    if absent - shown:
        notes.append(
            f"1× combinations of {len(absent - shown)} finished (domain, λ) groups are not "
            "computed: some of their runs have no checkpoint here (checkpoints are not "
            "committed; rerunning those runs with the same config recreates them)."
        )
    missing_groups = len(done) - int(done.sum())
    if missing_groups:
        notes.append(
            f"1× combinations wait for {missing_groups} of {len(done)} (domain, λ) groups whose "
            "runs are not all finished."
        )
    return Benchmark(
        profile,
        runs_dir,
        tuple(data.domains),
        tuple(seeds),
        tuple(rates),
        status,
        runs,
        combined,
        notes,
    )


def status_table(bench: Benchmark) -> pd.DataFrame:
    """Finished runs per held-out domain and λ, as ``finished/expected``."""
    counts = bench.status.assign(finished=bench.status.status == "finished")
    table = counts.pivot_table(
        index="test_domain", columns="dropout", values="finished", aggfunc=["sum", "count"]
    )
    out = pd.DataFrame(index=bench.held_out)
    for p in bench.dropouts:
        out[f"λ={p:g}"] = [
            f"{int(table[('sum', p)][d])}/{int(table[('count', p)][d])}" for d in out.index
        ]
    out.index.name = "held-out domain"
    return out


def seed_means(
    runs: pd.DataFrame,
    n_domains: int,
    dropout: float,
    method: str = "model",
    column: str = "ood_acc",
    domain: str | None = None,
) -> pd.Series:
    """One value per seed, the unit that pairs across methods (same seed, same data splits): the
    run's accuracy on held-out ``domain``, or with ``domain=None`` the average over the held-out
    domains, for the seeds that finished all ``n_domains`` of them."""
    if not len(runs):
        return pd.Series(dtype=float)
    sub = runs[(runs.dropout == dropout) & (runs.method == method)]
    if domain is not None:
        return sub[sub.test_domain == domain].set_index("seed")[column]
    counts = sub.groupby("seed").test_domain.nunique()
    seeds = counts[counts == n_domains].index
    return sub[sub.seed.isin(seeds)].groupby("seed")[column].mean()


def by_seed(bench: Benchmark, dropout: float, *args: Any, **kwargs: Any) -> pd.Series:
    """``seed_means`` (method, column, domain) of the benchmark's finished runs, averaging over
    the grid's held-out domains."""
    return seed_means(bench.runs, len(bench.held_out), dropout, *args, **kwargs)


def per_domain(
    bench: Benchmark, dropout: float, method: str = "model", column: str = "ood_acc"
) -> pd.Series:
    """Mean over seeds per held-out domain (a 1× combination has one value per domain)."""
    frame = bench.combined if method in COMBINED_METHODS else bench.runs
    if not len(frame):
        return pd.Series(dtype=float)
    sub = frame[(frame.dropout == dropout) & (frame.method == method)]
    names = dict(enumerate(bench.domains))
    key = sub.test_env.map(names)
    return sub.groupby(key)[column].mean()


def ci_text(x: Sequence[float], signed: bool = False) -> str:
    """``mean [lo, hi]`` with a 95% Student-t interval; one value has no interval."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return "pending"
    mean, half = mean_ci(x)
    f = "{:+.3f}" if signed else "{:.3f}"
    if np.isnan(half):
        return f.format(mean)
    return f"{f.format(mean)} [{f.format(mean - half)}, {f.format(mean + half)}]"


def paired_text(a: pd.Series, b: pd.Series) -> str:
    """``ci_text`` of b − a over the seeds (index) both have."""
    common = a.index.intersection(b.index)
    return ci_text(b[common] - a[common], signed=True)


def setup_notebook() -> None:
    """Show whole table cells (long method names) and a plain seaborn style."""
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.precision", 3)
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)


def _empty(ax: plt.Axes, bench: Benchmark) -> None:
    ax.text(
        0.5,
        0.5,
        "no finished runs yet\n" + bench.summary(),
        ha="center",
        va="center",
        wrap=True,
        transform=ax.transAxes,
        fontsize=9,
    )


# ----------------------------------------------------------------------------------------------
# Pre-training


def pretraining_cards() -> pd.DataFrame:
    """The shipped pre-trained backbones, from their cards in ``vldlib/weights``."""
    rows = []
    for path in sorted((Path(__file__).parent / "weights").glob("vldnet_*.json")):
        card = json.loads(path.read_text())
        recipe = ", ".join(f"{k} {v:.3g}" for k, v in card["recipe"].items() if v)
        rows.append(
            {
                "backbone": f"vldnet ({card['kind']})",
                "classes": card["n_classes"],
                "training images": card["n_train_images"],
                "images seen": card["samples_seen"],
                "augmentation / smoothing": recipe,
                "test accuracy": round(card["test_accuracy"], 3),
                "minutes (2 cores)": round(card["seconds"] / 60),
                "sha256": card["sha256"][:12],
            }
        )
    return pd.DataFrame(rows)


def preview(dataset: str = "AnimalStyles", per_class: int = 1) -> Image.Image:
    """A grid of the fine-tuning data: one row per domain, ``per_class`` images per class."""
    from vldlib.data import get_dataset
    from vldlib.data.embedded import preview_grid

    return preview_grid(get_dataset(dataset), per_class=per_class, tile=56)


# ----------------------------------------------------------------------------------------------
# Fig. 2: i.i.d. vs o.o.d. of every run, and ERM vs VLD


def plot_iid_ood(bench: Benchmark, baseline: float = 0.0, method: float = 0.9) -> plt.Figure:
    """Fig. 2: every run as a point (i.i.d. validation, held-out accuracy), one panel per held-out
    domain plus the per-seed average; plain fine-tuning (λ = baseline, ●), VLD (λ =
    method, ◆), the baseline's trajectory averages/ensembles (★/▲ 1296×) and 1× soup and
    ensemble (★/▲ 1×)."""
    names = [*bench.held_out, "average"]
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig, grid_axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    axes, spare = list(grid_axes.flat[: len(names)]), list(grid_axes.flat[len(names) :])
    for ax in spare:
        ax.axis("off")
    if not len(bench.runs):
        for ax in axes:
            ax.set(xlabel="i.i.d. accuracy", ylabel="o.o.d. accuracy")
        _empty(axes[0], bench)
        return fig
    styles = {
        ("model", baseline): ("o", "tab:blue", f"λ={baseline:g} ●"),
        ("model", method): ("D", "tab:red", f"λ={method:g} (VLD) ◆"),
        ("traj_avg", baseline): ("*", "tab:green", f"λ={baseline:g} weight avg ★ 1296×"),
        ("traj_ens", baseline): ("^", "tab:orange", f"λ={baseline:g} ensemble ▲ 1296×"),
        ("soup_1x", baseline): ("*", "black", f"λ={baseline:g} soup ★ 1×"),
        ("ens_1x", baseline): ("^", "black", f"λ={baseline:g} ensemble ▲ 1×"),
    }
    runs, combined = bench.runs, bench.combined
    for ax, name in zip(axes, names, strict=True):
        for (m, p), (marker, color, label) in styles.items():
            frame = combined if m in COMBINED_METHODS else runs
            if not len(frame):
                continue
            sub = frame[(frame.method == m) & (frame.dropout == p)]
            if name == "average":
                if m in COMBINED_METHODS:
                    complete = sub.test_env.nunique() == len(bench.held_out)
                    x = [sub.iid_acc.mean()] if complete else []
                    y = [sub.ood_acc.mean()] if complete else []
                else:
                    x, y = by_seed(bench, p, m, "iid_acc"), by_seed(bench, p, m)
            else:
                env = bench.domains.index(name)
                x, y = sub[sub.test_env == env].iid_acc, sub[sub.test_env == env].ood_acc
            big = m in COMBINED_METHODS
            ax.scatter(
                x,
                y,
                marker=marker,
                color=color,
                s=(160 if big else 40) * (2 if marker == "*" else 1),
                label=label,
                alpha=0.9,
                edgecolor="white" if not big else "none",
            )
        title = "average over domains (per seed)" if name == "average" else f"held out: {name}"
        ax.set(title=title, xlabel="i.i.d. accuracy (training-domain val.)")
    for row in grid_axes:
        row[0].set_ylabel("o.o.d. accuracy (held-out domain)")
    handles, labels = axes[0].get_legend_handles_labels()
    if spare:  # the empty panel of the grid holds the legend
        spare[0].legend(handles, labels, loc="center", frameon=False, fontsize=9)
    else:
        fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def vld_gain_table(bench: Benchmark, baseline: float = 0.0, method: float = 0.9) -> pd.DataFrame:
    """O.o.d. accuracy of λ = baseline and λ = method, per held-out domain (mean over seeds with
    both) and averaged over domains (per seed), with the paired difference and its 95% CI; then
    the paper's four datasets (Fig. 3 plot readings) below."""
    rows = []
    for name in [*bench.held_out, "average"]:
        domain = None if name == "average" else name
        a, b = (by_seed(bench, p, domain=domain) for p in (baseline, method))
        ia, ib = (by_seed(bench, p, column="iid_acc", domain=domain) for p in (baseline, method))
        seeds = a.index.intersection(b.index)
        rows.append(
            {
                "source": "ours",
                "held-out domain / dataset": name,
                "seeds": len(seeds),
                f"ood λ={baseline:g}": ci_text(a[seeds]),
                f"ood λ={method:g}": ci_text(b[seeds]),
                "ood difference [95% CI]": ci_text(b[seeds] - a[seeds], signed=True),
                f"iid λ={baseline:g}": ci_text(ia[seeds]),
                f"iid λ={method:g}": ci_text(ib[seeds]),
            }
        )
    for name, fig3 in PAPER_FIG3.items():
        if baseline in fig3 and method in fig3:
            (ia0, oa0), (ib0, ob0) = fig3[baseline], fig3[method]
            rows.append(
                {
                    "source": PAPER_SOURCE,
                    "held-out domain / dataset": f"{name} (4 domains, Fig. 3)",
                    "seeds": "3 × 6 configs",
                    f"ood λ={baseline:g}": f"{oa0:.3f}",
                    f"ood λ={method:g}": f"{ob0:.3f}",
                    "ood difference [95% CI]": f"{ob0 - oa0:+.3f}",
                    f"iid λ={baseline:g}": f"{ia0:.3f}",
                    f"iid λ={method:g}": f"{ib0:.3f}",
                }
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Fig. 3: dropout rates


def plot_dropout_rates(bench: Benchmark) -> plt.Figure:
    """Fig. 3: o.o.d. accuracy against λ. Left: ours, each held-out domain (mean over seeds) and
    the per-seed average with its 95% CI. Right: the paper's four datasets (plot readings)."""
    fig, (ours, paper) = plt.subplots(1, 2, figsize=(10, 3.8))
    if len(bench.runs):
        models = bench.runs[bench.runs.method == "model"]
        means = models.groupby(["test_domain", "dropout"]).ood_acc.mean().reset_index()
        sns.lineplot(
            means,
            x="dropout",
            y="ood_acc",
            hue="test_domain",
            marker="o",
            hue_order=bench.held_out,
            ax=ours,
            alpha=0.6,
        )
        avg = [(p, *mean_ci(by_seed(bench, p))) for p in bench.dropouts if len(by_seed(bench, p))]
        if avg:
            x, y, half = zip(*avg, strict=True)
            ours.errorbar(
                x,
                y,
                yerr=np.nan_to_num(half),
                color="black",
                marker="D",
                capsize=4,
                label="average (95% CI)",
            )
        ours.legend(fontsize=8, title="held-out domain", title_fontsize=8)
    else:
        _empty(ours, bench)
    ours.set(
        title=f"ours ({bench.profile} profile)",
        xlabel="dropout rate λ on Φ(x)",
        ylabel="o.o.d. accuracy (held-out domain)",
    )
    for name, fig3 in PAPER_FIG3.items():
        rates = sorted(fig3)
        paper.plot(rates, [fig3[p][1] for p in rates], marker="D", label=name)
    paper.set(
        title=f"paper Fig. 3 ({PAPER_SOURCE})",
        xlabel="dropout rate λ on Φ(x)",
        ylabel="o.o.d. accuracy (4-domain mean)",
    )
    paper.legend(fontsize=8)
    fig.tight_layout()
    return fig


def dropout_rates_table(bench: Benchmark) -> pd.DataFrame:
    """Per λ: our o.o.d. and i.i.d. accuracy (domain average per seed, 95% CI) beside the paper's
    four datasets' o.o.d. readings and their mean."""
    rates = sorted(set(bench.dropouts) | {p for fig3 in PAPER_FIG3.values() for p in fig3})
    rows = []
    for p in rates:
        ours = p in bench.dropouts
        row = {
            "λ": p,
            "ours: ood": ci_text(by_seed(bench, p)) if ours else "not run",
            "ours: iid": ci_text(by_seed(bench, p, column="iid_acc")) if ours else "not run",
            "ours: seeds": len(by_seed(bench, p)),
        }
        readings = [fig3[p][1] for fig3 in PAPER_FIG3.values() if p in fig3]
        for name, fig3 in PAPER_FIG3.items():
            row[f"paper {name}: ood"] = f"{fig3[p][1]:.3f}" if p in fig3 else "—"
        row["paper mean ood"] = f"{np.mean(readings):.3f}" if readings else "—"
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Fig. 7: ensembles and weight averaging on top of VLD


def methods_summary(bench: Benchmark) -> pd.DataFrame:
    """``collect.methods_table`` of the finished runs and complete 1× combinations, methods named
    with the paper's markers."""
    if not len(bench.runs):
        return pd.DataFrame({"status": [bench.summary()]})
    table = methods_table(bench.runs, bench.combined)
    return table.assign(method=table.method.map(METHOD_LABELS))


def plot_methods(bench: Benchmark) -> plt.Figure:
    """Fig. 7 analogue: domain-averaged o.o.d. accuracy of every method at each λ; per-run methods
    show the mean over seeds with a 95% CI, the 1× combinations their single value."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    rows = []
    for p in bench.dropouts:
        for m in (*PER_RUN_METHODS, *COMBINED_METHODS):
            if m in PER_RUN_METHODS:
                values = by_seed(bench, p, m)
                if len(values):
                    rows.append((METHOD_LABELS[m], f"λ={p:g}", *mean_ci(values)))
            else:
                values = per_domain(bench, p, m)
                if len(values) == len(bench.held_out):
                    rows.append((METHOD_LABELS[m], f"λ={p:g}", values.mean(), np.nan))
    if not rows:
        _empty(ax, bench)
        ax.set(xlabel="o.o.d. accuracy (average over held-out domains)", ylabel="method")
        return fig
    frame = pd.DataFrame(rows, columns=["method", "λ", "ood", "half"])
    offsets = dict(
        zip(frame["λ"].unique(), np.linspace(-0.15, 0.15, frame["λ"].nunique()), strict=True)
    )
    order = list(dict.fromkeys(frame.method))
    for lam, sub in frame.groupby("λ", sort=False):
        y = [order.index(m) + offsets[lam] for m in sub.method]
        ax.errorbar(sub.ood, y, xerr=np.nan_to_num(sub.half), fmt="o", capsize=3, label=lam)
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    ax.set(xlabel="o.o.d. accuracy (average over held-out domains)", ylabel="method")
    ax.legend(title="dropout on Φ", fontsize=8)
    fig.tight_layout()
    return fig


def paper_markers_table() -> pd.DataFrame:
    """The paper's Fig. 2 readings per dataset: plain fine-tuning ●, VLD ◆ and the 1× weight
    average ★ and ensemble ▲ of plain fine-tuning (o.o.d.; i.i.d. in brackets)."""
    rows = []
    for name in PAPER_DATASETS:
        (i0, o0), (i9, o9) = PAPER_FIG3[name][0.0], PAPER_FIG3[name][0.9]
        soup, ens = PAPER_FIG2_1X[name]["soup_1x"], PAPER_FIG2_1X[name]["ens_1x"]
        rows.append(
            {
                "dataset": name,
                "● λ=0": f"{o0:.3f} ({i0:.3f})",
                "◆ λ=0.9": f"{o9:.3f} ({i9:.3f})",
                "★ 1× soup, λ=0": f"{soup[1]:.3f} ({soup[0]:.3f})",
                "▲ 1× ensemble, λ=0": f"{ens[1]:.3f} ({ens[0]:.3f})",
                "source": PAPER_SOURCE,
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Training curves


def plot_training_curves(bench: Benchmark) -> plt.Figure:
    """Training loss and i.i.d. validation accuracy against the step, per λ (mean over runs with
    a 95% CI band): has the λ = 0.9 loss levelled off?"""
    curves = bench.curves()
    fig, (loss, iid) = plt.subplots(1, 2, figsize=(10, 3.6))
    if len(curves):
        curves = curves.assign(λ=curves.dropout.map("{:g}".format))
        sns.lineplot(curves, x="step", y="train_loss", hue="λ", errorbar=("ci", 95), ax=loss)
        sns.lineplot(curves, x="step", y="iid_acc", hue="λ", errorbar=("ci", 95), ax=iid)
    else:
        _empty(loss, bench)
    loss.set(xlabel="training step", ylabel="training loss (batch mean)", title="training loss")
    iid.set(
        xlabel="training step",
        ylabel="i.i.d. accuracy (training-domain val.)",
        title="i.i.d. validation accuracy",
    )
    fig.tight_layout()
    return fig


def loss_quarters(bench: Benchmark) -> pd.DataFrame:
    """``collect.loss_plateau`` of the finished runs: mean training loss per λ at each quarter of
    the schedule."""
    curves = bench.curves()
    return loss_plateau(curves) if len(curves) else pd.DataFrame({"status": [bench.summary()]})


# ----------------------------------------------------------------------------------------------
# Residual-sum decomposition of Φ


def decomposition_table(
    profile: str,
    n_images: int,
    weights: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
) -> pd.DataFrame:
    """Per pre-trained backbone and domain: the largest error of entry + Σ block contributions
    against Φ on ``n_images`` images, and each part's share of Φ (``norm_shares``).

    ``weights``: a weights file for the profile's backbone; None compares the two shipped
    pre-trained vldnets (``rich`` and ``plain``).
    """
    import torch

    from vldlib.analysis.decomposition import check_sum, norm_shares
    from vldlib.backbones import create_model, load_weights
    from vldlib.data import get_dataset
    from vldlib.data.transforms import eval_transform

    config = make_config(profile, **_overrides(dataset=dataset, data_dir=data_dir))
    data = get_dataset(config.dataset, config.data_dir)
    size = config.image_size or data.image_size
    transform = eval_transform(size, data.channels)
    rows = []
    for w in ("rich", "plain") if weights is None else (weights,):
        model = create_model(config.backbone, len(data.classes), 0.0, data.channels)
        load_weights(model, w).eval()
        for domain, env in zip(data.domains, data.envs, strict=True):
            x = torch.stack([transform(env[i][0]) for i in range(min(n_images, len(env)))])
            rows.append(
                {"weights": Path(w).name, "domain": domain, "images": len(x)}
                | {"max |error|": check_sum(model, x)}
                | norm_shares(model, x)
            )
    return pd.DataFrame(rows)


def plot_decomposition(table: pd.DataFrame) -> plt.Figure:
    """Each part's share ⟨part, Φ⟩/‖Φ‖² of the representation, per backbone (mean over
    domains, the bar's line spans the domains)."""
    parts = [c for c in table.columns if c == "entry" or c.startswith("block")]
    long = table.melt(
        id_vars=["weights", "domain"], value_vars=parts, var_name="part", value_name="share"
    )
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.barplot(long, x="part", y="share", hue="weights", errorbar=("pi", 100), ax=ax)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(
        xlabel="part of Φ(x): stage entry and residual blocks",
        ylabel="share of Φ  ⟨part, Φ⟩ / ‖Φ‖²",
    )
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Gradient starvation (illustrative, our construction)


def starvation_table(seeds: Sequence[int], rates: Sequence[float]) -> pd.DataFrame:
    """``starvation.dropout_sweep`` for each seed: one row per (seed, input-dropout rate)."""
    from vldlib.analysis.starvation import dropout_sweep

    return pd.concat(
        [dropout_sweep(tuple(rates), seed=s).assign(seed=s) for s in seeds], ignore_index=True
    )


def starvation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean [95% CI] over seeds of every score, per input-dropout rate."""
    scores = ["iid_acc", "ood_remove_acc", "ood_flip_acc", "strong_weight_share"]
    return table.groupby("rate")[scores].agg(ci_text).reset_index()


def plot_starvation(table: pd.DataFrame) -> plt.Figure:
    """Accuracy under each test-time shift, and the strong feature's weight share, against the
    input-dropout rate (mean over seeds, 95% CI)."""
    scores = {
        "iid_acc": "i.i.d.",
        "ood_remove_acc": "strong feature removed",
        "ood_flip_acc": "strong feature flipped",
    }
    long = table.melt(
        id_vars=["rate", "seed"], value_vars=list(scores), var_name="test", value_name="accuracy"
    ).replace({"test": scores})
    fig, (acc, share) = plt.subplots(1, 2, figsize=(10, 3.6))
    sns.lineplot(long, x="rate", y="accuracy", hue="test", marker="o", ax=acc)
    sns.lineplot(table, x="rate", y="strong_weight_share", marker="o", ax=share)
    acc.set(xlabel="input dropout rate", ylabel="test accuracy")
    share.set(
        xlabel="input dropout rate",
        ylabel="|w_strong| / Σ|w_j|",
        title="weight on the strong feature",
    )
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# The analyses' tables (Figs. 1, 5, 8, 9–10): committed CSV files or computed here


@dataclass
class AnalysisTable:
    """An analysis's tidy table, or None when it is not computed at this profile; ``source``
    says which, in one line."""

    name: str
    frame: pd.DataFrame | None
    source: str


def analysis_table(
    name: str,
    tables_dir: str | Path | None,
    compute: Callable[[], pd.DataFrame],
    train_missing: bool,
    command: str | None = None,
    cache: str | Path | None = None,
) -> AnalysisTable:
    """The table ``name``: read from ``tables_dir/name.csv`` when that file exists (results that
    ``python -m vldlib.analysis`` wrote), else from ``cache`` when a notebook computed it
    already, else ``compute()`` if ``train_missing`` (written to ``cache``), else absent.

    ``command``: the ``python -m vldlib.analysis`` name that writes the file (default ``name``);
    ``cache``: a CSV path named after the computation's inputs (``table_cache``), so that two
    notebooks of one book build (Figs. 9–10 and the claims page) compute a table once.
    """
    path = Path(tables_dir) / f"{name}.csv" if tables_dir is not None else None
    if path is not None and path.exists():
        frame = pd.read_csv(path)
        return AnalysisTable(name, frame, f"{name}: {len(frame)} rows read from {path}.")
    if cache is not None and Path(cache).exists():
        frame = pd.read_csv(cache)
        source = f"{name}: {len(frame)} rows computed earlier in this build ({cache})."
        return AnalysisTable(name, frame, source)
    if train_missing:
        frame = compute()
        if cache is not None:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(f"{cache}.tmp")
            frame.to_csv(tmp, index=False)
            tmp.replace(cache)  # atomic: a crash leaves no half-written cache
        return AnalysisTable(name, frame, f"{name}: {len(frame)} rows computed by this notebook.")
    return AnalysisTable(
        name,
        None,
        f"{name}: not computed yet at this profile ({path} does not exist). "
        f"`python -m vldlib.analysis {command or name}` writes it; or run this notebook with "
        "train_missing=True.",
    )


def table_cache(analysis_dir: str | Path, name: str, **inputs: Any) -> Path:
    """Where a notebook keeps the table ``name`` computed from ``inputs`` (profile, grid,
    overrides): ``analysis_dir/tables/<name>-<hash of the inputs>.csv``."""
    key = json.dumps(inputs, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(analysis_dir) / "tables" / f"{name}-{digest}.csv"


def full_table(runs_dir: str | Path) -> AnalysisTable:
    """Full fine-tuning's rows of ``linear_sweep``'s shape, always read afresh from the finished
    runs under ``runs_dir`` (cheap: records only), so new seeds are never hidden by a snapshot."""
    from vldlib.analysis.linear import full_finetuning_results

    frame = full_finetuning_results(runs_dir)
    if not len(frame):
        return AnalysisTable("full_ft", None, f"full_ft: no finished run in {runs_dir}.")
    source = f"full_ft: {len(frame)} rows from the runs in {runs_dir}."
    return AnalysisTable("full_ft", frame, source)


def seed_average(frame: pd.DataFrame, column: str = "ood_acc", **where: Any) -> pd.Series:
    """Per seed, the mean of ``column`` over the rows equal to ``where`` (held-out domains, and
    any axis not given), for the seeds that have every held-out domain of ``frame``."""
    sub = frame
    for key, value in where.items():
        sub = sub[sub[key] == value]
    counts = sub.groupby("seed").test_domain.nunique()
    seeds = counts[counts == frame.test_domain.nunique()].index
    return sub[sub.seed.isin(seeds)].groupby("seed")[column].mean()


def _placeholder(what: str, message: str, xlabel: str, ylabel: str) -> plt.Figure:
    """An empty figure with its axes labelled and the reason it is empty."""
    fig, ax = plt.subplots(figsize=(8, 2.6))
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set(title=f"{what}: no results at this profile yet", xlabel=xlabel, ylabel=ylabel)
    return fig


def rate_table(table: AnalysisTable, by: str = "dropout", **where: Any) -> pd.DataFrame:
    """Per value of ``by``: o.o.d. and i.i.d. accuracy averaged over the held-out domains per
    seed (mean [95% CI] over seeds) and the number of runs."""
    if table.frame is None:
        return pd.DataFrame({"status": [table.source]})
    frame, rows = table.frame, []
    for value in sorted(frame[by].unique()):
        keys = where | {by: value}
        sub = frame
        for k, v in keys.items():
            sub = sub[sub[k] == v]
        rows.append(
            {
                by: value,
                "runs": len(sub),
                "seeds": len(seed_average(frame, **keys)),
                "ood [95% CI]": ci_text(seed_average(frame, **keys)),
                "iid [95% CI]": ci_text(seed_average(frame, "iid_acc", **keys)),
            }
        )
    return pd.DataFrame(rows)


def plot_interpolation(table: AnalysisTable) -> plt.Figure:
    """Fig. 1: o.o.d. accuracy along weight and representation interpolation, one panel per
    fine-tuning length (mild, long); line style: the pre-trained end's last layer; with several
    seeds, the mean and its 95% interval."""
    xlabel, ylabel = "α (0: fine-tuned, 1: pre-trained)", "o.o.d. accuracy (held-out domain)"
    if table.frame is None:
        return _placeholder("Fig. 1", table.source, xlabel, ylabel)
    frame = table.frame
    names = list(dict.fromkeys(frame.finetuning))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        sub = frame[frame.finetuning == name]
        sns.lineplot(sub, x="alpha", y="ood_acc", hue="kind", style="pre_head", marker="o", ax=ax)
        where = ", ".join(sorted(set(sub.test_domain))) if "test_domain" in sub else "?"
        title = f"{name} ({int(sub.steps.iloc[0])} steps), held-out {where}"
        ax.set(title=f"{title}, {sub.run.nunique()} run(s)", xlabel=xlabel, ylabel=ylabel)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def interpolation_gap(table: AnalysisTable) -> pd.DataFrame:
    """Per pre-trained head and fine-tuning length: the mean (over α) and largest |gap| between
    the weight and representation paths, o.o.d. and i.i.d. (mean [95% CI] over runs), the paired
    change of the mean gap from mild to long, and what the paper shows."""
    from vldlib.analysis.tables import interpolation_gaps

    if table.frame is None:
        return pd.DataFrame({"status": [table.source]})
    gaps = interpolation_gaps(table.frame)
    paper = {"mild": "curves agree", "long": "curves diverge"}
    rows = []
    for (head, name), sub in gaps.groupby(["pre_head", "finetuning"], sort=False):
        # paired by long run: each mild run is a copy of one long run's config
        mild = gaps[(gaps.pre_head == head) & (gaps.finetuning == "mild")].set_index("long_run")
        row = {"pre-trained head": head, "fine-tuning": name, "runs": len(sub)}
        for acc, label in (("ood", "o.o.d."), ("iid", "i.i.d.")):
            mean = sub[f"{acc}_acc_gap_mean"]
            change = paired_text(mild[f"{acc}_acc_gap_mean"], mean.set_axis(sub.long_run))
            row |= {
                f"{label} mean |gap| [95% CI]": ci_text(mean),
                f"{label} max |gap| [95% CI]": ci_text(sub[f"{acc}_acc_gap_max"]),
                f"{label} mean |gap| change from mild": "reference" if name == "mild" else change,
            }
        rows.append(row | {f"paper ({PAPER_SOURCE})": paper.get(name, "—") + " (not read)"})
    return pd.DataFrame(rows)


def plot_rates(table: AnalysisTable, what: str, **where: Any) -> plt.Figure:
    """O.o.d. and i.i.d. accuracy against λ (per-seed domain averages, mean and 95% CI)."""
    xlabel = "dropout rate λ on Φ(x)"
    if table.frame is None:
        return _placeholder(what, table.source, xlabel, "accuracy")
    rows = []
    for p in sorted(table.frame.dropout.unique()):
        for column, label in (("ood_acc", "o.o.d."), ("iid_acc", "i.i.d. (validation)")):
            values = seed_average(table.frame, column, dropout=p, **where)
            rows += [{"λ": p, "accuracy": v, "split": label} for v in values]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.lineplot(pd.DataFrame(rows), x="λ", y="accuracy", hue="split", marker="o", ax=ax)
    ax.set(title=what, xlabel=xlabel, ylabel="accuracy (mean over held-out domains)")
    fig.tight_layout()
    return fig


def pretraining_summary(table: AnalysisTable) -> pd.DataFrame:
    """Fig. 8 as a table (``analysis.pretraining.pretraining_table``) with the paper's finding."""
    from vldlib.analysis.pretraining import pretraining_table

    if table.frame is None:
        return pd.DataFrame({"status": [table.source]})
    out = pretraining_table(table.frame)
    out[f"paper ({PAPER_SOURCE})"] = "naive #2 ≈ advanced #1 on 3 of 4 datasets (not read)"
    return out


def plot_pretraining(table: AnalysisTable) -> plt.Figure:
    """Fig. 8: o.o.d. accuracy of naive and advanced fine-tuning of each pre-trained backbone
    (the reported method of each recipe; per-seed domain averages, mean and 95% CI)."""
    xlabel, ylabel = "pre-trained backbone", "o.o.d. accuracy (mean over held-out domains)"
    if table.frame is None:
        return _placeholder("Fig. 8", table.source, xlabel, ylabel)
    reported = table.frame[table.frame.reported.astype(bool)]
    per_seed = reported.groupby(["weights", "recipe", "seed"]).ood_acc.mean().reset_index()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.barplot(per_seed, x="weights", y="ood_acc", hue="recipe", errorbar=("ci", 95), ax=ax)
    low = per_seed.ood_acc.min()
    ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(max(0.0, low - 0.1), None))
    fig.tight_layout()
    return fig


def plot_linear(linear: AnalysisTable, full: AnalysisTable) -> plt.Figure:
    """Figs. 9 and 10: linear (Eq. 1) and full fine-tuning against λ, at the step selected by
    i.i.d. validation (Fig. 9) and at the last step (Fig. 10); rows: o.o.d., i.i.d."""
    frames = [t.frame for t in (linear, full) if t.frame is not None]
    if not frames:
        return _placeholder("Figs. 9–10", linear.source, "dropout rate λ", "accuracy")
    both = pd.concat(frames, ignore_index=True)
    both = both.assign(recipe=both.kind + ", wd " + both.weight_decay.map("{:g}".format))
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharex=True)
    titles = {"iid": "Fig. 9: step selected by i.i.d. val.", "last": "Fig. 10: last step"}
    for j, (selection, title) in enumerate(titles.items()):
        sub = both[both.selection == selection]
        for i, (column, label) in enumerate((("ood_acc", "o.o.d."), ("iid_acc", "i.i.d."))):
            ax = axes[i, j]
            sns.lineplot(sub, x="dropout", y=column, hue="recipe", marker="o", ax=ax)
            ax.set(title=title if i == 0 else None, xlabel="dropout rate λ")
            ax.set_ylabel(f"{label} accuracy")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def linear_summary(linear: AnalysisTable, full: AnalysisTable) -> pd.DataFrame:
    """Mean accuracies per (kind, weight decay, λ, selection) over the (domain, seed) pairs that
    full fine-tuning has (``analysis.tables.linear_summary``)."""
    from vldlib.analysis.tables import linear_summary as summary

    if linear.frame is None or full.frame is None:
        return pd.DataFrame({"status": [t.source for t in (linear, full)]})
    out = summary(linear.frame, full.frame)
    out[f"paper ({PAPER_SOURCE})"] = "linear competitive o.o.d. (not read)"
    return out


# ----------------------------------------------------------------------------------------------
# Figs. 4 and 6: the benchmark grid at other fine-tuning set sizes or last-layer learning rates


def load_variants(
    field_name: str, values: Sequence[Any], profile: str, runs_dir: str | Path, **kwargs: Any
) -> dict[Any, Benchmark]:
    """``load_benchmark`` once per value of the config field ``field_name``. The profile's own
    value reads the main grid's runs in ``runs_dir``; another value has its own folder,
    ``runs_dir/<field>=<value>`` (1× combinations are kept per folder)."""
    # deviation from paper: Fig. 4 used DomainNet; here the same benchmark grows its training set.
    default = getattr(make_config(profile), field_name)
    benches = {}
    for value in values:
        root = Path(runs_dir)
        if value != default:
            root = root / f"{field_name}={value:g}"
        benches[value] = load_benchmark(profile, root, **kwargs, **{field_name: value})
    return benches


def variants_table(benches: dict[Any, Benchmark], label: str) -> pd.DataFrame:
    """Per variant and λ: runs finished, o.o.d. and i.i.d. accuracy (domain average per seed,
    mean [95% CI]) and the paired o.o.d. change from the first variant."""
    first = next(iter(benches.values()))
    rows = []
    for value, bench in benches.items():
        finished = bench.status.status == "finished"
        for p in bench.dropouts:
            n = bench.status.dropout == p
            ood = by_seed(bench, p)
            change = "reference" if bench is first else paired_text(by_seed(first, p), ood)
            rows.append(
                {
                    label: value,
                    "λ": p,
                    "runs finished": f"{int((finished & n).sum())}/{int(n.sum())}",
                    "ood [95% CI]": ci_text(ood),
                    "iid [95% CI]": ci_text(by_seed(bench, p, column="iid_acc")),
                    "ood change from the first [95% CI]": change,
                }
            )
    return pd.DataFrame(rows)


def plot_variants(
    benches: dict[Any, Benchmark], what: str, xlabel: str, log: bool = False
) -> plt.Figure:
    """O.o.d. accuracy (domain average per seed, mean and 95% CI) against the variant, per λ."""
    rows = [
        {"variant": value, "λ": f"{p:g}", "ood_acc": v}
        for value, bench in benches.items()
        for p in bench.dropouts
        for v in by_seed(bench, p)
    ]
    ylabel = "o.o.d. accuracy (mean over held-out domains)"
    if not rows:
        text = "\n".join(f"{xlabel} {v}: {b.summary()}" for v, b in benches.items())
        return _placeholder(what, text, xlabel, ylabel)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.lineplot(pd.DataFrame(rows), x="variant", y="ood_acc", hue="λ", marker="o", ax=ax)
    if log:
        ax.set_xscale("log")
    ax.set(title=what, xlabel=xlabel, ylabel=ylabel)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Computing the analyses' tables in a notebook (smoke profile, or train_missing=True)


def compute_interpolation(
    profile: str,
    runs_dir: str | Path,
    out_dir: str | Path,
    test_env: int = 0,
    dropout: float = 0.9,
    seeds: Sequence[int] = (0,),
    **overrides: Any,
) -> pd.DataFrame:
    """Fig. 1's table (``analysis.tables.interpolation_tables``): the main grid's runs of
    (``test_env``, ``dropout``, each of ``seeds``), trained first if missing, are the long
    fine-tunings; the mild ones (a sixth of their steps) go under ``out_dir``."""
    from vldlib.analysis.tables import interpolation_tables
    from vldlib.sweeps import grid, run_dir, run_local

    configs = grid(profile, list(seeds), [dropout], [test_env], **_overrides(**overrides))
    run_local(configs, runs_dir, progress=False)
    # deviation from paper: "mild" is the same run stopped early (a sixth of its steps, no lr
    # decay); the paper's mild CLIP model had a 10× smaller lr and fewer epochs.
    mild_steps = max(1, configs[0].steps // 6)
    long_runs = [run_dir(runs_dir, c) for c in configs]
    return interpolation_tables(long_runs, out_dir, mild_steps)["interpolation"]


def compute_scratch(
    profile: str,
    out_dir: str | Path,
    seeds: Sequence[int],
    test_envs: Sequence[int],
    dropouts: Sequence[float],
    **overrides: Any,
) -> pd.DataFrame:
    """Fig. 5's table: from-scratch runs (``analysis.scratch``) under ``out_dir/runs/scratch``."""
    from vldlib.analysis.scratch import run_scratch, scratch_configs

    configs = scratch_configs(profile, seeds, test_envs, dropouts, **_overrides(**overrides))
    return run_scratch(configs, Path(out_dir) / "runs" / "scratch", progress=False)


def compute_pretraining(
    profile: str,
    out_dir: str | Path,
    seeds: Sequence[int],
    test_envs: Sequence[int],
    **overrides: Any,
) -> pd.DataFrame:
    """Fig. 8's table: naive and advanced recipes on both backbones (``analysis.pretraining``)
    under ``out_dir/runs/pretraining``."""
    from vldlib.analysis.pretraining import pretraining_configs, run_pretraining

    configs = pretraining_configs(profile, seeds, test_envs, **_overrides(**overrides))
    return run_pretraining(configs, Path(out_dir) / "runs" / "pretraining", progress=False)


def linear_table(
    profile: str,
    tables_dir: str | Path | None,
    analysis_dir: str | Path,
    train_missing: bool,
    seeds: Sequence[int],
    rates: Sequence[float],
    test_envs: Sequence[int],
    weight_decays: Sequence[float],
    **overrides: Any,
) -> AnalysisTable:
    """Figs. 9–10's ``linear_ft`` table (``analysis.linear.linear_sweep``), as ``analysis_table``
    gets it; a computed table is kept under ``analysis_dir`` (``table_cache``), so the Figs.
    9–10 page and the claims page of one book build compute it once."""
    from vldlib.analysis.linear import linear_sweep

    kept = _overrides(**overrides)
    inputs = {
        "profile": profile,
        "seeds": [int(s) for s in seeds],
        "rates": [float(r) for r in rates],
        "test_envs": [int(e) for e in test_envs],
        "weight_decays": [float(w) for w in weight_decays],
        **kept,
    }
    return analysis_table(
        "linear_ft",
        tables_dir,
        lambda: linear_sweep(
            profile, seeds, rates, test_envs, weight_decays, progress=False, **kept
        ),
        train_missing,
        command="linear",
        cache=table_cache(analysis_dir, "linear_ft", **inputs),
    )


def analysis_tables(
    profile: str,
    runs_dir: str | Path,
    tables_dir: str | Path | None,
    analysis_dir: str | Path,
    train_missing: bool,
    seeds: Sequence[int],
    test_envs: Sequence[int],
    dropouts: Sequence[float],
    weight_decays: Sequence[float],
    weights: str | None = None,
    extension_seeds: Sequence[int] | None = None,
    extension_test_envs: Sequence[int] | None = None,
    **overrides: Any,
) -> dict[str, AnalysisTable]:
    """The tables the claims rest on besides the main grid (``scratch``, ``pretraining``,
    ``linear_ft``, ``full_ft``), as the Figs. 5, 8 and 9–10 notebooks get them: committed
    files first, finished runs reused when computing; ``full_ft`` from ``runs_dir`` always.
    ``weights`` is the backbone of linear fine-tuning (from scratch has none; Fig. 8 compares
    its own two). From scratch and Fig. 8 run on ``extension_seeds`` × ``extension_test_envs``
    (default: ``seeds`` × ``test_envs``), as their notebooks do in the cpu book."""
    kept = _overrides(**overrides)
    ext_seeds = seeds if extension_seeds is None else extension_seeds
    ext_envs = test_envs if extension_test_envs is None else extension_test_envs
    computations = {
        "scratch": lambda: compute_scratch(
            profile, analysis_dir, ext_seeds, ext_envs, dropouts, **kept
        ),
        "pretraining": lambda: compute_pretraining(
            profile, analysis_dir, ext_seeds, ext_envs, **kept
        ),
    }
    tables = {
        name: analysis_table(name, tables_dir, compute, train_missing)
        for name, compute in computations.items()
    }
    tables["linear_ft"] = linear_table(
        profile,
        tables_dir,
        analysis_dir,
        train_missing,
        seeds,
        dropouts,
        test_envs,
        weight_decays,
        weights=weights,
        **kept,
    )
    return tables | {"full_ft": full_table(runs_dir)}

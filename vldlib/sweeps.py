"""Grids of runs as data, and a local launcher that skips what is already finished.

A run's folder is named after its held-out domain, dropout, seed and config hash, so relaunching a
grid after a crash redoes nothing finished and resumes what was cut short.
"""

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from vldlib.config import Config, make_config
from vldlib.data import MultiDomainData, get_dataset
from vldlib.runs import RunDir, append_record, read_records

log = logging.getLogger(__name__)


def grid(
    profile: str,
    seeds: Sequence[int],
    dropouts: Sequence[float],
    test_envs: Sequence[int],
    **overrides: Any,
) -> list[Config]:
    """Every (held-out domain, dropout, seed) config of a profile, in a stable order."""
    return [
        make_config(profile, test_env=t, dropout=p, seed=s, **overrides)
        for t in test_envs
        for p in dropouts
        for s in seeds
    ]


def run_dir(root: str | Path, config: Config, data: MultiDomainData) -> Path:
    domain = data.domains[config.test_env]
    return Path(root) / f"{domain}_p{config.dropout:g}_s{config.seed}_{config.hash()}"


def run_local(
    configs: Iterable[Config], root: str | Path, progress: bool = True
) -> list[dict[str, Any]]:
    """Run configs one after another in this process; finished runs are read, not redone."""
    from vldlib.train import train

    configs = list(configs)
    datasets: dict[tuple[str, str | None], MultiDomainData] = {}
    finals = []
    bar = tqdm(configs, disable=not progress, desc="runs")
    for config in bar:
        key = (config.dataset, config.data_dir)
        if key not in datasets:
            datasets[key] = get_dataset(*key)
        folder = run_dir(root, config, datasets[key])
        bar.set_postfix_str(folder.name)
        if RunDir(folder).is_done():
            finals.append(RunDir(folder).final_record())
            continue
        finals.append(train(config, folder, progress=False, data=datasets[key]))
    return finals


def combine_grid(configs: Sequence[Config], root: str | Path, compute: bool = True) -> pd.DataFrame:
    """The 1× combinations of each (held-out domain, dropout) group of seeds, computed once and
    kept in ``root/combined.jsonl``; ``compute=False`` only reads what is there."""
    from vldlib.combine import combine_runs

    path = Path(root) / "combined.jsonl"
    done = {(r["test_env"], r["dropout"], r["method"]) for r in read_records(path)}
    groups: dict[tuple[int, float], list[Config]] = {}
    for c in configs:
        groups.setdefault((c.test_env, c.dropout), []).append(c)
    data = get_dataset(configs[0].dataset, configs[0].data_dir)
    for (env, dropout), group in groups.items():
        if not compute or all(
            (env, dropout, m) in done for m in ("ens_1x", "soup_1x", "greedy_1x")
        ):
            continue
        dirs = [run_dir(root, c, data) for c in group]
        for record in combine_runs(dirs, group):
            append_record(path, {"test_env": env, "dropout": dropout, **record})
    return pd.DataFrame(read_records(path))

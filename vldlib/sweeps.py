"""Grids of runs and their launchers: in this process, in N local processes, or on SLURM.

A run's folder is named after its held-out domain, dropout, seed and config hash. Every launcher
skips the runs whose folder has ``done``, and a run cut short resumes from its last checkpoint,
so relaunching a grid after a crash or a pre-emption redoes nothing finished.
"""

import concurrent.futures
import dataclasses
import logging
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import submitit
from tqdm.auto import tqdm

from vldlib.collect import read_combined
from vldlib.config import Config, load_config, make_config
from vldlib.data import MultiDomainData, get_dataset
from vldlib.errors import DivergedError
from vldlib.grids import domains_of
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


def run_dir(root: str | Path, config: Config, data: MultiDomainData | None = None) -> Path:
    """``root/<held-out domain>_p<dropout>_s<seed>_<hash>``; the domain names come from
    ``data`` or, without it, from the dataset registry."""
    domain = (data.domains if data is not None else domains_of(config))[config.test_env]
    return Path(root) / f"{domain}_p{config.dropout:g}_s{config.seed}_{config.hash()}"


def run_status(folder: Path) -> str:
    """``done``, ``partial`` (a checkpoint to resume from) or ``new``."""
    run = RunDir(folder)
    if run.is_done():
        return "done"
    return "partial" if run.checkpoint_path.exists() else "new"


def unfinished(configs: Iterable[Config], root: str | Path) -> list[tuple[Config, Path]]:
    """The (config, folder) of every run not yet done, in order."""
    pairs = [(c, run_dir(root, c)) for c in configs]
    return [(c, f) for c, f in pairs if not RunDir(f).is_done()]


def run_local(
    configs: Iterable[Config],
    root: str | Path,
    progress: bool = True,
    skip_diverged: bool = False,
) -> list[dict[str, Any] | None]:
    """Run configs one after another in this process; finished runs are read, not redone. With
    ``skip_diverged``, a run whose loss turns non-finite is logged, left unfinished (a rerun
    tries it again) and gives ``None``; the sweep goes on."""
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
        try:
            finals.append(train(config, folder, progress=False, data=datasets[key]))
        except DivergedError as e:
            if not skip_diverged:
                raise
            log.warning("%s: %s", folder, e)
            finals.append(None)
    return finals


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class TrainJob(submitit.helpers.Checkpointable):
    """One run as a job: ``train`` from a config dict. On a SLURM timeout or pre-emption,
    submitit requeues the same call, which resumes from the run's last checkpoint."""

    def __call__(self, config: dict[str, Any], folder: str) -> dict[str, Any]:
        from vldlib.train import train

        return train(load_config(config), folder, progress=False)


def run_parallel(
    configs: Iterable[Config], root: str | Path, jobs: int, progress: bool = True
) -> list[dict[str, Any]]:
    """Run the unfinished configs in ``jobs`` worker processes; return every run's final record.

    Each worker gets ``cpu_count / jobs`` torch threads; with several GPUs, runs whose device is
    ``auto`` are spread over them (device is not part of the run's identity).
    """
    configs = list(configs)
    todo = unfinished(configs, root)
    gpus = _cuda_count()
    if gpus > 1:
        todo = [
            (dataclasses.replace(c, device=f"cuda:{i % gpus}") if c.device == "auto" else c, f)
            for i, (c, f) in enumerate(todo)
        ]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")  # no CUDA or thread-pool state is forked
    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_limit_threads, initargs=(threads,)
    ) as pool:
        futures = [pool.submit(TrainJob(), c.to_dict(), str(f)) for c, f in todo]
        wait = concurrent.futures.as_completed(futures)
        try:
            for future in tqdm(wait, total=len(futures), disable=not progress, desc="runs"):
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the first failure ends the sweep, as in-process
            raise
    return [RunDir(run_dir(root, c)).final_record() for c in configs]


def submit_slurm(
    configs: Iterable[Config],
    root: str | Path,
    gpus_per_job: int = 1,
    timeout_min: int = 720,
    partition: str | None = None,
    cpus_per_task: int = 10,
    mem_gb: int | None = None,
    array_parallelism: int = 256,
    cluster: str | None = None,
) -> list[submitit.Job]:
    """Submit the unfinished configs as one SLURM job array through submitit.

    Logs and pickles go to ``root/slurm``. ``cluster="local"`` runs the same jobs as local
    processes (for tests); None lets submitit find SLURM.
    """
    todo = unfinished(configs, root)
    if not todo:
        return []
    executor = submitit.AutoExecutor(folder=Path(root) / "slurm" / "%j", cluster=cluster)
    executor.update_parameters(
        name="vldlib",
        timeout_min=timeout_min,
        gpus_per_node=gpus_per_job,
        cpus_per_task=cpus_per_task,
        mem_gb=mem_gb,
        slurm_partition=partition,
        slurm_array_parallelism=array_parallelism,
    )
    return executor.map_array(TrainJob(), [c.to_dict() for c, _ in todo], [str(f) for _, f in todo])


def combine_grid(
    configs: Sequence[Config],
    root: str | Path,
    compute: bool = True,
    keys: Sequence[str] = ("test_env", "dropout"),
) -> pd.DataFrame:
    """The 1× combinations of the runs of each group (same ``keys`` values; other fields such
    as seeds and hyper-parameters vary within it), computed once and kept in
    ``root/combined.jsonl``; ``compute=False`` only reads what is there. A record names the run
    folders it combines, so a group that gains runs (more seeds) is computed again."""
    from vldlib.combine import combine_runs

    path = Path(root) / "combined.jsonl"
    methods = ("ens_1x", "soup_1x", "greedy_1x")
    records = read_records(path)
    done = {(*(r.get(k) for k in (*keys, "method")), tuple(r.get("runs", ()))) for r in records}
    groups: dict[tuple, list[Config]] = {}
    for c in configs:
        groups.setdefault(tuple(getattr(c, k) for k in keys), []).append(c)
    for values, group in groups.items():
        dirs = [run_dir(root, c) for c in group]
        names = tuple(sorted(d.name for d in dirs))
        if not compute or all((*values, m, names) in done for m in methods):
            continue
        for record in combine_runs(dirs, group):
            append_record(path, {**dict(zip(keys, values, strict=True)), **record, "runs": names})
    return read_combined(root, keys)

"""Command line: ``python -m vldlib {datasets,train,pretrain,benchmark,sweep,collect,bench} ...``.

Every config field is a flag (``--weight-decay 5e-5``, ``--lr-milestones 5000``,
``--weights none``); ``--profile`` picks the defaults they override. Bad input ends with one
line and exit status 2.
"""

import argparse
import logging
import os
import sys
from dataclasses import fields

from vldlib.config import PROFILES, Config, make_config, parse_value
from vldlib.errors import ConfigError, VldlibError


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="paper", help=f"defaults: {', '.join(PROFILES)}")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        p.add_argument(flag, dest=f.name, default=None, metavar="V", help=f"default {f.default!r}")


def _config_from_args(args: argparse.Namespace) -> Config:
    make_config(args.profile)  # an unknown profile is named before --test-env NAME needs it
    overrides = {}
    for f in fields(Config):
        text = getattr(args, f.name)
        if text is None:
            continue
        if f.name == "test_env" and not text.lstrip("-").isdigit():
            overrides[f.name] = _domain_index(args, text)
            continue
        overrides[f.name] = parse_value(f.name, text)
    return make_config(args.profile, **overrides)


def _domain_index(args: argparse.Namespace, name: str) -> int:
    from vldlib.data import domain_index, get_dataset

    dataset = args.dataset or PROFILES[args.profile].get("dataset", Config.dataset)
    return domain_index(get_dataset(dataset, args.data_dir), name)


def cmd_datasets(args: argparse.Namespace) -> int:
    from vldlib.data import get_dataset, list_datasets

    if args.verify:
        from vldlib.data.domainbed import verify_images

        bad = verify_images(get_dataset(args.verify, args.data_dir))
        for path in bad:
            print(path)
        print(f"{len(bad)} unreadable image(s)")
        return 1 if bad else 0
    for d in list_datasets():
        print(f"{d['name']}: {d['n_classes']} classes, domains {', '.join(d['domains'])}")
        print(f"    {d['source']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vldlib.train import train

    config = _config_from_args(args)
    final = train(config, args.output_dir, overwrite=args.overwrite, progress=not args.no_progress)
    print(
        f"selected step {final['selected_step']}: iid_acc {final['iid_acc']:.4f} "
        f"ood_acc {final['ood_acc']:.4f} ({final['test_domain']} held out) -> {args.output_dir}"
    )
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from vldlib.pretrain import pretrain

    card = pretrain(args.kind, args.output, samples=args.samples, seed=args.seed)
    print(f"{args.kind}: test accuracy {card['test_accuracy']:.4f} in {card['seconds']:.0f} s")
    return 0


def _numbers(flag: str, text: str, kind: type = int) -> list:
    """A comma-separated list given to ``--flag``; ConfigError if it does not parse."""
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--{flag} expects comma-separated {kind.__name__}s (e.g. 0,1), got {text!r}"
        ) from None


def cmd_benchmark(args: argparse.Namespace) -> int:
    from vldlib.collect import (
        baseline_overhead,
        dropout_table,
        load_curves,
        load_runs,
        loss_plateau,
        methods_table,
    )
    from vldlib.data import get_dataset
    from vldlib.sweeps import combine_grid, grid, run_local

    make_config(args.profile)  # an unknown profile is a ConfigError, not a KeyError
    seeds, dropouts = _numbers("seeds", args.seeds), _numbers("dropouts", args.dropouts, float)
    dataset = PROFILES[args.profile].get("dataset", Config.dataset)
    n_domains = len(get_dataset(dataset).domains)
    envs = range(n_domains) if args.test_envs == "all" else _numbers("test-envs", args.test_envs)
    configs = grid(args.profile, seeds, dropouts, list(envs))
    if not args.collect_only:
        run_local(configs, args.runs_dir)
    runs = load_runs(args.runs_dir)
    print(dropout_table(runs, dropouts[0], dropouts[-1]).to_markdown(index=False))
    print("\nmean training loss by step (has it levelled off?):")
    print(loss_plateau(load_curves(args.runs_dir)).round(3).to_markdown())
    combined = combine_grid(configs, args.runs_dir, compute=not args.collect_only)
    print("\no.o.d. accuracy of every method (trajectory baselines and 1x combinations):")
    print(methods_table(runs, combined).to_markdown(index=False))
    print(f"\nextra wall time of the trajectory baselines: {baseline_overhead(args.runs_dir):.1%}")
    return 0


def _pairs(flag: str, items: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` arguments of a repeatable flag, by config key."""
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--{flag} expects KEY=VALUE (e.g. steps=100), got {item!r}")
        pairs[key.replace("-", "_")] = value
    return pairs


def _sweep_configs(args: argparse.Namespace) -> list[Config]:
    """The grid's configs with --set overrides, filtered by --where, weights under --weights."""
    from vldlib.grids import get_grid, with_weights_dir

    grid = get_grid(args.grid)
    overrides = {k: parse_value(k, v) for k, v in _pairs("set", args.set).items()}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    configs = grid.configs(**overrides)
    for key, text in _pairs("where", args.where).items():
        wanted = {parse_value(key, v) for v in text.split(",")}
        configs = [c for c in configs if getattr(c, key) in wanted]
    return with_weights_dir(grid, configs, args.weights)


def cmd_sweep(args: argparse.Namespace) -> int:
    from vldlib.sweeps import run_dir, run_local, run_parallel, run_status, submit_slurm

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    configs = _sweep_configs(args)
    runs_dir = args.runs_dir or f"runs/{args.grid}"
    status = [run_status(run_dir(runs_dir, c)) for c in configs]
    counts = {s: status.count(s) for s in ("done", "partial", "new")}
    images = sum(
        c.steps * c.batch_size_per_domain * (len(_domains(c)) - 1)
        for c, s in zip(configs, status, strict=True)
        if s != "done"
    )
    print(
        f"grid {args.grid}: {len(configs)} runs in {runs_dir}: {counts['done']} done, "
        f"{counts['partial']} to resume, {counts['new']} new; {images:,} training images to go"
    )
    if args.dry_run:
        for c, s in zip(configs, status, strict=True):
            print(f"{s:8} {run_dir(runs_dir, c).name}")
        return 0
    if args.launcher == "slurm":
        jobs = submit_slurm(
            configs,
            runs_dir,
            gpus_per_job=args.gpus_per_job,
            timeout_min=args.timeout_min,
            partition=args.partition,
            cpus_per_task=args.cpus_per_task,
            mem_gb=args.mem_gb,
            array_parallelism=args.array_parallelism,
            cluster=args.cluster,
        )
        print(f"submitted {len(jobs)} jobs" + (f" (array {jobs[0].job_id})" if jobs else ""))
        if args.wait:
            for job in jobs:
                job.result()
            print(f"{len(jobs)} jobs finished")
        return 0
    if args.jobs > 1:
        run_parallel(configs, runs_dir, args.jobs)
    else:
        run_local(configs, runs_dir)
    print(f"all {len(configs)} runs done; tables: python -m vldlib collect {runs_dir}")
    return 0


def _domains(config: Config) -> tuple[str, ...]:
    from vldlib.grids import domains_of

    return domains_of(config)


def cmd_collect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vldlib.collect import collect_figures, to_markdown
    from vldlib.errors import RunError

    if not Path(args.runs_dir).is_dir():
        raise RunError(f"runs folder {args.runs_dir} does not exist")
    tables = collect_figures(args.runs_dir, args.out)
    if not tables:
        print(f"no finished run of a known grid in {args.runs_dir}")
        return 1
    for name, table in tables.items():
        print(f"## {name}\n\n{to_markdown(table)}\n")
    if args.out:
        print(f"wrote {', '.join(f'{n}.csv/.md' for n in tables)} to {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from vldlib.bench import bench, report

    overrides = {k: parse_value(k, v) for k, v in _pairs("set", args.set).items()}
    result = bench(
        args.backbone,
        args.resolution,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        data_dir=args.data_dir,
        **overrides,
    )
    print(report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vldlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list datasets, their domains and where data comes from")
    p.add_argument("--verify", metavar="NAME", help="open every image of NAME; list bad files")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("train", help="fine-tune one model (leave one domain out)")
    _add_config_flags(p)
    p.add_argument("--output-dir", required=True, help="run folder; an unfinished run resumes")
    p.add_argument("--overwrite", action="store_true", help="redo a finished or different run")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pretrain", help="pre-train an embedded backbone (rich or plain)")
    p.add_argument("--kind", choices=("rich", "plain"), required=True)
    p.add_argument("--output", required=True, help="the .safetensors file to write")
    p.add_argument("--samples", type=int, default=300_000, help="training images seen")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("benchmark", help="ERM vs VLD on every held-out domain; prints the table")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--dropouts", default="0,0.9", help="baseline first, method last")
    p.add_argument("--test-envs", default="all")
    p.add_argument("--runs-dir", default="results/cpu")
    p.add_argument("--collect-only", action="store_true", help="tabulate finished runs; train none")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("sweep", help="run a grid of the paper (or the CPU benchmark); skips done")
    p.add_argument("--grid", required=True, help="cpu, smoke, fig2 ... fig8 (vldlib.grids)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--jobs", type=int, default=1, help="local: runs at once, in subprocesses")
    p.add_argument("--runs-dir", default=None, help="default runs/<grid>")
    p.add_argument("--data-dir", default=None, help="the folder that holds PACS/, VLCS/ ...")
    p.add_argument("--weights", default=None, help="the folder holding resnet50-*.pth")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override in every run")
    p.add_argument("--where", action="append", metavar="KEY=V1,V2", help="keep only these runs")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status")
    p.add_argument("--gpus-per-job", type=int, default=1, help="slurm: GPUs of each run")
    p.add_argument("--timeout-min", type=int, default=720, help="slurm: time limit of each run")
    p.add_argument("--partition", default=None, help="slurm: partition")
    p.add_argument("--cpus-per-task", type=int, default=10, help="slurm: data-loading cores")
    p.add_argument("--mem-gb", type=int, default=None, help="slurm: memory of each run")
    p.add_argument("--array-parallelism", type=int, default=256, help="slurm: runs at once")
    p.add_argument("--cluster", default=None, help="submitit cluster; 'local' runs it here")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the jobs to finish")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("collect", help="one table per figure from a runs folder (CSV, Markdown)")
    p.add_argument("runs_dir")
    p.add_argument("--out", default=None, help="write <grid>.csv and <grid>.md here")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("bench", help="img/s of the loop, a bare step and the data; FLOP/s")
    p.add_argument("--backbone", default="torchvision/resnet50", help="vldnet: the cpu profile")
    p.add_argument("--resolution", type=int, default=224, help="image side in pixels")
    p.add_argument("--batch", type=int, default=96, help="images per step, over 3 domains")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each kind")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None, help="real DomainBed data (default: generated)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. compile=true")
    p.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("VLDLIB_LOG", "INFO"), format="%(message)s", stream=sys.stderr
    )
    try:
        return args.func(args)
    except VldlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""Command line: ``python -m vldlib.analysis NAME [--out DIR] ...`` writes NAME's tables as CSV.

NAME is one of ``NAMES`` (see ``vldlib.analysis.tables``). ``--runs`` is the cpu grid's
runs folder, read only; the CSV files go to ``--out`` (default ``results/analysis``). After
``linear`` or ``full``, ``linear_summary.csv`` is rewritten when both tables are there.
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from vldlib.analysis import tables
from vldlib.errors import VldlibError

NAMES = (
    "starvation",
    "exactness",
    "shares",
    "linear",
    "full",
    "interpolation",
    "scratch",
    "pretraining",
)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",")]


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",")]


def _commands(args: argparse.Namespace) -> dict[str, Callable[[], dict[str, pd.DataFrame]]]:
    seeds, envs, out = args.seeds, args.test_envs, args.out
    # Each analysis keeps its own default dropout rates unless --dropouts is given.
    rates = {"dropouts": args.dropouts} if args.dropouts else {}
    return {
        "starvation": lambda: tables.starvation_tables(),
        "exactness": lambda: tables.decomposition_exactness(),
        "shares": lambda: tables.decomposition_shares(args.runs),
        "linear": lambda: tables.linear_tables(seeds, envs, **rates),
        "full": lambda: tables.full_tables(args.runs),
        "interpolation": lambda: tables.interpolation_tables(args.long_run, out),
        "scratch": lambda: tables.scratch_tables(seeds, envs, out, **rates),
        "pretraining": lambda: tables.pretraining_tables(seeds, envs, out),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vldlib.analysis", description=__doc__)
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--out", type=Path, default=Path("results/analysis"))
    parser.add_argument("--runs", type=Path, default=Path("results/cpu"))
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="e.g. 0,1,2")
    parser.add_argument("--test-envs", type=_ints, default=[0, 1, 2, 3], help="e.g. 0,1")
    parser.add_argument("--dropouts", type=_floats, help="linear, scratch: e.g. 0,0.9")
    parser.add_argument(
        "--long-run", type=Path, nargs="+", help="interpolation: finished run folders (seeds)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.name == "interpolation" and args.long_run is None:
        parser.error("interpolation needs --long-run RUN_FOLDER [RUN_FOLDER ...]")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        frames = _commands(args)[args.name]()
    except VldlibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, frame in frames.items():
        frame.to_csv(args.out / f"{name}.csv", index=False)
        print(f"{name}: {len(frame)} rows -> {args.out / f'{name}.csv'}")
    linear, full = args.out / "linear_ft.csv", args.out / "full_ft.csv"
    if args.name in ("linear", "full") and linear.exists() and full.exists():
        summary = tables.linear_summary(pd.read_csv(linear), pd.read_csv(full))
        summary.to_csv(args.out / "linear_summary.csv", index=False)
        print(f"linear_summary: {len(summary)} rows -> {args.out / 'linear_summary.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

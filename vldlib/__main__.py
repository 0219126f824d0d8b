"""Command line: ``python -m vldlib {datasets,train,pretrain,benchmark} ...``.

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

"""Design probe for the cpu profile's schedule length, by in-distribution criteria only.

Runs λ = 0 or λ = 0.9 (``--dropout``) for ``--steps`` steps (lr ÷ 10 halfway) on one held-out
split with seed 100, and prints the training loss and the training domains' validation accuracy at
each evaluation. The held-out domain's accuracy is in the run folder but is not printed.
"""

import argparse

from vldlib.config import make_config
from vldlib.data import get_dataset
from vldlib.runs import RunDir
from vldlib.sweeps import run_dir, run_local

parser = argparse.ArgumentParser()
parser.add_argument("--runs-dir", default="runs/design_steps")
parser.add_argument("--dropout", type=float, default=0.9)
parser.add_argument("--steps", type=int, default=900)
parser.add_argument("--test-env", type=int, default=1)
args = parser.parse_args()

config = make_config(
    "cpu",
    dropout=args.dropout,
    steps=args.steps,
    lr_milestones=(args.steps // 2,),
    test_env=args.test_env,
    seed=100,
)
run_local([config], args.runs_dir, progress=False)
run = RunDir(run_dir(args.runs_dir, config, get_dataset(config.dataset)))
print(f"dropout {args.dropout}, {args.steps} steps: step | train_loss | iid_acc")
for r in run.records():
    if r.get("method") == "model" and not r.get("final"):
        print(f"{r['step']:5d} | {r['train_loss']:.3f} | {r['iid_acc']:.3f}")
print("selected step (i.i.d.):", run.final_record()["selected_step"])

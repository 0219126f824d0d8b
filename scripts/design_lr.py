"""Design study for the cpu profile's learning rate, by training-domain validation only.

Runs λ = 0 and λ = 0.9 at three learning rates on one held-out split (``--test-env``) with a seed
(100) kept apart from the report's seeds, and picks the learning
rate with the best mean i.i.d. validation accuracy over both rates, as the paper's grid shares its
learning rates between methods. Held-out-domain accuracy is in the run folders but is not read here.
"""

import argparse
import json

import pandas as pd

from vldlib.collect import load_runs
from vldlib.sweeps import grid, run_local

parser = argparse.ArgumentParser()
parser.add_argument("--runs-dir", default="runs/design_lr")
parser.add_argument("--test-env", type=int, default=1)
parser.add_argument("--out", default=None, help="write the chosen lr as JSON here")
args = parser.parse_args()

configs = [
    c
    for lr in (3e-3, 1e-2, 3e-2)
    for c in grid("cpu", seeds=[100], dropouts=[0.0, 0.9], test_envs=[args.test_env], lr=lr)
]
run_local(configs, args.runs_dir)
runs = load_runs(args.runs_dir)
runs = runs[runs.method == "model"]
table = runs.pivot_table(index="lr", columns="dropout", values=["iid_acc", "selected_step"])
pd.set_option("display.width", 120)
print(table.round(4))
chosen = float(runs.groupby("lr").iid_acc.mean().idxmax())
print(f"chosen lr (best mean i.i.d. validation accuracy): {chosen:g}")
if args.out:
    with open(args.out, "w") as f:
        json.dump({"lr": chosen, "iid_acc_by_lr": runs.groupby("lr").iid_acc.mean().to_dict()}, f)

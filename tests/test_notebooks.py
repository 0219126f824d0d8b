"""Every notebook at the ``smoke`` profile through nbval, as the book's readers would run it.

The notebooks are copied to a temporary folder, so the smoke runs they train land in one fresh
``_build/runs/smoke`` there, built once per session and shared by the notebooks that follow.
Cells tagged ``nbval-check-output`` must reproduce their stored output (``nbval_sanitize.cfg``
masks addresses and timings); the others only have to run. After changing a notebook or the
library, refresh the stored outputs with ``make notebooks`` (this file run as a script).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The claims page reads every other analysis: it runs last, as in the book.
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb") if p.stem != "claims")
NOTEBOOKS.append("claims.ipynb")
# One torch thread: on 2 shared cores, two threads wait on each other (20x slower smoke runs).
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("book")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_smoke(workdir: Path, name: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--nbval-lax",
        "--nbval-current-env",
        "--nbval-cell-timeout=600",
        f"--nbval-sanitize-with={ROOT / 'nbval_sanitize.cfg'}",
        f"notebooks/{name}",
    ]
    env = os.environ | ENV
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def refresh(names: list[str]) -> None:
    """Execute the notebooks in place to store their reference outputs; all of them (no names
    given) start from fresh smoke runs, as the test does."""
    import nbclient
    import nbformat

    os.environ.update(ENV)
    if names == NOTEBOOKS:
        for folder in ("smoke", "smoke_analysis"):
            shutil.rmtree(ROOT / "_build" / "runs" / folder, ignore_errors=True)
    for name in names:
        path = ROOT / "notebooks" / name
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(
            nb,
            timeout=600,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
        nbformat.write(nb, path)
        print(f"refreshed {path.relative_to(ROOT)}")


if __name__ == "__main__":
    refresh(sys.argv[1:] or NOTEBOOKS)

"""The run contract: what a run leaves in its folder, written so that a crash loses nothing.

A run folder holds:
    ``config.json``     the resolved config, its hash and the library versions (written first);
    ``results.jsonl``   one JSON record per evaluation, append-only, each line written whole;
    ``checkpoint.pt``   the state to resume from, replaced atomically at each evaluation;
    ``done``            written last: the run finished and its final record is in results.jsonl.

Every file is written to a temporary name, flushed to disk and renamed, so a reader never sees
half a file. A record line cut short by a crash is skipped with a warning when read back.
"""

import json
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from vldlib.config import Config, load_config
from vldlib.errors import RunError, WeightsError

log = logging.getLogger(__name__)

CONFIG, RESULTS, CHECKPOINT, DONE = "config.json", "results.jsonl", "checkpoint.pt", "done"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as one line, flushed to disk before returning."""
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read results.jsonl, skipping (with a warning) lines that are not whole JSON objects."""
    path = Path(path)
    if not path.exists():
        return []
    records, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    if bad:
        log.warning("%s: skipped %d unreadable line(s), e.g. cut short by a crash", path, bad)
    return records


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save a training state atomically (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training state with ``weights_only=True``: tensors and plain containers only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}. "
            "Delete it to restart the run from step 0"
        ) from None


def versions() -> dict[str, str]:
    import numpy
    import timm
    import torchvision

    import vldlib

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "vldlib": vldlib.__version__,
    }


class RunDir:
    """A run's folder and the files of the run contract."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config_path = self.path / CONFIG
        self.results_path = self.path / RESULTS
        self.checkpoint_path = self.path / CHECKPOINT
        self.done_path = self.path / DONE

    def is_done(self) -> bool:
        return self.done_path.exists()

    def stored_config(self) -> Config | None:
        if not self.config_path.exists():
            return None
        try:
            return load_config(json.loads(self.config_path.read_text())["config"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise RunError(f"{self.config_path} is unreadable ({e}); remove the folder") from None

    def prepare(self, config: Config, overwrite: bool = False) -> str:
        """Make the folder ready for ``config``; return ``new``, ``resume`` or ``done``.

        A folder holding another config, or a finished run, is never overwritten unless
        ``overwrite`` is set.
        """
        stored = self.stored_config()
        if stored is not None and not overwrite:
            if stored.hash() != config.hash():
                raise RunError(
                    f"{self.path} holds a run with another config (hash {stored.hash()} != "
                    f"{config.hash()}); choose another --output-dir or pass --overwrite"
                )
            if self.is_done():
                return "done"
            if self.checkpoint_path.exists():
                return "resume"
        if overwrite and self.path.exists():
            for name in (CONFIG, RESULTS, CHECKPOINT, DONE):
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / "tmp", ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self.results_path.unlink(missing_ok=True)  # a run that never checkpointed starts over
        atomic_write_json(
            self.config_path,
            {"config": config.to_dict(), "hash": config.hash(), "versions": versions()},
        )
        return "new"

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.results_path)

    def truncate_after(self, step: int) -> None:
        """Keep the records up to ``step``: those written after the last checkpoint are redone."""
        kept = [r for r in self.records() if not r.get("final") and r["step"] <= step]
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        atomic_write_bytes(self.results_path, data.encode())

    def append(self, record: dict[str, Any]) -> None:
        append_record(self.results_path, record)

    def finish(self, finals: list[dict[str, Any]]) -> None:
        """Append the final records (one per method), then mark the run done."""
        for final in finals:
            self.append(final)
        atomic_write_bytes(self.done_path, b"")

    def final_records(self) -> dict[str, dict[str, Any]]:
        """The final record of each method, by method name."""
        finals = {r["method"]: r for r in self.records() if r.get("final")}
        if not finals:
            raise RunError(f"{self.path} is marked done but has no final record")
        return finals

    def final_record(self, method: str = "model") -> dict[str, Any]:
        return self.final_records()[method]

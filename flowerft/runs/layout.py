"""The run directory: the unit of state that `evaluate` and `predict` rebuild everything from.

    <run_dir>/config.yaml          the resolved configuration
    <run_dir>/class_names.json     label index -> class name, in the source's own order
    <run_dir>/splits.json          (image folders, labels CSV) the files of each split
    <run_dir>/source.json          where the images come from (flowerft/runs/source_record.py)
    <run_dir>/checkpoints/         head_best.keras, finetune_best.keras, final.keras
    <run_dir>/history_<phase>.csv  per-epoch metrics of each phase (and history.json for both)
    <run_dir>/metrics.json         per-phase summary and which checkpoint is best (written last)
    <run_dir>/curves.png           loss and accuracy per epoch, both phases (drawn by `flowerft report`)
    <run_dir>/evaluation.json      `evaluate`: the test report, with confusion_matrix.png and
                                   predictions.json (each test image's probabilities)
    <run_dir>/report.html          `report`: one page on the run (flowerft/reporting/report.py)
    <run_dir>/skipped_files.json   (folders, labels CSV, Hugging Face) images that did not decode, left out
    <run_dir>/state/               while training: what `--resume` needs (see flowerft/training/checkpoints.py)
    <run_dir>/tensorboard/         event files
    <run_dir>/train.lock           locked by the process that trains the run (flowerft/runs/lock.py)

By default runs go to runs/<timestamp>, and runs/latest names the newest one started
(wherever its --run-dir is: the only file flowerft writes outside a run's folder).
Every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from flowerft.errors import FlowerftError

LATEST = "latest"
# The second line of every runs/latest flowerft writes: how it knows the file for its own.
LATEST_MARKER = "# flowerft: the newest run (written by `flowerft train`; the line above names it)"
LOCK = "train.lock"  # held by the process training the run: flowerft/runs/lock.py
CHECKPOINTS = "checkpoints"
CONFIG = "config.yaml"  # written first: it marks a folder as a run (is_run)
CLASS_NAMES = "class_names.json"
SPLITS = "splits.json"
SKIPPED = "skipped_files.json"
HISTORY = "history.json"
METRICS = "metrics.json"  # written last: a run that has it finished training


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write text (or bytes) to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); a run's files follow the umask like any other
        # (0644 usually), so colleagues on a shared server can read them.
        os.chmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    try:  # Linux says it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def remove_partial_writes(folder: Path) -> None:
    """Delete what a process killed inside write_atomic left: its temporary files, never renamed into place."""
    for leftover in folder.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_yaml(path: Path, data: Any) -> None:
    write_atomic(path, yaml.safe_dump(data, sort_keys=False))


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(Path(path).read_text())  # plain data only: no code runs


def new_run_dir(runs_root: str | Path) -> Path:
    """runs_root/<YYYYmmdd-HHMMSS>, with a suffix if two runs start in the same second."""
    root = Path(runs_root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = root / stamp, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate


def check_writable(path: Path) -> None:
    """Fail before any compute if `path` could not be created or written."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        what = "is not a folder" if not ancestor.is_dir() else "is not writable"
        raise FlowerftError(f"cannot write to run dir {path}: {ancestor} {what}; choose another --run-dir")


def make_run_dir(path: Path) -> Path:
    try:
        (path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise FlowerftError(f"cannot write to run dir {path}: {e.strerror or e}; choose another --run-dir") from None
    return path


# Keys every flowerft config.yaml has, and another tool's config.yaml is most unlikely to.
RUN_CONFIG_KEYS = {"backbone", "epochs_head", "epochs_finetune", "lr_head", "lr_finetune"}


def is_run(path: Path) -> bool:
    """Whether `path` holds the config.yaml `flowerft train` writes first; --overwrite deletes nothing else."""
    try:
        config = read_yaml(path / CONFIG)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and RUN_CONFIG_KEYS <= set(config)


def clear_run(path: Path, keep: str) -> list[str]:
    """Delete everything in a run's folder but `keep` (the lock that makes this process its only writer).

    Returns what it deleted (folders with a trailing /), sorted, for the user to be told.
    """
    removed = sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in path.iterdir() if p.name != keep)
    for child in path.iterdir():
        if child.name == keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return removed


def check_new(path: Path, overwrite: bool) -> None:
    """A fresh run never silently replaces an earlier one (nor a folder that is not a run)."""
    if not path.is_dir() or not [p for p in path.iterdir() if p.name != LOCK]:
        return  # a new or empty folder (the lock file is `train`'s own: flowerft/runs/lock.py)
    if not is_run(path):
        raise FlowerftError(f"run dir {path} is a non-empty folder that is not a flowerft run; choose another --run-dir")
    if not overwrite:
        raise FlowerftError(
            f"run dir {path} already holds a run; add --resume to continue it, --overwrite to replace it, "
            "or choose another --run-dir"
        )


def check_latest(runs_root: str | Path) -> None:
    """Fail before a run starts if <runs_root>/latest cannot be written or is not flowerft's own pointer.

    flowerft writes that one file outside a run's folder, and never replaces a file or folder
    it did not write: its pointer is two lines, a run (or a run since deleted) then LATEST_MARKER;
    an older one-line pointer counts only if it names an existing run (_is_pointer).
    """
    pointer = Path(runs_root) / LATEST
    ancestor = pointer.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        problem = "is not a folder" if not ancestor.is_dir() else "is not writable"
        raise FlowerftError(
            f"cannot write {pointer}, the pointer to the newest run: {ancestor} {problem}; run from a folder "
            "you can write to, or set runs_root to one in a --config file"
        )
    if not pointer.exists() and not pointer.is_symlink():
        return
    what = "a folder" if pointer.is_dir() else None if _is_pointer(pointer) else "a file flowerft did not write"
    if what:
        raise FlowerftError(
            f"{pointer} is {what}, not flowerft's pointer to the newest run; move it away (flowerft keeps that "
            "pointer there) or set runs_root to another folder in a --config file"
        )


def _is_pointer(pointer: Path) -> bool:
    """flowerft's own pointer: its run on the first line, LATEST_MARKER on the second.

    A one-line file (what flowerft wrote before the marker) counts only if it names an existing
    run: a user's one-line note names no run, and guessing would overwrite it.
    """
    try:
        lines = pointer.read_text().splitlines() if pointer.is_file() else []
    except (OSError, UnicodeDecodeError):
        return False
    if len(lines) == 2 and lines[0].strip() and lines[1] == LATEST_MARKER:
        return True
    return len(lines) == 1 and bool(lines[0].strip()) and is_run(pointer.parent / lines[0].strip())


def latest_target(pointer: Path) -> str:
    """The run a runs/latest names (its first line)."""
    lines = pointer.read_text().splitlines()
    return lines[0].strip() if lines else ""


def set_latest(run_dir: Path, runs_root: str | Path) -> None:
    """Point <runs_root>/latest at `run_dir`: its name if it lies in runs_root, else its absolute path.

    A one-line file (symlinks are not portable), wherever the run is, so that `evaluate`,
    `predict` and `train --resume` without --run-dir find the newest run.
    """
    root = Path(runs_root)
    check_latest(root)
    inside = run_dir.resolve().parent == root.resolve()
    try:
        write_atomic(root / LATEST, (run_dir.name if inside else str(run_dir.resolve())) + "\n" + LATEST_MARKER + "\n")
    except OSError as e:
        raise FlowerftError(f"cannot write {root / LATEST}: {e.strerror or e}; give --run-dir to later commands") from None


def find_run(run_dir: str | Path | None, runs_root: str | Path = "runs") -> Path:
    """The run to evaluate or predict with: `run_dir` if given, else the latest under runs_root."""
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists() and not path.is_dir():
            raise FlowerftError(f"run dir {path} is a file, not a folder; give the folder `flowerft train` wrote")
        if not path.is_dir():
            raise FlowerftError(f"run dir {path} does not exist; give the folder `flowerft train` wrote")
        return path
    pointer = Path(runs_root) / LATEST
    if not pointer.is_file():
        raise FlowerftError(f"no run found ({pointer} is missing); run `flowerft train` first or give --run-dir")
    path = Path(runs_root) / latest_target(pointer)
    if not path.is_dir():
        raise FlowerftError(f"{pointer} names {path}, which does not exist; give --run-dir")
    return path

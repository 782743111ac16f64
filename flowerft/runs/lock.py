"""One writer per run dir: `train` holds an OS lock on <run_dir>/train.lock while it runs.

`fcntl.flock` is released by the kernel when the process ends, however it ends (kill -9,
OOM, a lost node), so a dead trainer's lock never blocks `--resume`, and a stale file
means nothing: only a held lock does. The file records who holds it, for the message a
second trainer (or `evaluate` during training) prints.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

from flowerft.errors import FlowerftError
from flowerft.runs.layout import LOCK, is_run


class RunInUse(FlowerftError):
    pass


def holder(run_dir: Path) -> str | None:
    """Who is training `run_dir` now ("process 123 on host, since ..."), or None if nobody is."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)  # also releases the shared lock we may have taken
    return None


@contextlib.contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s lock for the block, or raise RunInUse naming the process that has it.

    Creates the folder if needed, and removes it again if the block leaves nothing but the
    lock in folders it created (a run refused before it began leaves nothing behind); in a
    folder that was there already, a lock file it made goes again unless the folder became a run.
    """
    run_dir = Path(run_dir)
    created = [run_dir, *run_dir.parents]  # the folders this call makes, innermost first
    created = created[: next(i for i, folder in enumerate(created) if folder.exists() or folder == folder.parent)]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        made_lock = not (run_dir / LOCK).exists()
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise FlowerftError(f"cannot write to run dir {run_dir}: {e.strerror or e}; choose another --run-dir") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunInUse(
                f"{run_dir} is being trained by {who}; wait for it to finish (then --resume is a no-op) "
                "or stop that process first"
            ) from None
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}, since {since}\n".encode(), 0)
        try:
            yield
        finally:
            if created and [p.name for p in run_dir.iterdir()] == [LOCK]:
                (run_dir / LOCK).unlink()
                for folder in created:
                    with contextlib.suppress(OSError):  # not empty: something else lives there now
                        folder.rmdir()
            elif made_lock and not is_run(run_dir):
                # A folder that was there before and did not become a run (a refused --run-dir)
                # gets back as it was. Unlinked while still held: a second trainer that opened it
                # meanwhile fails to lock it, and one that comes later creates its own.
                (run_dir / LOCK).unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the lock

"""One local run per root at a time.

Two runs on the same root (a cron firing during a manual run) would share the metadata
store, the model runs and the push destination, and each would report the other's
run. The lock is an advisory `flock` on `ROOT/.xfer-run.lock`, which the kernel drops
when its process dies however it dies, so a killed run never blocks the next one; the
file also records who holds it (run id, start, pid, command) for the message a second
run prints, and a next run that finds a record whose process is gone knows the last
run was interrupted.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

LOCK_FILE = ".xfer-run.lock"


class RunInProgress(RuntimeError):
    """Another run holds the root; the message names it."""


@dataclass
class Holder:
    run_id: str
    started: str
    pid: int
    command: str

    def line(self) -> str:
        return f"run {self.run_id} (pid {self.pid}, started {self.started}: {self.command})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(f) -> Optional[Holder]:
    f.seek(0)
    text = f.read().strip()
    if not text:
        return None
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        return None


class RootLock:
    """`with RootLock(root, run_id) as lock:` holds the root for one run.

    `lock.interrupted` is the holder record left by a run whose process is gone (it
    died without releasing: killed, crashed, machine lost), else None."""

    def __init__(self, root: str, run_id: str):
        self.path = os.path.join(root, LOCK_FILE)
        self.run_id = run_id
        self.interrupted: Optional[Holder] = None
        self._f = None

    def __enter__(self) -> "RootLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(f)
            f.close()
            who = holder.line() if holder else "a run that has not written its record yet"
            raise RunInProgress(
                f"another xfer run is using {os.path.dirname(self.path)}: {who}. Wait for it to "
                f"finish, or stop it (kill {holder.pid if holder else 'its process'}); a killed "
                f"run releases the root at once") from None
        previous = _read(f)
        if previous is not None and previous.pid != os.getpid() and not _alive(previous.pid):
            self.interrupted = previous
        f.seek(0)
        f.truncate()
        f.write(json.dumps(Holder(self.run_id, time.strftime("%Y-%m-%d %H:%M:%S"), os.getpid(),
                                  " ".join(os.path.basename(a) if i == 0 else a
                                           for i, a in enumerate(sys.argv))).__dict__))
        f.flush()
        self._f = f
        return self

    def __exit__(self, *exc) -> None:
        # An empty record: the run ended, whatever its outcome; only a dead process leaves one.
        self._f.seek(0)
        self._f.truncate()
        self._f.flush()
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def holder(root: str) -> Optional[Holder]:
    """The live run holding `root`, if any (for `xfer runs`)."""
    path = os.path.join(root, LOCK_FILE)
    if not os.path.exists(path):
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(f)
        fcntl.flock(f, fcntl.LOCK_UN)
    return None

"""How a failure reaches the user: their error first, in one line naming the step that
failed and the innermost cause (the file, key or value), with the full trace in a file.

Only unexpected errors get a trace file: a config error, or a user error that is one
clear line already ("no run 'x'", a file that does not exist), gets none. Trace files
go to $XDG_STATE_HOME/xfer/errors/ (~/.local/state/xfer/errors/), the newest
KEEP_TRACES kept."""
from __future__ import annotations

import datetime
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Optional

from xfer.pipeline.config import ConfigError


class StepFailed(Exception):
    def __init__(self, component: Optional[str], error: BaseException):
        super().__init__(f"{component or 'a component'} failed: {error}")
        self.component = component


def step_failed(config, error: BaseException) -> StepFailed:
    """`error`, raised by a local run, tagged with the step that failed."""
    return StepFailed(_failed_component(config), error)


def _failed_component(config) -> Optional[str]:
    """The component that failed in the latest run, from the metadata store, if any."""
    from xfer.pipeline.summary import summarize
    try:
        states = summarize(config.metadata_path, config.name).states
    except Exception:  # noqa: BLE001 - no store yet: the failure came before any step
        return None
    return next((c for c, s in states.items() if s == "failed"), None)


KEEP_TRACES = 20

# Raised by xfer's own commands with a message naming what is missing: the user's error,
# not a bug; a trace file would only add noise. Inside a step (StepFailed), a trace is kept.
USER_ERRORS = (LookupError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, ConfigError) or (not isinstance(e, StepFailed) and isinstance(e, USER_ERRORS))


def report(e: BaseException) -> int:
    """Print `e` for the user and return the exit code: 2 for a config error, else 1."""
    if isinstance(e, ConfigError):
        print(f"xfer: config error: {e}", file=sys.stderr)
        return 2
    if is_user_error(e):
        print(f"xfer: error: {root_cause(e)}", file=sys.stderr)
        return 1
    log = write_trace(e)
    where = f" in {e.component}" if isinstance(e, StepFailed) and e.component else ""
    print(f"xfer: error{where}: {root_cause(e)}\nfull trace: {log} (or run with --verbose)",
          file=sys.stderr)
    return 1


def root_cause(e: BaseException) -> str:
    """The innermost exception's message: the one naming the file, key or value."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if not isinstance(e, (ValueError, FileNotFoundError, LookupError)) else text


def trace_dir() -> Path:
    """$XDG_STATE_HOME/xfer/errors, or ~/.local/state/xfer/errors (XDG Base Directory)."""
    state = os.environ.get("XDG_STATE_HOME")
    if not state or not os.path.isabs(state):  # the spec: relative values are ignored
        state = os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "xfer" / "errors"


def write_trace(e: BaseException) -> str:
    """The full trace of `e` in a new file under trace_dir(); older ones beyond the newest
    KEEP_TRACES removed. Falls back to the temp folder if the state folder is not writable."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        folder = trace_dir()
        folder.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=f"xfer-error-{stamp}-", suffix=".log", dir=folder)
    except OSError:
        folder = None
        fd, path = tempfile.mkstemp(prefix=f"xfer-error-{stamp}-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        traceback.print_exception(e, file=f)
    if folder is not None:
        prune_traces(folder)
    return path


def prune_traces(folder: Path, keep: int = KEEP_TRACES) -> None:
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    logs = sorted(folder.glob("xfer-error-*.log"), key=lambda p: (mtime(p), p.name), reverse=True)
    for old in logs[keep:]:
        try:
            old.unlink()
        except OSError:  # another xfer pruned it first
            pass


def quiet_broken_pipe() -> int:
    """stdout's reader went away (`xfer runs | head -1`): end quietly, as `cat` would.
    Python's recipe: point stdout at devnull so the interpreter's final flush cannot
    raise again. 141 is what a shell reports for a process ended by SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141

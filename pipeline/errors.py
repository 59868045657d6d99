"""How a failure reaches the user: their error first, in one line naming the step that
failed and the innermost cause (the file, key or value), with the full trace in a file."""
from __future__ import annotations

import os
import sys
import tempfile
import traceback
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


def report(e: BaseException) -> int:
    """Print `e` for the user and return the exit code: 2 for a config error, else 1."""
    if isinstance(e, ConfigError):
        print(f"xfer: config error: {e}", file=sys.stderr)
        return 2
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


def write_trace(e: BaseException) -> str:
    fd, path = tempfile.mkstemp(prefix="xfer-error-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        traceback.print_exception(e, file=f)
    return path

"""What `xfer run` prints while it runs: one line as each step starts and ends (with
its time), and, unless --verbose, nothing else from TensorFlow, TFX or Beam."""
from __future__ import annotations

import logging
import os
import time
import warnings


class StepProgress(logging.Filter):
    """Turns the local runner's 'Component X is running/finished' logs into one
    progress line each (with elapsed time) and, unless verbose, drops other chatter."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose, self.started = verbose, {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("Component %s is running"):
            self.started[record.args[0]] = time.perf_counter()
            print(f"[xfer] {record.args[0]} running ...", flush=True)
        elif msg.startswith("Component %s is finished"):
            node = record.args[0]
            seconds = time.perf_counter() - self.started.get(node, time.perf_counter())
            print(f"[xfer] {node} done ({seconds:.1f}s)", flush=True)
        # Quiet: TFX's own error logs would come before the user's error; the CLI prints
        # that error, naming the failed component, with the trace in a file.
        return self.verbose


def configure(verbose: bool) -> None:
    # The runner's progress is logged at INFO; the filter keeps only that unless verbose.
    absl_logger = logging.getLogger("absl")
    absl_logger.setLevel(logging.INFO)
    # Steps call absl.logging.set_verbosity mid-run (seen in Transform: FATAL, then
    # WARNING), which hid every later progress line; keep the level chosen here.
    absl_logger.setLevel = lambda level: None
    absl_logger.addFilter(StepProgress(verbose))
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)

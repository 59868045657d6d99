"""One run per root: the lock a second run meets, and a dead run's lock taken over."""
import json
import subprocess
import sys

import pytest

from xfer.pipeline.lock import LOCK_FILE, RootLock, RunInProgress, holder

HOLD = """
import sys, time
from xfer.pipeline.lock import RootLock
with RootLock(sys.argv[1], "run-A"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_the_same_root_is_refused_naming_the_first(tmp_path):
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        with pytest.raises(RunInProgress) as e:
            with RootLock(str(tmp_path), "run-B"):
                pass
        assert f"pid {first.pid}" in str(e.value) and "run run-A" in str(e.value)
        assert holder(str(tmp_path)).run_id == "run-A"
    finally:
        first.kill()
        first.wait()
    # The kernel dropped the killed run's lock: the next run takes the root at once and
    # learns the last run was interrupted.
    with RootLock(str(tmp_path), "run-C") as lock:
        assert lock.interrupted is not None and lock.interrupted.run_id == "run-A"
        assert lock.interrupted.pid == first.pid
    assert holder(str(tmp_path)) is None


def test_a_run_that_ended_leaves_no_record(tmp_path):
    with RootLock(str(tmp_path), "run-1") as lock:
        assert lock.interrupted is None
        assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == "run-1"
    assert (tmp_path / LOCK_FILE).read_text() == ""
    with RootLock(str(tmp_path), "run-2") as lock:
        assert lock.interrupted is None

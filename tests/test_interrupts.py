"""Ctrl-C: one line and exit 130, as a shell reports a command it interrupted, instead of
a 40-line traceback; nothing left that the next command on the root would trip on."""
import os
import signal
import subprocess
import time

import pytest

from conftest import CIFAR, CONFIGS, XFER, xfer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _config(root):
    # 128 train images at batch 16: enough for a range test (112 needed), 24 steps.
    return ["--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={root}",
            "--set", f"data.input_base={CIFAR}", "--set", f"data.labels_file={CIFAR / 'labels.txt'}",
            "--set", "train.batch_size=16"]


def test_ctrl_c_in_lr_find_is_one_line_and_exit_130_leaving_nothing_behind(tmp_path, cifar):
    root = tmp_path / "root"
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([XFER, "lr-find", *_config(root)], stdout=out, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        deadline = time.time() + 600
        while "steps of batch 16" not in log.read_text():  # the range test is training
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole foreground group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert err == ("xfer: interrupted (the range test writes nothing until it ends; the next run on this root "
                   "clears any step it left)\n"), err
    assert "lr-find transfer:" in log.read_text() and "suggested" not in log.read_text()
    assert not (root / "reports").exists()  # no half-written plot or points
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".staging")]
    runs = xfer("runs", *_config(root)).stdout.splitlines()
    assert " complete " in runs[0] and not [line for line in runs if " running" in line or "interrupted" in line], runs
    # The root is free and its steps settled: a run after it starts at once and has nothing to clear.
    again = xfer("run", "--to", "Transform", *_config(root)).stdout
    assert "was interrupted" not in again and "removed" not in again, again

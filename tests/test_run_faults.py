"""Runs that fail early, fail clearly and leave nothing behind (real runs, small).

One root, in order: a run is started and, while it trains, a second run on the same root
is refused naming it; the first is killed with SIGKILL; `xfer runs` calls it interrupted;
the next run says so, removes what it left and, with no value threshold and nothing
served, blesses and pushes (nothing could fail); a run asked for an unreachable accuracy
with --require-blessed exits with its own code. The preflight stops bad configs before
any step runs.
"""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import CIFAR, CONFIGS, XFER, xfer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]


def _config(root, *more):
    return ["--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={root}",
            "--set", f"data.input_base={CIFAR}", "--set", f"data.labels_file={CIFAR / 'labels.txt'}", *more]


def test_preflight_names_every_problem_before_any_step_runs(tmp_path):
    start = time.perf_counter()
    proc = xfer("run", *_config(tmp_path, "--set", "train.fine_tune.from_layer=block_16_projekt",
                                "--set", "eval.top_k=10", "--set", "data.label_key=labels"), check=False)
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert "preflight found 4 problem(s) before any step ran" in err, err
    assert "'block_16_projekt' is not a layer of mobilenet_v2 (did you mean block_16_project" in err
    assert "eval.top_k: 10 is not below the 10 classes" in err
    assert "data.label_key: 'labels' is in none of the first 128 records of split 'train'" in err
    assert "their features are: id, image, label" in err
    assert not (tmp_path / "metadata.sqlite").exists() and not (tmp_path / "pipeline_root").exists()
    assert seconds < 60, seconds
    ok = xfer("run", "--check", *_config(tmp_path))
    assert "preflight passed" in ok.stdout and not (tmp_path / "metadata.sqlite").exists()


def test_thresholds_outside_zero_one_are_config_errors(tmp_path):
    proc = xfer("run", "--check", *_config(tmp_path, "--set", "eval.min_accuracy=1.5"), check=False)
    assert proc.returncode == 2 and "eval.min_accuracy" in proc.stderr, proc.stderr


def _wait_for(path, text, proc, seconds=600):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early ({proc.returncode}): {path.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"'{text}' never appeared in {path}")


def test_lock_kill_interrupted_first_bless_and_require_blessed(tmp_path):
    root = tmp_path / "root"
    # 128 train images and batch 256: off TPU the one partial batch trains.
    config = _config(root, "--set", "eval.min_accuracy=null", "--set", "eval.max_drop=0.0",
                     "--set", "train.batch_size=256", "--set", "train.transfer.epochs=3")
    log = tmp_path / "run1.log"
    with open(log, "w") as out:
        first = subprocess.Popen([XFER, "run", *config], stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        _wait_for(log, "[xfer] Trainer running", first)
        second = xfer("run", *config, check=False)
        assert second.returncode == 3, second.stderr
        assert f"another xfer run is using {root}" in second.stderr
        assert f"pid {first.pid}" in second.stderr, second.stderr
        _wait_for(log, "transfer epoch 1:", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    runs = xfer("runs", *config).stdout
    assert " interrupted " in runs.splitlines()[0], runs

    serving = root / "serving"
    (serving / ".staging-1-0badc0de").mkdir(parents=True)
    (serving / ".staging-1-0badc0de" / "saved_model.pb").write_bytes(b"half a model")
    third = xfer("run", *config).stdout
    assert f"was interrupted" in third and f"pid {first.pid}" in third, third
    assert "removed" in third and ".staging-1-0badc0de" in third
    assert "marked" in third and "as interrupted" in third
    # The killed run never wrote its result.json: the run that found it did, for it.
    killed = runs.splitlines()[0].split()[0]
    path = root / "reports" / killed.replace(":", "-") / "result.json"
    assert f"wrote {path} for the interrupted run {killed}" in third, third
    result = json.loads(path.read_text())
    assert result["run_id"] == killed and result["status"] == "interrupted", result
    assert result["steps"]["Trainer"] == "interrupted" and result["steps"]["Transform"] in ("executed", "cached")
    assert result["error"].startswith("interrupted in Trainer: the run's process ended before the step finished")
    assert result["pushed"] is None and result["not_pushed_because"] == "the run was interrupted"
    assert "BLESSED: nothing to fail: no value threshold (eval.min_accuracy) and no served model to compare with" in third
    assert "pushed to:" in third and "(version 1)" in third
    assert sorted(p.name for p in serving.iterdir()) == ["1"]  # no staging left
    shown = xfer("show", *config, "latest", "Evaluator").stdout
    assert "BLESSED: nothing to fail: no value threshold (eval.min_accuracy) and no served model to compare with" in shown
    runs = xfer("runs", *config).stdout.splitlines()
    headers = [line for line in runs if not line.startswith(" ")]
    assert " interrupted " in headers[0] and " complete " in headers[1], runs

    fourth = xfer("run", *config, "--set", "eval.min_accuracy=1.0", "--require-blessed", check=False)
    assert fourth.returncode == 4, fourth.stderr
    assert "NOT BLESSED" in fourth.stdout and "--require-blessed" in fourth.stderr
    assert sorted(p.name for p in serving.iterdir()) == ["1"]

"""Two MultiWorkerMirroredStrategy workers train one model on this machine: the real
run_fn (tests/trainer_job.py) in two processes, TF_CONFIG naming a chief and a worker on
127.0.0.1 ports, real gRPC collectives, as TensorFlow's own multi_process_runner tests do.

Asserted from the processes' outputs: each training example seen once per epoch across
the workers (trainer_job.py --count-examples prints what every step trained on), only the
chief writes the model, reports and TensorBoard logs, the result matches one worker with
the same global batch and seed, and a worker SIGKILLed in phase 2 and restarted resumes
from the epoch backup with the other and the export is whole."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from test_trainer_run import _spec, as_data_check_wrote, data, fn_args, trainer_config  # noqa: F401  (fixture)

HERE = Path(__file__).parent
# One worker against two, same global batch and seed. Measured here: phase 1's losses
# and every accuracy equal, phase 2's losses (train and validation) differ by at most
# 2.4e-7 (one float32 ulp at 2.3): the two sum the same gradients in another order (an
# all-reduce across processes against one batch's mean). 1e-5 is 40 times that. The
# batches themselves are checked example by example in the test above; with random
# MobileNetV2 weights the loss barely moves (2.307 to 2.303), so this checks the
# arithmetic, not learning.
LOSS_ATOL = 1e-5


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tf_config(ports: list[int], index: int) -> str:
    """TF_CONFIG as Vertex sets it for a chief pool and a worker pool."""
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{p}" for p in ports[1:]]}
    task = {"type": "chief", "index": 0} if index == 0 else {"type": "worker", "index": index - 1}
    return json.dumps({"cluster": cluster, "task": task})


def start(spec: Path, log: Path, config: str = None, tmpdir: Path = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    if config:
        env["TF_CONFIG"] = config
    if tmpdir:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.Popen([sys.executable, str(HERE / "trainer_job.py"), str(spec), "--count-examples"],
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env, cwd=str(HERE.parent),
                            start_new_session=True)


def wait_all(procs, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    os.killpg(q.pid, signal.SIGKILL)
            raise
    return codes


def counted(log: Path) -> dict:
    """{(model name, optimizer step): [fingerprint of each example the step trained on]}."""
    steps = {}
    for line in log.read_text().splitlines():
        if line.startswith("[count] "):
            _, model, step, rest = line.split(" ", 3)
            steps[(model, int(step))] = [float(v) for v in rest.strip("[]").split()]
    return steps


def history(run_dir: Path) -> dict:
    return json.loads((run_dir / "history.json").read_text())["history"]


def tree(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def checked(data, tmp_path_factory):  # noqa: F811  (the imported fixture)
    """The digits as DataCheck writes them (its label counts: class weights need them)."""
    return as_data_check_wrote(data, tmp_path_factory.mktemp("mw") / "checked")


def config(checked, **overrides):
    """Both phases, class weights and a cosine schedule; epoch backups on."""
    train = dict(resume=True, class_weight="balanced",
                 transfer={"epochs": 2, "learning_rate": 0.01, "schedule": "cosine", "cache_features": "on"},
                 fine_tune={"enabled": True, "epochs": 2, "learning_rate": 1e-3, "fraction": 0.1})
    return trainer_config(checked, **{**train, **overrides})


@pytest.fixture(scope="module")
def one_and_two(checked, tmp_path_factory):
    """A one-worker reference and a two-worker run of the same config, side by side."""
    root = tmp_path_factory.mktemp("runs")
    cfg = config(checked, reports=True)
    jobs = {}
    for name in ("one", "two"):
        (root / name).mkdir()
        jobs[name] = _spec(fn_args(checked, root / name, cfg), root / name / "job.json")
    ports = free_ports(2)
    procs = [start(jobs["one"], root / "one.log"),
             start(jobs["two"], root / "chief.log", tf_config(ports, 0)),
             start(jobs["two"], root / "worker.log", tf_config(ports, 1))]
    codes = wait_all(procs, 800)
    logs = {name: (root / f"{name}.log").read_text() for name in ("one", "chief", "worker")}
    assert codes == [0, 0, 0], logs
    return root, logs


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_two_workers_see_each_example_once_per_epoch(one_and_two):
    root, logs = one_and_two
    assert "strategy: multi_worker (TF_CONFIG names 2 workers), 2 replica(s)" in logs["chief"]
    assert "strategy: default" in logs["one"]
    for log in ("chief", "worker"):
        assert "transfer: cached base features of 96 train and 64 eval images" in logs[log], logs[log]
    one, chief, worker = (counted(root / f"{n}.log") for n in ("one", "chief", "worker"))
    # 96 examples, global batch 16: 6 steps an epoch, 2 epochs a phase, on cached
    # features (the head) then on images (the classifier).
    assert sorted({m for m, _ in one}) == ["head", "xfer_mobilenet_v2"]
    assert set(one) == set(chief) == set(worker) and len(one) == 24
    for key in sorted(one):
        # Auto-sharding by data: each global batch of 16 is cut in two, 8 per worker;
        # together they are the very batch one worker trains on.
        assert len(chief[key]) == len(worker[key]) == 8 and len(one[key]) == 16, key
        np.testing.assert_allclose(sorted(chief[key] + worker[key]), sorted(one[key]), rtol=1e-3, err_msg=str(key))
    for model in ("head", "xfer_mobilenet_v2"):
        for epoch in range(2):
            both = [v for step in range(6 * epoch, 6 * epoch + 6) for v in chief[model, step] + worker[model, step]]
            # One worker's epoch is one pass over the 96 (a shuffle without repeat); the two
            # workers' epoch is the same multiset of examples: each seen once, none twice.
            alone = [v for step in range(6 * epoch, 6 * epoch + 6) for v in one[model, step]]
            assert len(both) == len(alone) == 96, (model, epoch)
            np.testing.assert_allclose(sorted(both), sorted(alone), rtol=1e-3, err_msg=str((model, epoch)))


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_two_workers_match_one_worker(one_and_two):
    root, logs = one_and_two
    one, two = history(root / "one" / "model_run" / "1"), history(root / "two" / "model_run" / "1")
    for phase in ("transfer", "fine_tune"):
        for key in ("loss", "val_loss"):
            assert len(one[phase][key]) == 2
            np.testing.assert_allclose(two[phase][key], one[phase][key], atol=LOSS_ATOL, err_msg=f"{phase} {key}")
        for key in ("accuracy", "val_accuracy"):
            np.testing.assert_allclose(two[phase][key], one[phase][key], atol=1e-6, err_msg=f"{phase} {key}")


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_only_the_chief_writes(one_and_two):
    root, logs = one_and_two
    # The chief's outputs are the one worker's, file for file (event files named by time).
    names = {"two": tree(root / "two"), "one": tree(root / "one")}
    strip = lambda paths: {p if "tfevents" not in p else os.path.dirname(p) for p in paths}  # noqa: E731
    assert strip(names["two"]) == strip(names["one"])
    assert "model_run/1/confusion_matrix.png" in names["two"] and "serving/1/saved_model.pb" in names["two"]
    assert any("model_run/1/logs/train/events.out.tfevents" in p for p in names["two"])
    assert not [p for p in names["two"] if "workertemp" in p or "worker-0" in p], names["two"]
    # The worker wrote its copies (TensorBoard logs, phase 1's weights) to a folder of its own, now gone.
    scratch = logs["worker"].split("this worker writes its copies to ")[1].split(",")[0]
    assert f"[xfer] worker-0: removed {scratch}" in logs["worker"] and not os.path.exists(scratch)
    assert "exported the SavedModel" not in logs["worker"] and "reports in" not in logs["worker"]
    assert "exported the SavedModel" in logs["chief"] and "reports in" in logs["chief"]
    assert not os.listdir(root / "two" / "model_run" / "_backup"), "backups removed once exported"


def serve_one(serving_dir: Path, png: bytes) -> np.ndarray:
    model = tf.saved_model.load(str(serving_dir))
    return model.signatures["serving_default"](images=tf.constant([png]))["probabilities"].numpy()


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_worker_killed_in_phase_2_restarts_and_both_resume(checked, tmp_path):
    # Phase 1 on images this time (cached features off).
    cfg = config(checked, transfer={"epochs": 1, "learning_rate": 0.01, "cache_features": "off"},
                 fine_tune={"enabled": True, "epochs": 2, "learning_rate": 1e-3, "fraction": 0.1})
    spec = _spec(fn_args(checked, tmp_path, cfg), tmp_path / "job.json")
    ports = free_ports(2)
    scratch = tmp_path / "tmpdir"  # the workers' TMPDIR: what a killed worker leaves there is seen
    scratch.mkdir()
    chief = start(spec, tmp_path / "chief.log", tf_config(ports, 0), scratch)
    worker = start(spec, tmp_path / "worker.log", tf_config(ports, 1), scratch)
    deadline = time.monotonic() + 600
    # Both have backed up phase 2's first epoch (the epoch line shows after the backup).
    while not all("[xfer] fine-tune epoch 2:" in (tmp_path / f"{n}.log").read_text() for n in ("chief", "worker")):
        assert worker.poll() is None and chief.poll() is None and time.monotonic() < deadline, \
            (tmp_path / "worker.log").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGKILL)  # preempted, phase 2 under way
    worker.wait()
    # The chief does not wait for its peer: its next collective fails ("Socket closed")
    # and run_fn fails, so a platform restarts the whole job (Vertex:
    # scheduling.restartJobOnWorkerRestart), as here: both, same TF_CONFIG.
    assert chief.wait(timeout=120) != 0
    assert "UnavailableError" in (tmp_path / "chief.log").read_text()
    assert not (tmp_path / "serving" / "1" / "saved_model.pb").exists()
    for log in ("chief", "worker"):
        (tmp_path / f"{log}.log").rename(tmp_path / f"{log}-before.log")
    assert [p.name for p in scratch.glob("xfer-worker-*")], "the killed worker's folder is there before the restart"
    procs = [start(spec, tmp_path / "chief.log", tf_config(ports, 0), scratch),
             start(spec, tmp_path / "worker.log", tf_config(ports, 1), scratch)]
    codes = wait_all(procs, 600)
    logs = {n: (tmp_path / f"{n}.log").read_text() for n in ("chief", "worker")}
    assert codes == [0, 0], logs
    for log in logs.values():
        assert "transfer: resumed: phase 1 finished before the interruption (1 epochs)" in log, log
        assert "transfer epoch" not in log and "fine-tune epoch 2:" not in log, log
        assert "fine-tune epoch 3:" in log, log
    # Resumed from the backup of epoch 2: only epoch 3's steps ran, 6 a worker.
    assert {m for m, _ in counted(tmp_path / "chief.log")} == {"xfer_mobilenet_v2"}
    assert sorted(s for _, s in counted(tmp_path / "chief.log")) == list(range(6, 12))
    h = history(tmp_path / "model_run" / "1")
    assert len(h["transfer"]["loss"]) == 1 and len(h["fine_tune"]["loss"]) == 2
    assert not os.listdir(tmp_path / "model_run" / "_backup"), "backups removed once exported"
    assert not list(scratch.glob("xfer-worker-*")), "the restarted worker removed its killed self's folder"
    probs = serve_one(tmp_path / "serving" / "1", checked["splits"]["eval"][0][1])
    assert probs.shape == (1, 10) and abs(probs.sum() - 1) < 1e-4 and np.isfinite(probs).all()


def test_lr_find_refuses_several_workers(monkeypatch):
    """lr-find is one process; with TF_CONFIG naming workers it stops before the strategy
    (which would wait for its peers) is built."""
    from settings_helpers import trainer_settings
    from xfer.components import lr_find
    monkeypatch.setenv("TF_CONFIG", tf_config([1, 2], 1))
    with pytest.raises(lr_find.LrFindError, match="lr-find runs in one process, but TF_CONFIG names 2 workers"):
        lr_find.find(trainer_settings(), None, "transfer")

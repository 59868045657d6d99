import os
import subprocess
import sys
from pathlib import Path

import pytest

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before any test imports TensorFlow)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CIFAR = SHARED / "data" / "cifar10_subset"
CONFIGS = Path(__file__).parent / "configs"
XFER = str(Path(sys.executable).parent / "xfer")


# The heaviest files first (`make test`'s --durations list): two xdist workers take a
# file at a time, and a long file begun last would leave one core idle at the end.
HEAVY_FIRST = ["test_lr_find.py", "test_docs.py", "test_multi_worker.py", "test_evaluate_push.py",
               "test_calibration_tflite.py", "test_served_versions.py", "test_insight.py", "test_canary.py",
               "test_predict_faults.py", "test_warm_start.py", "test_pipeline_local.py", "test_image_bombs.py",
               "test_class_imbalance.py", "test_ui_browser.py", "test_data_validation.py", "test_run_faults.py",
               "test_submit.py", "test_spans.py", "test_interrupts.py", "test_trainer_run.py", "test_compile.py",
               "test_kfp_conformance.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FIRST)))  # stable: the rest keep their order


def xfer(*args, cwd=None, check=True, env=None) -> subprocess.CompletedProcess:
    """Run the real `xfer` console script, as a user would (`env`: variables to add)."""
    proc = subprocess.run([XFER, *args], cwd=cwd or REPO, capture_output=True, text=True,
                          env={**os.environ, **env} if env else None)
    if check and proc.returncode != 0:
        raise AssertionError(f"xfer {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-5000:]}\n--- stderr\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def cifar():
    if not CIFAR.exists():
        pytest.skip(f"test data not found at {CIFAR}")
    return CIFAR


def read_examples(path: Path) -> list:
    import tensorflow as tf
    out = []
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        ex = tf.train.Example.FromString(raw)
        out.append({k: (list(v.bytes_list.value) or list(v.int64_list.value))
                    for k, v in ex.features.feature.items()})
    return out

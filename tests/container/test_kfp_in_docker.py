"""The compiled Kubeflow v2 pipeline, run step by step in containers of the project
image, as a KFP v2 launcher would run it (tests/container/kfp_harness.py), on the
CIFAR subset; ends with a pushed model that the host loads and calls.

Run by `make test-container` (not by `make test`): it builds a Debian base with
debootstrap, the image on it, and needs a Docker daemon, which the Makefile starts.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from kfp_harness import run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("XFER_TEST_IMAGE", "xfer:test")
CIFAR = REPO.parent / "shared" / "data" / "cifar10_subset"

pytestmark = pytest.mark.container


def _docker_ready() -> str:
    if not shutil.which("docker"):
        return "no docker client"
    if subprocess.run(["docker", "info"], capture_output=True).returncode:
        return "no Docker daemon answers"
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        return f"image {IMAGE} not built (make image-test builds it)"
    return ""


def test_compiled_pipeline_runs_in_the_image_and_pushes_a_servable_model(tmp_path):
    why = _docker_ready()
    if why:
        pytest.skip(why)
    import xfer.components  # noqa: F401
    import tensorflow as tf

    root = tmp_path / "pipeline_root"
    root.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(root, 0o777)
    serving = tmp_path / "serving"
    spec = tmp_path / "pipeline.json"
    subprocess.run([str(Path(sys.executable).parent / "xfer"), "compile",
                    "--config", str(REPO / "tests" / "configs" / "cifar_small.yaml"),
                    "--set", f"kubeflow.image={IMAGE}", "--set", f"pipeline_root={root}",
                    "--set", f"data.input_base={CIFAR}", "--set", f"data.labels_file={CIFAR / 'labels.txt'}",
                    "--set", f"push.destination={serving}", "--out", str(spec)], check=True, cwd=REPO)
    start = time.perf_counter()
    result = run(str(spec), str(root), IMAGE, mounts=[str(CIFAR), str(tmp_path)])
    print(f"[harness] whole pipeline in containers: {time.perf_counter() - start:.1f}s "
          f"({json.dumps({k: round(v, 1) for k, v in result['timings'].items()})})")
    blessing = result["artifacts"]["Evaluator"]["blessing"]
    assert blessing["metadata"].get("blessed") == 1, blessing
    versions = sorted(p.name for p in serving.iterdir() if not p.name.startswith("."))
    assert versions == ["1"], versions
    model = tf.saved_model.load(str(serving / "1"))
    png = next(iter(tf.data.TFRecordDataset(str(CIFAR / "test" / "cifar10_test.tfrecord")).as_numpy_iterator()))
    image = tf.train.Example.FromString(png).features.feature["image"].bytes_list.value[0]
    out = model.signatures["serving_default"](images=tf.constant([image]))
    assert out["probabilities"].shape == (1, 10)
    assert abs(float(out["probabilities"].numpy().sum()) - 1) < 1e-4

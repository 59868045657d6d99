"""Evaluate, bless, push, predict, on a model that really learns (digits, VGG16).

Run 1 is blessed and pushed as version 1. Run 2, made worse on purpose (almost no
training), fails the change threshold: not blessed, version 1 stays the latest. Run 3
trains exactly as run 1 (same seed; only `data.num_classes` spelled out, which changes
the Trainer's cache key and not its math) and is blessed and pushed as version 2.
"""
import io
import json
import shutil

import numpy as np
import pytest

from conftest import CONFIGS, read_examples, xfer
from xfer.pipeline.store import find_run, open_store
from xfer.pipeline.summary import summarize

# The module fixture runs several whole pipelines inside the first test's time budget.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
NAME = "xfer-digits-test"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits-run")
    config = ["--config", str(CONFIGS / "digits_learn.yaml"), "--set", f"root={root}",
              "--set", "push.tflite=true"]
    commands = {
        "good": config,
        "worse": [*config, "--set", "train.fine_tune.epochs=0", "--set", "train.transfer.epochs=1",
                  "--set", "train.steps_per_epoch=1"],
        "again": [*config, "--set", "data.num_classes=10"],
    }
    out, ids = {}, {}
    for what, args in commands.items():
        out[what] = xfer("run", *args).stdout
        ids[what] = find_run(open_store(str(root / "metadata.sqlite")), NAME).name
    yield {"root": root, "config": config, "out": out, "ids": ids}
    shutil.rmtree(root, ignore_errors=True)


def summary_of(runs, what):
    """The summary of the run that the command `what` made."""
    return summarize(str(runs["root"] / "metadata.sqlite"), NAME, runs["ids"][what])


def test_first_run_blessed_on_value_thresholds_alone_and_pushed_as_version_1(runs):
    good = summary_of(runs, "good")
    assert good.blessing.blessed and good.blessing.baseline is None
    assert good.pushed_version == "1" and good.pushed_new
    assert good.pushed_to == str(runs["root"] / "serving" / "1")
    assert good.blessing.candidate > 0.5, "the model must really learn, or threshold tests are noise"
    out = runs["out"]["good"]
    assert "BLESSED: every threshold passed (no served model to compare with: judged on value thresholds alone)" in out, out
    assert "not applied: no served model to compare with" in out
    assert f"pushed to: {good.pushed_to} (version 1)" in out


def test_worse_model_fails_the_change_threshold_and_pushes_nothing(runs):
    worse = summary_of(runs, "worse").blessing
    assert not worse.blessed and worse.change_failed and not worse.value_failed
    assert worse.baseline - worse.candidate > 0.1  # the drop beyond max_drop
    assert summary_of(runs, "worse").pushed_to is None
    out = runs["out"]["worse"]
    assert "NOT BLESSED" in out and "pushed: nothing" in out, out
    row = next(line for line in out.splitlines() if "eval.max_drop" in line)
    assert f"{worse.candidate:.4f}" in row and f"{worse.baseline:.4f}" in row and "FAIL" in row, row
    assert "sparse_categorical_accuracy change" in out
    from xfer.components.pusher import complete_versions
    assert complete_versions(str(runs["root"] / "serving")) == [1, 2]  # v2 comes from run 3


def test_as_good_a_model_is_blessed_and_pushed_as_version_2(runs):
    again = summary_of(runs, "again")
    assert again.blessing.blessed and again.blessing.baseline is not None
    assert again.pushed_version == "2" and again.pushed_new
    out = runs["out"]["again"]
    assert "\nBLESSED: every threshold passed" in out, out
    assert "(version 2)" in out, out


def test_rerun_with_cached_trainer_creates_no_new_version(runs):
    out = xfer("run", *runs["config"], "--set", "data.num_classes=10").stdout
    rerun = summarize(str(runs["root"] / "metadata.sqlite"), NAME)
    assert rerun.states["Trainer"] == "cached"
    assert rerun.pushed_version == "2" and not rerun.pushed_new
    assert "no new version; this model is already version 2" in out, out
    from xfer.components.pusher import complete_versions
    assert complete_versions(str(runs["root"] / "serving")) == [1, 2]


def test_blessing_report_is_kept_with_the_run(runs):
    for what, run_id in runs["ids"].items():
        out = runs["out"][what]
        shown = out[out.index(f"run {run_id}\n"):out.index("\nblessing report: ")]
        kept = runs["root"] / "reports" / run_id.replace(":", "-") / "blessing.txt"
        assert f"blessing report: {kept}" in out
        assert kept.read_text() == shown + "\n"  # what the user saw, as it was
    worse = runs["out"]["worse"]
    assert "eval.max_drop" in worse and "FAIL" in worse


def test_predict_on_png_and_jpeg_matches_the_saved_model(runs, tmp_path):
    import tensorflow as tf
    from PIL import Image

    examples = read_examples(runs["root"] / "data" / "digits" / "eval" / "digits.tfrecord")[:4]
    files = []
    for i, ex in enumerate(examples):
        png = tmp_path / f"digit{i}.png"
        png.write_bytes(ex["image"][0])
        files.append(str(png))
        jpg = tmp_path / f"digit{i}.jpg"
        Image.open(io.BytesIO(ex["image"][0])).convert("RGB").save(jpg, format="JPEG", quality=95)
        files.append(str(jpg))
    (tmp_path / "notes.png").write_text("not an image")
    args = [str(runs["root"] / "serving"), *files, str(tmp_path / "missing.jpg"),
            str(tmp_path / "notes.png"), "--top-k", "2", "--json"]
    got = json.loads(xfer("predict", *args).stdout)
    assert len(got) == len(files) + 2
    assert "cannot read file" in got[-2]["error"]
    assert got[-1]["error"] == "not a decodable JPEG, PNG, GIF or BMP image", got[-1]
    model = tf.saved_model.load(str(runs["root"] / "serving" / "2"))
    for path, result in zip(files, got):
        want = model.signatures["serving_default"](images=tf.constant([open(path, "rb").read()]))
        probs = want["probabilities"].numpy()[0]
        assert result["top"][0]["class"] == want["class_name"].numpy()[0].decode()
        np.testing.assert_allclose(result["top"][0]["probability"], probs.max(), rtol=1e-5)
        assert len(result["top"]) == 2
    lines = xfer("predict", str(runs["root"] / "serving"), files[0], str(tmp_path / "missing.jpg"),
                 check=False).stdout.splitlines()
    assert len(lines) == 2 and lines[1].endswith("cannot read file: No such file or directory")


def test_tflite_export_matches_the_saved_model(runs):
    import tensorflow as tf

    from xfer.components.transform import decode_images

    version = runs["root"] / "serving" / "2"
    tflite = version / "assets.extra" / "model.tflite"
    assert tflite.exists() and (version / "assets.extra" / "labels.txt").read_text().split() == \
        [str(d) for d in range(10)]
    model = tf.saved_model.load(str(version))
    interpreter = tf.lite.Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    examples = read_examples(runs["root"] / "data" / "digits" / "eval" / "digits.tfrecord")[:5]
    for ex in examples:
        png = ex["image"][0]
        interpreter.set_tensor(inp["index"], decode_images(tf.constant([png]), 32).numpy())
        interpreter.invoke()
        want = model.signatures["serving_default"](images=tf.constant([png]))["probabilities"].numpy()
        np.testing.assert_allclose(interpreter.get_tensor(out["index"]), want, atol=1e-4)

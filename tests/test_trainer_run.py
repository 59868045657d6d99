"""The Trainer's run_fn on real images (scikit-learn's digits as PNG TFRecords) with a
real transform graph: cached vs uncached phase 1, early stopping, resume after a kill,
MirroredStrategy on two logical CPUs, augmentation, export, reports."""
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs

from settings_helpers import make_config, small_model
from xfer.components import augment, inputs, keras_setup, reports  # noqa: F401  (keras_setup: as in the Trainer)
from xfer.components.settings import AugmentConfig
from xfer.components.transform import preprocessing_fn
from xfer.pipeline.data.digits import digits_pngs
from xfer.pipeline.data.records import image_example

HERE = Path(__file__).parent
SIZE = 32


def _example(png, label):
    return image_example(png, label)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """96 train and 64 eval real digit scans, gzip TFRecords as ImportExampleGen writes
    them, and the transform graph Transform would write for them."""
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    root = tmp_path_factory.mktemp("trainer-data")
    digits = list(digits_pngs())
    splits = {"train": digits[:96], "eval": digits[96:160]}
    for split, items in splits.items():
        (root / split).mkdir()
        with tf.io.TFRecordWriter(str(root / split / "data.gz"), options="GZIP") as w:
            for _, png, label in items:
                w.write(_example(png, label))
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    step = make_config(model=small_model(image_size=SIZE).model_dump()).transform_settings("test").model_dump()
    raw = [{"image": png, "label": label} for _, png, label in splits["train"][:8]]
    import apache_beam as beam
    with beam.Pipeline(argv=[]) as p, tft_beam.Context(temp_dir=str(root / "tft-tmp")):
        transform_fn = ((p | beam.Create(raw), metadata)
                        | tft_beam.AnalyzeDataset(lambda x: preprocessing_fn(x, step)))
        _ = transform_fn | tft_beam.WriteTransformFn(str(root / "transform"))
    # TFX's Transform also writes the raw metadata beside the graph; the Trainer reads it.
    from tensorflow_transform.tf_metadata import metadata_io
    metadata_io.write_metadata(metadata, str(root / "transform" / "metadata"))
    return {"root": root, "train": [str(root / "train" / "*")], "eval": [str(root / "eval" / "*")],
            "transform": str(root / "transform"), "splits": splits}


def trainer_config(data, **train) -> dict:
    """The Trainer's custom_config: a small, quick run over the schema's defaults; `train`
    sections given replace these."""
    config = make_config(
        data={"input_base": str(data["root"]), "splits": {"train": "train/*", "eval": "eval/*"},
              "num_classes": 10},
        model=small_model(image_size=SIZE, head={"dense": [16]}).model_dump(),
        train={"batch_size": 16, "seed": 3, "reports": False, "resume": False,
               "transfer": {"epochs": 2, "learning_rate": 0.01}, "fine_tune": {"enabled": False}, **train})
    return config.trainer_settings(code_fingerprint="test").model_dump(mode="json")


def fn_args(data, out: Path, cfg, run="1") -> FnArgs:
    return FnArgs(train_files=data["train"], eval_files=data["eval"],
                  transform_graph_path=data["transform"],
                  serving_model_dir=str(out / "serving" / run), model_run_dir=str(out / "model_run" / run),
                  custom_config=cfg)


def head_weights(serving_dir):
    model = tf.keras.models.load_model(serving_dir, compile=False)
    return {w.name: w.numpy() for w in model.trainable_weights}, model


@pytest.mark.integration
def test_cached_and_uncached_phase1_give_the_same_head(data, tmp_path, capsys):
    from xfer.components.trainer import run_fn
    # SGD: Adam divides by the root of tiny second moments, amplifying float rounding
    # (features computed in other batch sizes) to ~1e-4 in a few steps; SGD shows the
    # two paths take the same steps on the same batches.
    for mode in ("on", "off"):
        run_fn(fn_args(data, tmp_path / mode, trainer_config(data, transfer={
            "epochs": 3, "learning_rate": 0.05, "optimizer": "sgd", "cache_features": mode})))
    out = capsys.readouterr().out
    assert out.count("transfer: cached base features of 96 train and 64 eval images") == 1, out
    # The default steps_per_execution (auto) reads nothing to size an epoch: without
    # DataCheck's counts it runs one batch per call.
    assert out.count("steps_per_execution auto: 1 (no DataCheck counts beside ") == 2, out
    cached, _ = head_weights(str(tmp_path / "on" / "serving" / "1"))
    plain, _ = head_weights(str(tmp_path / "off" / "serving" / "1"))
    assert set(cached) == set(plain) and {n.split("/")[0] for n in cached} == {"head_dense_0", "probabilities"}
    for name in cached:
        np.testing.assert_allclose(cached[name], plain[name], atol=1e-5, err_msg=name)
    losses = [json.load(open(tmp_path / m / "model_run" / "1" / "history.json"))["history"]["transfer"]["loss"]
              for m in ("on", "off")]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert losses[0][-1] < losses[0][0], "the head must actually have trained"


@pytest.mark.integration
def test_early_stopping_ends_phase1_and_phase2_continues_its_timeline(data, tmp_path, capsys):
    from xfer.components.trainer import run_fn
    stop = {"monitor": "val_loss", "patience": 0, "min_delta": 100.0}
    args = fn_args(data, tmp_path, trainer_config(
        data, reports=True,
        transfer={"epochs": 6, "learning_rate": 0.01, "early_stopping": stop},
        fine_tune={"enabled": True, "epochs": 1, "learning_rate": 1e-4, "fraction": 0.1}))
    run_fn(args)
    out = capsys.readouterr().out
    # epoch 1 sets the best; epoch 2 cannot improve by 100, so phase 1 stops there
    assert "transfer epoch 2:" in out and "transfer epoch 3:" not in out, out
    assert "fine-tune epoch 3:" in out, out
    history = json.load(open(os.path.join(args.model_run_dir, "history.json")))["history"]
    assert len(history["transfer"]["loss"]) == 2 and len(history["fine_tune"]["loss"]) == 1
    # what the user sees: PNGs and TensorBoard logs with the model run
    for name in reports.PNGS:
        with Image.open(os.path.join(args.model_run_dir, name)) as img:
            assert img.format == "PNG" and img.size[0] > 200
    events = tf.io.gfile.glob(os.path.join(args.model_run_dir, "logs", "*", "events.out.tfevents.*"))
    assert events, "TensorBoard logs"


def as_data_check_wrote(data, root: Path) -> dict:
    """The same records laid out as DataCheck's output artifact: Split-<name> folders and
    its label_counts.json beside them."""
    import shutil
    counts = {}
    for split in ("train", "eval"):
        (root / f"Split-{split}").mkdir(parents=True)
        shutil.copy(data["root"] / split / "data.gz", root / f"Split-{split}" / "data.gz")
        for _, _, label in data["splits"][split]:
            counts.setdefault(split, {}).setdefault(str(label), 0)
            counts[split][str(label)] += 1
    (root / "label_counts.json").write_text(json.dumps(counts))
    return {**data, "train": [str(root / "Split-train" / "*")], "eval": [str(root / "Split-eval" / "*")]}


@pytest.mark.integration
@pytest.mark.parametrize("setting, layout, line", [
    # Examples not from DataCheck (no counts beside them): a number counts them in one read.
    (4, "plain", "steps_per_execution 4: 96 train / 64 eval examples (counted), 6 steps an epoch, 4 eval steps"),
    # The default: DataCheck's counts size the epoch, nothing is read; 6 steps an epoch
    # caps the execution at 6, and Keras cuts the last eval execution to the 4 eval steps.
    ("auto", "data_check", "steps_per_execution 6 (auto): 96 train / 64 eval examples (DataCheck's counts), "
                           "6 steps an epoch, 4 eval steps"),
])
def test_steps_per_execution_trains_every_batch_and_validates_on_every_eval_example(
        data, tmp_path, capsys, setting, layout, line):
    """Keras cannot size a TFRecord dataset, and with steps_per_execution > 1 it must.
    96 train / 16 = 6 steps an epoch, 64 eval = 4 eval steps."""
    from xfer.components.trainer import run_fn
    if layout == "data_check":
        data = as_data_check_wrote(data, tmp_path / "checked")
    args = fn_args(data, tmp_path, trainer_config(
        data, steps_per_execution=setting, transfer={"epochs": 2, "learning_rate": 0.01},
        fine_tune={"enabled": True, "epochs": 2, "learning_rate": 1e-3, "fraction": 0.1}))
    run_fn(args)
    out = capsys.readouterr().out
    assert line in out, out
    assert "fine-tune epoch 4:" in out and "fine-tune epoch 5:" not in out, out
    history = json.load(open(os.path.join(args.model_run_dir, "history.json")))["history"]
    assert len(history["transfer"]["loss"]) == 2 and len(history["fine_tune"]["loss"]) == 2
    # The last validation ran on all 64 eval images with the exported weights.
    model = tf.keras.models.load_model(args.serving_model_dir, compile=False)
    tft_output = tft.TFTransformOutput(data["transform"])
    correct = total = 0
    for x, y in inputs.make_dataset(data["eval"], tft_output, batch_size=64, training=False, seed=0,
                                    drop_remainder=False):
        correct += int((np.argmax(model(x).numpy(), axis=1) == y.numpy()).sum())
        total += int(y.shape[0])
    assert total == 64
    assert history["fine_tune"]["val_accuracy"][-1] == pytest.approx(correct / total, abs=1e-6)


def _job(spec_path, *extra):
    return subprocess.Popen([sys.executable, str(HERE / "trainer_job.py"), str(spec_path), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(HERE.parent), start_new_session=True)


def _spec(args: FnArgs, path: Path) -> Path:
    path.write_text(json.dumps({k: getattr(args, k) for k in (
        "train_files", "eval_files", "transform_graph_path", "serving_model_dir", "model_run_dir",
        "custom_config")}))
    return path


@pytest.mark.integration
def test_killed_trainer_resumes_from_its_last_epoch(data, tmp_path):
    cfg = trainer_config(data, resume=True, transfer={"epochs": 2, "learning_rate": 0.01},
                         fine_tune={"enabled": True, "epochs": 3, "learning_rate": 1e-3, "fraction": 0.1})
    first = _job(_spec(fn_args(data, tmp_path, cfg, run="1"), tmp_path / "1.json"))
    seen = []
    for line in first.stdout:
        seen.append(line)
        if line.startswith("[xfer] fine-tune epoch 3:"):
            os.killpg(first.pid, signal.SIGKILL)  # preempted, right after an epoch
            break
    first.wait()
    assert first.returncode == -signal.SIGKILL, "".join(seen)
    assert not os.path.exists(tmp_path / "serving" / "1" / "saved_model.pb")

    # The re-run is a new execution with new output folders, as a pipeline re-run is.
    args = fn_args(data, tmp_path, cfg, run="2")
    second = _job(_spec(args, tmp_path / "2.json"))
    out = second.communicate()[0]
    assert second.returncode == 0, out
    assert "transfer: resumed: phase 1 finished before the interruption (2 epochs)" in out, out
    assert "transfer epoch" not in out and "fine-tune epoch 3:" not in out, out
    assert "fine-tune epoch 4:" in out and "fine-tune epoch 5:" in out, out
    history = json.load(open(os.path.join(args.model_run_dir, "history.json")))["history"]
    assert len(history["transfer"]["loss"]) == 2 and len(history["fine_tune"]["loss"]) == 3
    assert not os.listdir(tmp_path / "model_run" / "_backup"), "backup removed once exported"
    model = tf.saved_model.load(args.serving_model_dir)
    png = data["splits"]["eval"][0][1]
    probs = model.signatures["serving_default"](images=tf.constant([png]))["probabilities"].numpy()
    assert probs.shape == (1, 10) and abs(probs.sum() - 1) < 1e-4 and np.isfinite(probs).all()


@pytest.mark.integration
def test_mirrored_strategy_on_two_logical_cpus(data, tmp_path):
    cfg = trainer_config(data, strategy="mirrored", devices=["/cpu:0", "/cpu:1"],
                         transfer={"epochs": 1, "learning_rate": 0.01, "cache_features": "off"},
                         fine_tune={"enabled": True, "epochs": 1, "learning_rate": 1e-4, "fraction": 0.1})
    args = fn_args(data, tmp_path, cfg)
    job = _job(_spec(args, tmp_path / "job.json"), "--logical-cpus", "2")
    out = job.communicate()[0]
    assert job.returncode == 0, out
    assert "strategy: mirrored (devices /cpu:0, /cpu:1), 2 replica(s)" in out, out
    assert "fine-tune epoch 2:" in out
    model = tf.saved_model.load(args.serving_model_dir)
    probs = model.signatures["serving_default"](
        images=tf.constant([data["splits"]["eval"][0][1]]))["probabilities"].numpy()
    assert probs.shape == (1, 10) and np.isfinite(probs).all()


def _encoded(fmt, mode="RGB", size=(45, 30)):
    from sklearn.datasets import load_sample_image
    img = Image.fromarray(load_sample_image("china.jpg")).resize(size).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.integration
def test_serving_on_raw_bytes_equals_keras_on_transformed_tensor(data, tmp_path):
    from xfer.components.trainer import run_fn
    args = fn_args(data, tmp_path, trainer_config(data, transfer={"epochs": 1, "learning_rate": 0.01}))
    run_fn(args)
    raw = [_encoded("JPEG"), _encoded("PNG", "L", (20, 50)), _encoded("PNG", "RGBA"),
           data["splits"]["eval"][0][1]]
    served = tf.saved_model.load(args.serving_model_dir).signatures["serving_default"](
        images=tf.constant(raw))
    transformed = tft.TFTransformOutput(data["transform"]).transform_raw_features(
        {"image": tf.constant(raw)}, drop_unused_features=True)["image"]
    keras_model = tf.keras.models.load_model(args.serving_model_dir, compile=False)
    np.testing.assert_allclose(served["probabilities"].numpy(), keras_model(transformed).numpy(), atol=1e-5)
    assert served["class_name"].numpy().tolist() == [
        str(i).encode() for i in served["class_id"].numpy()]


@pytest.mark.integration
def test_augmentation_changes_training_images_every_epoch_never_eval(data):
    tft_output = tft.TFTransformOutput(data["transform"])
    aug = augment.build_augmenter(AugmentConfig(horizontal_flip=True, rotation=0.11, zoom=0.2, translation=0.2),
                                  seed=5)
    common = dict(batch_size=8, seed=5, shuffle_buffer=1, augmenter=aug)  # buffer 1: same order
    train = inputs.make_dataset(data["train"], tft_output, training=True, **common)
    first, second = [next(iter(train))[0].numpy() for _ in range(2)]  # epoch 1, epoch 2
    plain = inputs.make_dataset(data["train"], tft_output, training=False, **common)
    clean = next(iter(plain))[0].numpy()
    assert not np.allclose(first, second), "the same training images must differ between epochs"
    assert not np.allclose(first, clean)
    evals = [next(iter(inputs.make_dataset(data["eval"], tft_output, training=False, **common)))[0].numpy()
             for _ in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])  # eval: never augmented
    direct = tft_output.transform_raw_features(
        {"image": tf.constant([png for _, png, _ in data["splits"]["eval"][:8]])},
        drop_unused_features=True)["image"].numpy()
    np.testing.assert_allclose(evals[0], direct, atol=1e-5)

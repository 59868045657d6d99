"""The Trainer's parts that need no data: strategy selection (with a fake TPU resolver),
mixed precision, reports, early stopping and the settings it reads."""
import json

import numpy as np
import pytest

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from xfer.components import keras_setup  # noqa: F401  (a model is fit here, as in the Trainer)

from settings_helpers import small_model
from xfer.components import reports, strategy
from xfer.components.settings import EarlyStoppingConfig
from xfer.pipeline.config import ConfigError, load_config, validate


def test_cache_features_on_off_from_the_command_line():
    assert load_config("demo", ["train.transfer.cache_features=on"]).train.transfer.cache_features == "on"
    assert load_config("demo", ["train.transfer.cache_features=off"]).train.transfer.cache_features == "off"


def test_cache_on_with_augmentation_is_a_config_error():
    with pytest.raises(ConfigError, match="cache_features is 'on' but train.augment is set"):
        validate({"data": {"builtin": "digits"}, "train": {"transfer": {"cache_features": "on"},
                                                           "augment": {"horizontal_flip": True}}})


def test_early_stopping_from_typed_settings():
    from xfer.components.trainer import early_stopping_callbacks
    assert early_stopping_callbacks(None) == []
    (cb,) = early_stopping_callbacks(EarlyStoppingConfig(monitor="val_accuracy", patience=4, min_delta=0.01))
    assert (cb.monitor, cb.patience, cb.restore_best_weights) == ("val_accuracy", 4, True)
    assert abs(cb.min_delta) == pytest.approx(0.01)


def test_confusion_matrix_counts():
    m = reports.confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert m.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


class FakeResolver:
    """Stands in for TPUClusterResolver: records what it is asked, knows one TPU."""
    asked = []

    def __init__(self, tpu=None):
        FakeResolver.asked.append(tpu)
        if tpu is None:
            raise ValueError("Please provide a TPU Name to connect to.")  # as TF says off-TPU
        self.tpu = tpu

    def master(self):
        return f"grpc://10.0.0.2:8470" if self.tpu == "my-tpu" else ""


def test_tpu_chosen_when_configured_with_what_the_resolver_is_asked():
    FakeResolver.asked.clear()
    calls = []
    chosen = strategy.choose("auto", tpu="my-tpu", env={}, resolver_factory=FakeResolver,
                             connect=lambda r: calls.append(("connect", r.tpu)),
                             initialize=lambda r: calls.append(("initialize", r.tpu)),
                             tpu_strategy=lambda r: ("TPUStrategy", r.tpu))
    assert FakeResolver.asked == ["my-tpu"]
    assert calls == [("connect", "my-tpu"), ("initialize", "my-tpu")]
    assert chosen.kind == "tpu" and chosen.strategy == ("TPUStrategy", "my-tpu")
    assert strategy.precision_policy("auto", "tpu") == "mixed_bfloat16"


def test_auto_without_tpu_workers_or_gpus_is_default_and_tpu_demanded_is_an_error():
    FakeResolver.asked.clear()
    chosen = strategy.choose("auto", env={}, resolver_factory=FakeResolver)
    assert FakeResolver.asked == [None] and chosen.kind == "default" and chosen.replicas == 1
    assert strategy.precision_policy("auto", "default") == "float32"
    with pytest.raises(ValueError, match="train.strategy is tpu but no TPU was found"):
        strategy.choose("tpu", env={}, resolver_factory=FakeResolver)


def test_auto_decisions():
    assert strategy.decide("auto", tpu_found=False, workers=3, gpus=0) == "multi_worker"
    assert strategy.decide("auto", tpu_found=False, workers=0, gpus=4) == "mirrored"
    assert strategy.decide("auto", tpu_found=True, workers=3, gpus=4) == "tpu"
    assert strategy.decide("auto", tpu_found=False, workers=1, gpus=1) == "default"
    assert strategy.decide("mirrored", tpu_found=False, workers=0, gpus=0) == "mirrored"
    tf_config = json.dumps({"cluster": {"worker": ["a:1", "b:1"], "chief": ["c:1"]}})
    assert strategy._workers_in_tf_config({"TF_CONFIG": tf_config}) == 3


def test_an_unknown_strategy_names_the_configs_choices():
    with pytest.raises(ValueError, match="'gpu' is not one of auto, tpu, multi_worker, mirrored, default"):
        strategy.decide("gpu", tpu_found=False, workers=0, gpus=0)


def test_mixed_bfloat16_keeps_the_output_float32_and_trains():
    from xfer.components.model import build_model, compile_for
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model, _ = build_model(small_model(head={"dense": [8]}), 3)
        compile_for(model, "adam", 1e-3, steps_per_execution=2)
        assert model.get_layer("head_dense_0").compute_dtype == "bfloat16"
        assert model.output.dtype == tf.float32
        assert all(w.dtype == tf.float32 for w in model.trainable_weights)
        x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
        h = model.fit(x, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
        assert np.isfinite(h.history["loss"][0])
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_offline_imagenet_names_the_fetch_command(tmp_path, monkeypatch):
    import socket
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
        pytest.skip("storage.googleapis.com is reachable here: weights would download")
    except OSError:
        pass
    from xfer.components.backbones import WeightsUnavailable, build_base
    with pytest.raises(WeightsUnavailable, match=r"xfer weights fetch --backbone vgg16"):
        build_base("vgg16", 32, "imagenet")


def _examples(root, counts: dict, records: dict):
    """An Examples folder as DataCheck writes it: Split-<name>/ of GZIP TFRecords, with or
    without label_counts.json beside them."""
    from xfer.components.data_check import LABEL_COUNTS
    for split, n in records.items():
        (root / f"Split-{split}").mkdir(parents=True)
        with tf.io.TFRecordWriter(str(root / f"Split-{split}" / "data.gz"), options="GZIP") as w:
            for _ in range(n):
                w.write(b"x")
    if counts:
        (root / LABEL_COUNTS).write_text(json.dumps(counts))
    return [str(root / "Split-train" / "*")], [str(root / "Split-eval" / "*")]


def test_epochs_are_sized_from_datachecks_counts_without_reading_the_records(tmp_path, monkeypatch):
    from types import SimpleNamespace
    from xfer.components import inputs
    from xfer.components.trainer import examples_per_split
    train, evals = _examples(tmp_path / "a", {"train": {"0": 70, "1": 30}, "eval": {"0": 9, "1": 11}},
                             {"train": 3, "eval": 2})
    monkeypatch.setattr(inputs, "count_records", lambda p: pytest.fail(f"read the records of {p}"))
    assert examples_per_split(SimpleNamespace(train_files=train, eval_files=evals)) == ((100, 20), "DataCheck's counts")
    monkeypatch.undo()
    # Examples not from DataCheck (no counts beside them): the records are counted.
    train, evals = _examples(tmp_path / "b", {}, {"train": 3, "eval": 2})
    assert examples_per_split(SimpleNamespace(train_files=train, eval_files=evals)) == ((3, 2), "counted")

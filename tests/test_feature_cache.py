"""Phase 1's feature extraction: the frozen-graph extractor gives the Keras model's own
features, for any batch size, and falls back to the plain function where it must; and
the input pipeline's datasets run without tf.data's autotuner."""
import numpy as np
import pytest

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from settings_helpers import small_model
from xfer.components import feature_cache, inputs
from xfer.components.model import build_model, split_at_pool


@pytest.fixture(scope="module")
def features_model():
    tf.keras.utils.set_random_seed(7)
    classifier, base = build_model(small_model("mobilenet_v2", image_size=32), 3)
    # A fresh base has moving means 0 and variances 1, so its batch norms are nearly the
    # identity; give them real statistics, so a wrongly folded batch norm shows.
    rng = np.random.default_rng(0)
    for layer in base.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(rng.normal(0, 0.5, mean.shape).astype(np.float32))
            var.assign(rng.uniform(0.5, 2.0, var.shape).astype(np.float32))
    return split_at_pool(classifier)[0]


@pytest.mark.parametrize("freeze", [True, False])
def test_extractor_gives_the_keras_features_for_any_batch(features_model, freeze):
    predict = feature_cache.extractor(features_model, freeze=freeze)
    x = np.random.default_rng(1).uniform(0, 255, (67, 32, 32, 3)).astype(np.float32)
    want = features_model(x, training=False).numpy()
    assert np.abs(want).mean() > 1e-3, "the features must not be all near zero"
    # one image, an odd batch, and a large one: one function for every batch size
    got = np.concatenate([predict(tf.constant(x[:1])).numpy(), predict(tf.constant(x[1:4])).numpy(),
                          predict(tf.constant(x[4:])).numpy()])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_extractor_freezes_unless_told_not_to_or_too_large(features_model, monkeypatch):
    assert not isinstance(feature_cache.extractor(features_model, freeze=True), tf.types.experimental.GenericFunction)
    assert isinstance(feature_cache.extractor(features_model, freeze=False), tf.types.experimental.GenericFunction)
    # a base larger than a graph may hold keeps its variables
    monkeypatch.setattr(feature_cache, "FREEZE_MAX_BYTES", 1000)
    assert isinstance(feature_cache.extractor(features_model, freeze=True), tf.types.experimental.GenericFunction)


def test_extract_keeps_the_order_and_every_example(features_model):
    predict = feature_cache.extractor(features_model)
    x = np.random.default_rng(2).uniform(0, 255, (70, 32, 32, 3)).astype(np.float32)
    y = np.arange(70)
    feats, labels = feature_cache.extract(predict, tf.data.Dataset.from_tensor_slices((x, y)).batch(64))
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_allclose(feats, features_model(x, training=False).numpy(), rtol=1e-4, atol=1e-4)


def test_input_datasets_run_without_the_autotuner():
    ds = inputs.finish(tf.data.Dataset.range(10).batch(4))
    assert ds.options().autotune.enabled is False
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    assert [len(b) for b in ds] == [4, 4, 2]

"""Backbones and the two phases: which layers train, and where normalization lives."""
import numpy as np
import pytest

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from settings_helpers import small_model
from xfer.components.model import build_model, freeze_base, unfreeze_top
from xfer.components.settings import BACKBONES
from xfer.pipeline.config import ConfigError, load_config

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
EXPECTED_NORMALIZATION = {
    "caffe": lambda x: x[..., ::-1] - CAFFE_MEAN_BGR,
    "tf": lambda x: x / 127.5 - 1.0,
    "none": lambda x: x,
}


def trainable_layers(model):
    names = set()
    for v in model.trainable_variables:
        names.add(v.name.split("/")[0])
    return names


def test_size_below_backbone_minimum_is_a_config_error():
    with pytest.raises(ConfigError, match="image_size 24 is below vgg16's minimum of 32 px"):
        load_config("demo", ["model.image_size=24"])


def test_vgg16_phase1_trains_only_the_head_phase2_from_block5_conv1():
    model, base = build_model(small_model("vgg16", head={"dense": [16]}), 3)
    freeze_base(base)
    assert trainable_layers(model) == {"head_dense_0", "probabilities"}
    unfrozen = unfreeze_top(base, "block5_conv1", 0.2)
    assert unfrozen == ["block5_conv1", "block5_conv2", "block5_conv3"]
    assert trainable_layers(model) == {"block5_conv1", "block5_conv2", "block5_conv3",
                                       "head_dense_0", "probabilities"}


def test_efficientnet_batchnorm_never_trains():
    model, base = build_model(small_model("efficientnet_b0"), 4)
    unfreeze_top(base, None, 1.0)  # unfreeze everything that may be unfrozen
    bn = [l for l in base.layers if isinstance(l, tf.keras.layers.BatchNormalization)]
    assert bn and not any(l.trainable_weights for l in bn)
    assert any(l.trainable_weights for l in base.layers if "conv" in l.name)


def test_unknown_from_layer_lists_layers():
    _, base = build_model(small_model("vgg16"), 2)
    with pytest.raises(ValueError, match="'block9_conv1' is not a layer of vgg16.*block5_conv1"):
        unfreeze_top(base, "block9_conv1", 0.2)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_registered_backbone_builds_at_its_minimum_size_and_owns_its_normalization(name):
    spec = BACKBONES[name]
    model, _ = build_model(small_model(name, spec.min_size), 2)
    assert model.input_shape == (None, spec.min_size, spec.min_size, 3)
    x = np.random.default_rng(0).uniform(0, 255, (2, spec.min_size, spec.min_size, 3)).astype(np.float32)
    normalized = model.get_layer("normalize")(x).numpy()
    np.testing.assert_allclose(normalized, EXPECTED_NORMALIZATION[spec.normalization](x), rtol=1e-5, atol=1e-4)
    assert model(x).shape == (2, 2)


RUSSIAN_HEAD = {"conv": {"filters": 7, "kernel": 7}, "pooling": "avg", "pool_dropout": 0.2, "dense": [512]}


def test_the_russian_head_is_built_as_the_tutorial_s():
    """EfficientNetB0 at 224 px: Conv2D(7, 7) on the 7 x 7 x 1280 map, BN, GAP, Dropout 0.2,
    Dense 512, softmax."""
    model, base = build_model(small_model("efficientnet_b0", 224, head=RUSSIAN_HEAD), 10)
    chain = [l.name for l in model.layers]
    assert chain[chain.index(base.name):] == [base.name, "head_conv", "head_conv_bn", "pool", "head_pool_dropout",
                                              "head_dense_0", "probabilities"]
    conv = model.get_layer("head_conv")
    assert conv.output_shape == (None, 1, 1, 7) and conv.kernel.shape == (7, 7, 1280, 7)
    assert model.get_layer("head_pool_dropout").rate == 0.2 and model.get_layer("head_dense_0").units == 512


def test_a_conv_head_trains_its_batchnorm_in_phase_1_and_keeps_the_base_s_frozen():
    """The same head at 96 px (a 3 x 3 map, kernel 3), for time: one phase-1 training step
    (eager: tracing EfficientNet for fit costs most of a minute) moves the head's weights and
    its BatchNorm's moving statistics, and nothing of the base (weights or BN statistics)."""
    from xfer.components.model import split_at_pool

    head = {**RUSSIAN_HEAD, "conv": {"filters": 7, "kernel": 3}}
    model, base = build_model(small_model("efficientnet_b0", 96, head=head), 10)
    freeze_base(base)
    assert trainable_layers(model) == {"head_conv", "head_conv_bn", "head_dense_0", "probabilities"}
    bn = model.get_layer("head_conv_bn")
    base_bn = [l for l in base.layers if isinstance(l, tf.keras.layers.BatchNormalization)]
    before = bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()
    base_before = [w.numpy().copy() for w in base.weights]
    conv_before = model.get_layer("head_conv").kernel.numpy().copy()
    x = np.random.default_rng(0).uniform(0, 255, (4, 96, 96, 3)).astype(np.float32)
    with tf.GradientTape() as tape:  # what fit's train step does, training=True
        loss = tf.keras.losses.sparse_categorical_crossentropy([0, 1, 2, 3], model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    tf.keras.optimizers.Adam(1e-3).apply_gradients(zip(grads, model.trainable_variables))
    assert not np.array_equal(model.get_layer("head_conv").kernel.numpy(), conv_before)
    assert not np.allclose(bn.moving_mean.numpy(), before[0]) and not np.allclose(bn.moving_variance.numpy(), before[1])
    assert all(np.array_equal(w.numpy(), b) for w, b in zip(base.weights, base_before))
    assert base_bn and all(not l.trainable_weights for l in base_bn)

    # Phase 1 on cached features splits before the conv: the conv learns, so the cache is the map.
    chain = [l.name for l in model.layers]
    features, trained = split_at_pool(model)
    assert features.output_shape == (None, 3, 3, 1280)
    assert [l.name for l in trained.layers[1:]] == chain[chain.index("head_conv"):]
    np.testing.assert_allclose(trained(features(x)).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)

    # Phase 2: the base's BatchNorm stays frozen; the head's keeps training (it normalizes
    # the features the fine-tuned base now produces).
    unfreeze_top(base, None, 1.0)
    assert not any(l.trainable_weights for l in base_bn) and bn.trainable_weights


def test_a_conv_kernel_larger_than_the_feature_map_names_the_key_and_the_fix():
    with pytest.raises(ValueError, match=r"model.head.conv.kernel: 7 does not fit efficientnet_b0's 1 x 1 feature "
                                         r"map at image_size 32 \(padding valid\); set the kernel to 1 or less"):
        build_model(small_model("efficientnet_b0", 32, head=RUSSIAN_HEAD), 10)
    model, _ = build_model(small_model("efficientnet_b0", 32, head={"conv": {"filters": 4, "kernel": 7,
                                                                              "padding": "same"}}), 3)
    assert model.get_layer("head_conv").output_shape == (None, 1, 1, 4)


def test_a_head_without_the_new_pieces_is_built_as_before():
    model, base = build_model(small_model(head={"dense": [8], "dropout": 0.1}), 3)
    names = [l.name for l in model.layers]
    assert names[names.index(base.name):] == [base.name, "pool", "head_dense_0", "head_dropout_0", "probabilities"]

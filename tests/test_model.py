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

"""Registry of ImageNet backbones from tf.keras.applications.

Each backbone owns its input normalization, as a layer inside the model: Transform
hands every backbone the same float32 RGB image in [0, 255], and serving cannot
normalize differently from training.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="xfer")
class CaffeNormalization(tf.keras.layers.Layer):
    """VGG's 'caffe' preprocessing: RGB -> BGR, minus the ImageNet channel means."""

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs):
        bgr = tf.reverse(inputs, axis=[-1])
        return bgr - tf.constant(self.MEAN_BGR, dtype=inputs.dtype)


def _mobilenet_normalization() -> tf.keras.layers.Layer:
    # MobileNetV2 expects [-1, 1].
    return tf.keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")


@dataclass(frozen=True)
class Backbone:
    name: str
    min_size: int
    build: Callable[..., tf.keras.Model]
    normalization: Callable[[], tf.keras.layers.Layer]


def _vgg16(input_shape, weights, alpha):
    return tf.keras.applications.VGG16(include_top=False, weights=weights, input_shape=input_shape)


def _mobilenet_v2(input_shape, weights, alpha):
    return tf.keras.applications.MobileNetV2(
        include_top=False, weights=weights, input_shape=input_shape, alpha=alpha)


def _resnet50(input_shape, weights, alpha):
    return tf.keras.applications.ResNet50(include_top=False, weights=weights, input_shape=input_shape)


def _efficientnet_b0(input_shape, weights, alpha):
    return tf.keras.applications.EfficientNetB0(include_top=False, weights=weights, input_shape=input_shape)


def _identity_normalization() -> tf.keras.layers.Layer:
    # EfficientNet rescales and normalizes inside its own graph; it takes [0, 255].
    return tf.keras.layers.Identity(name="normalize")


def _caffe_normalization() -> tf.keras.layers.Layer:
    return CaffeNormalization(name="normalize")


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone("vgg16", 32, _vgg16, _caffe_normalization),
    "mobilenet_v2": Backbone("mobilenet_v2", 32, _mobilenet_v2, _mobilenet_normalization),
    "resnet50": Backbone("resnet50", 32, _resnet50, _caffe_normalization),
    "efficientnet_b0": Backbone("efficientnet_b0", 32, _efficientnet_b0, _identity_normalization),
}


def get(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone '{name}'; known: {', '.join(sorted(BACKBONES))}") from None


def build_base(name: str, image_size: int, weights: str, alpha: float = 1.0) -> tf.keras.Model:
    """The convolutional base, without its ImageNet top, with the requested weights.

    `weights` is 'imagenet', 'none' (random init) or a path (local or gs://) to a
    weights file saved from the same architecture.
    """
    spec = get(name)
    shape = (image_size, image_size, 3)
    if weights == "none":
        return spec.build(shape, None, alpha)
    if weights == "imagenet":
        return _with_imagenet(spec, shape, alpha)
    if not tf.io.gfile.exists(weights):
        raise FileNotFoundError(
            f"model.weights: weights file '{weights}' does not exist; give a path to a Keras "
            f"weights file for {name}, or 'imagenet', or 'none'")
    base = spec.build(shape, None, alpha)
    local = weights
    if "://" in weights:
        # Keras loads only local files; copy a gs:// file next to the run first.
        local = f"/tmp/xfer-weights-{abs(hash(weights))}.h5"
        tf.io.gfile.copy(weights, local, overwrite=True)
    base.load_weights(local)
    return base


class WeightsUnavailable(FileNotFoundError):
    """ImageNet weights neither cached nor downloadable."""


def _with_imagenet(spec: Backbone, shape, alpha: float) -> tf.keras.Model:
    """The base with ImageNet weights from the Keras cache, downloaded into it if missing.
    Offline with no cached file, a clear error naming the fix, before any training."""
    try:
        return spec.build(shape, "imagenet", alpha)
    except Exception as e:  # noqa: BLE001 - Keras raises a bare Exception on fetch failure
        if "URL fetch failure" not in str(e) and not isinstance(e, OSError):
            raise
        size = "" if spec.name != "mobilenet_v2" else f" --image-size {shape[0]} --alpha {alpha}"
        raise WeightsUnavailable(
            f"model.weights: imagenet weights for {spec.name} are not in the Keras cache "
            f"({keras_cache_dir()}/models) and could not be downloaded ({e}). Fill the cache "
            f"where there is network with `xfer weights fetch --backbone {spec.name}{size}` "
            f"(the Docker image can bake them in with --build-arg BAKE_WEIGHTS={spec.name}), "
            f"or set model.weights to a weights file or to none") from None


def keras_cache_dir() -> str:
    return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def fetch_imagenet(name: str, image_size: int = 224, alpha: float = 1.0) -> str:
    """Download a backbone's ImageNet weights into the Keras cache (for air-gapped runs
    and the Docker image); returns the cache folder."""
    spec = get(name)
    _with_imagenet(spec, (image_size, image_size, 3), alpha)
    return os.path.join(keras_cache_dir(), "models")

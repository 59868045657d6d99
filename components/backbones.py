"""ImageNet backbones from tf.keras.applications, built from the registry in
components/settings.py (names, Keras classes, normalization kinds, minimum sizes).

Each backbone owns its input normalization, as a layer inside the model: Transform
hands every backbone the same float32 RGB image in [0, 255], and serving cannot
normalize differently from training.
"""
from __future__ import annotations

import os

import tensorflow as tf

from xfer.components.settings import BACKBONES, Backbone


@tf.keras.utils.register_keras_serializable(package="xfer")
class CaffeNormalization(tf.keras.layers.Layer):
    """VGG's 'caffe' preprocessing: RGB -> BGR, minus the ImageNet channel means."""

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs):
        bgr = tf.reverse(inputs, axis=[-1])
        return bgr - tf.constant(self.MEAN_BGR, dtype=inputs.dtype)


_NORMALIZATIONS = {
    "caffe": lambda: CaffeNormalization(name="normalize"),
    "tf": lambda: tf.keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize"),
    "none": lambda: tf.keras.layers.Identity(name="normalize"),
}


def get(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone '{name}'; known: {', '.join(sorted(BACKBONES))}") from None


def normalization(name: str) -> tf.keras.layers.Layer:
    """The backbone's input normalization, as the model's first layer ("normalize")."""
    return _NORMALIZATIONS[get(name).normalization]()


def _build(name: str, shape, weights, alpha: float) -> tf.keras.Model:
    spec = get(name)
    width = {"alpha": alpha} if spec.takes_alpha else {}
    return getattr(tf.keras.applications, spec.keras_class)(
        include_top=False, weights=weights, input_shape=shape, **width)


def build_base(name: str, image_size: int, weights: str, alpha: float = 1.0) -> tf.keras.Model:
    """The convolutional base, without its ImageNet top, with the requested weights.

    `weights` is 'imagenet', 'none' (random init) or a path (local or gs://) to a
    weights file saved from the same architecture.
    """
    shape = (image_size, image_size, 3)
    if weights == "none":
        return _build(name, shape, None, alpha)
    if weights == "imagenet":
        return _with_imagenet(name, shape, alpha)
    if not tf.io.gfile.exists(weights):
        raise FileNotFoundError(
            f"model.weights: weights file '{weights}' does not exist; give a path to a Keras "
            f"weights file for {name}, or 'imagenet', or 'none'")
    base = _build(name, shape, None, alpha)
    local = weights
    if "://" in weights:
        # Keras loads only local files; copy a gs:// file next to the run first.
        local = f"/tmp/xfer-weights-{abs(hash(weights))}.h5"
        tf.io.gfile.copy(weights, local, overwrite=True)
    base.load_weights(local)
    return base


class WeightsUnavailable(FileNotFoundError):
    """ImageNet weights neither cached nor downloadable."""


def _with_imagenet(name: str, shape, alpha: float) -> tf.keras.Model:
    """The base with ImageNet weights from the Keras cache, downloaded into it if missing.
    Offline with no cached file, a clear error naming the fix, before any training."""
    try:
        return _build(name, shape, "imagenet", alpha)
    except Exception as e:  # noqa: BLE001 - Keras raises a bare Exception on fetch failure
        if "URL fetch failure" not in str(e) and not isinstance(e, OSError):
            raise
        # The weights file of a width-multiplied network depends on its size and width.
        size = f" --image-size {shape[0]} --alpha {alpha}" if get(name).takes_alpha else ""
        raise WeightsUnavailable(
            f"model.weights: imagenet weights for {name} are not in the Keras cache "
            f"({keras_cache_dir()}/models) and could not be downloaded ({e}). Fill the cache "
            f"where there is network with `xfer weights fetch --backbone {name}{size}` "
            f"(the Docker image can bake them in with --build-arg BAKE_WEIGHTS={name}), "
            f"or set model.weights to a weights file or to none") from None


def keras_cache_dir() -> str:
    return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def fetch_imagenet(name: str, image_size: int = 224, alpha: float = 1.0) -> str:
    """Download a backbone's ImageNet weights into the Keras cache (for air-gapped runs
    and the Docker image); returns the cache folder."""
    _with_imagenet(name, (image_size, image_size, 3), alpha)
    return os.path.join(keras_cache_dir(), "models")

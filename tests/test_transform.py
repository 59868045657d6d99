"""preprocessing_fn's image decoding: any common format and mode -> RGB at the configured size."""
import io

import numpy as np
import pytest
from PIL import Image

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from settings_helpers import make_config
from xfer.components.transform import decode_images, preprocessing_fn


def encode(mode, fmt, size=(20, 12), color=None):
    img = Image.new(mode, size, color if color is not None else 128)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("RGB", "PNG"), ("L", "PNG"), ("RGBA", "PNG"),
                                      ("P", "GIF"), ("RGB", "BMP"), ("L", "JPEG")])
def test_decodes_formats_and_modes_to_rgb(mode, fmt):
    out = decode_images(tf.constant([encode(mode, fmt)]), 16).numpy()
    assert out.shape == (1, 16, 16, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 255.0


def test_colors_survive_decoding():
    red = encode("RGB", "PNG", color=(255, 0, 0))
    out = decode_images(tf.constant([red]), 8).numpy()[0]
    np.testing.assert_allclose(out[..., 0], 255.0)
    np.testing.assert_allclose(out[..., 1:], 0.0)


def test_preprocessing_fn_shapes_and_string_labels_pass_through_int():
    inputs = {"img": tf.constant([[encode("RGB", "PNG")], [encode("L", "JPEG")]]),
              "y": tf.constant([[3], [1]], tf.int64)}
    settings = make_config(data={"builtin": "digits", "image_key": "img", "label_key": "y"},
                           model={"image_size": 40}).transform_settings(code_fingerprint="test")
    out = preprocessing_fn(inputs, settings.model_dump(mode="json"))
    assert out["image"].shape == (2, 40, 40, 3)
    assert out["label"].numpy().tolist() == [3, 1]

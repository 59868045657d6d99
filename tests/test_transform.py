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
    # Antialiased shrinking sums float kernel weights: 255 within float rounding.
    np.testing.assert_allclose(out[..., 0], 255.0, atol=1e-3)
    np.testing.assert_allclose(out[..., 1:], 0.0, atol=1e-3)


def test_preprocessing_fn_shapes_and_string_labels_pass_through_int():
    inputs = {"img": tf.constant([[encode("RGB", "PNG")], [encode("L", "JPEG")]]),
              "y": tf.constant([[3], [1]], tf.int64)}
    settings = make_config(data={"builtin": "digits", "image_key": "img", "label_key": "y"},
                           model={"image_size": 40}).transform_settings(code_fingerprint="test")
    out = preprocessing_fn(inputs, settings.model_dump(mode="json"))
    assert out["image"].shape == (2, 40, 40, 3)
    assert out["label"].numpy().tolist() == [3, 1]


# --- large JPEGs: decoded at reduced scale (libjpeg DCT scaling), the same picture ---

def photo(width, height, quality=90):
    """A real photograph (scikit-learn's china.jpg) scaled to width x height, with sensor-like
    noise so the JPEG carries a photo's detail, re-encoded."""
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(width * 7 + height)
    img = Image.fromarray(load_sample_image("china.jpg")).resize((width, height), Image.BILINEAR)
    pixels = np.asarray(img).astype(np.int16) + rng.normal(0, 4, (height, width, 3)).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize("short,size,ratio", [(3000, 224, 8), (1785, 224, 8), (1784, 224, 4), (448, 224, 2),
                                              (447, 224, 2), (446, 224, 1), (224, 224, 1), (100, 224, 1)])
def test_jpeg_ratio_is_the_largest_that_keeps_the_model_size(short, size, ratio):
    from xfer.components.decode import JPEG_RATIOS, jpeg_ratio
    for h, w in ((short, short + 500), (short + 500, short)):
        assert JPEG_RATIOS[int(jpeg_ratio(tf.constant(h), tf.constant(w), size))] == ratio


@pytest.mark.parametrize("width,height,size,expected", [(1600, 1200, 112, (150, 200)), (1200, 1600, 112, (200, 150)),
                                                        (900, 500, 112, (125, 225)), (300, 200, 112, (200, 300))])
def test_a_large_jpeg_is_decoded_at_reduced_scale_never_below_the_model_size(width, height, size, expected):
    from xfer.components.decode import decode_pixels
    out = decode_pixels(tf.constant(photo(width, height)), size).numpy()
    assert out.shape[:2] == expected and min(out.shape[:2]) >= size


def test_reduced_scale_decoding_gives_the_full_decodes_picture():
    data = tf.constant(photo(1600, 1200))
    # The reference: every source pixel decoded, averaged down (antialiased area resize).
    full = tf.cast(tf.io.decode_jpeg(data, channels=3), tf.float32)
    reference = tf.image.resize(full, [112, 112], antialias=True).numpy()
    ours = decode_images(tf.reshape(data, [1]), 112).numpy()[0]
    diff = np.abs(ours - reference)
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 10.0, (diff.mean(), np.percentile(diff, 99))
    # The tutorials' way (full decode, resize without antialiasing) samples instead of
    # averaging: further from the picture than ours.
    tutorial = tf.image.resize(full, [112, 112]).numpy()
    assert np.abs(tutorial - reference).mean() > 2 * diff.mean()


def test_a_jpeg_under_twice_the_size_is_decoded_at_full_scale():
    data = tf.constant(photo(300, 200))
    full = tf.cast(tf.io.decode_jpeg(data, channels=3), tf.float32)
    expected = tf.image.resize(full, [112, 112], antialias=True).numpy()
    np.testing.assert_allclose(decode_images(tf.reshape(data, [1]), 112).numpy()[0], expected, atol=1e-3)


def test_a_truncated_large_jpeg_fails_at_reduced_scale_as_at_full_scale():
    data = photo(1600, 1200)
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_images(tf.constant([data[: len(data) // 2]]), 112)

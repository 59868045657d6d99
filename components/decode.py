"""Image bytes to pixels, one rule for training, serving and DataCheck.

Transform's graph maps `decode_image` over each batch (components/transform.py), the
serving signatures call it per image (components/export.py), and DataCheck checks
every record with `decode_pixels` (components/data_check.py). Light: TensorFlow only.
"""
from __future__ import annotations

import tensorflow as tf

# libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 of its size for a fraction of the cost
# (the inverse DCT runs on fewer coefficients, and the full-size pixels are never made).
JPEG_RATIOS = (1, 2, 4, 8)


def jpeg_ratio(height: tf.Tensor, width: tf.Tensor, size: int) -> tf.Tensor:
    """Index into JPEG_RATIOS of the largest reduction at which the decoded image still
    has at least `size` pixels on both sides (libjpeg rounds a reduced side up), so the
    resize after it only ever shrinks."""
    short = tf.minimum(height, width)
    index = tf.constant(0)
    for i, r in enumerate(JPEG_RATIOS[1:], start=1):
        index = tf.where((short + r - 1) // r >= size, tf.constant(i), index)
    return index


def decode_pixels(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """One JPEG/PNG/GIF/BMP image (grayscale/RGBA too) -> uint8 RGB [h, w, 3], at a
    reduced scale when it is a JPEG at least twice `size` on its shorter side.

    libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 for a fraction of the cost: the
    entropy decoding is the same (a damaged file fails alike), but the inverse DCT
    runs on fewer coefficients and the full-size pixels are never made. A 12-megapixel
    photo for a 224-pixel model is decoded at 1/8 (500x375) in about a third of the
    time, with 1/64 of the pixels left to cast and resize. DataCheck checks each image
    with this very function, so "decodes in DataCheck" means "decodes in training"."""
    def jpeg():
        shape = tf.io.extract_jpeg_shape(encoded)
        return tf.switch_case(jpeg_ratio(shape[0], shape[1], size), [
            (lambda r=r: tf.io.decode_jpeg(encoded, channels=3, ratio=r)) for r in JPEG_RATIOS])

    def other():
        return tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def decode_image(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """One JPEG/PNG/GIF/BMP image (any size, grayscale/RGBA too) -> float32 [size, size, 3] in [0, 255].

    Decoded by `decode_pixels`, then resized with antialiasing: shrinking averages over
    the source pixels instead of sampling them, so a reduced-scale decode and a full
    one give the same picture within resize tolerance (tests/test_transform.py)."""
    image = tf.image.resize(tf.cast(decode_pixels(encoded, size), tf.float32), [size, size], antialias=True)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape([size, size, 3])
    return image

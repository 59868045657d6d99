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


def tiny(fmt: str) -> bytes:
    """A valid 1x1 image, encoded, as Python bytes (a constant in the graph)."""
    with tf.init_scope():
        pixel = tf.zeros([1, 1, 3], tf.uint8)
        return (tf.io.encode_png(pixel) if fmt == "png" else tf.io.encode_jpeg(pixel)).numpy()


def decode_pixels(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """One JPEG/PNG/GIF/BMP image (grayscale/RGBA too) -> uint8 RGB [h, w, 3], at a
    reduced scale when it is a JPEG at least twice `size` on its shorter side.

    libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 for a fraction of the cost: the
    entropy decoding is the same (a damaged file fails alike), but the inverse DCT
    runs on fewer coefficients and the full-size pixels are never made. A 12-megapixel
    photo for a 224-pixel model is decoded at 1/8 (500x375) in about a third of the
    time, with 1/64 of the pixels left to cast and resize. DataCheck checks each image
    with this very function, so "decodes in DataCheck" means "decodes in training".

    No tf.cond: the serving guard runs this inside a tf.data function built per request,
    where a cond's branches are instantiated on every call. Every decoder runs instead,
    all but the chosen one on a 1x1 image (microseconds), and the chosen output is cut
    out of their concatenation."""
    is_jpeg = tf.io.is_jpeg(encoded)
    jpeg = tf.where(is_jpeg, encoded, tiny("jpeg"))
    shape = tf.io.extract_jpeg_shape(jpeg)
    choice = tf.where(is_jpeg, jpeg_ratio(shape[0], shape[1], size), len(JPEG_RATIOS))
    decoded = [tf.io.decode_jpeg(tf.where(tf.equal(choice, i), jpeg, tiny("jpeg")), channels=3, ratio=r)
               for i, r in enumerate(JPEG_RATIOS)]
    decoded.append(tf.io.decode_image(tf.where(is_jpeg, tiny("png"), encoded), channels=3,
                                      expand_animations=False, dtype=tf.uint8))
    shapes = tf.stack([tf.shape(d) for d in decoded])
    lengths = tf.reduce_prod(shapes, axis=1)
    starts = tf.cumsum(lengths, exclusive=True)
    flat = tf.concat([tf.reshape(d, [-1]) for d in decoded], 0)
    return tf.reshape(tf.slice(flat, [starts[choice]], [lengths[choice]]), shapes[choice])


def decode_image(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """One JPEG/PNG/GIF/BMP image (any size, grayscale/RGBA too) -> float32 [size, size, 3] in [0, 255].

    Decoded by `decode_pixels`, then resized with antialiasing: shrinking averages over
    the source pixels instead of sampling them, so a reduced-scale decode and a full
    one give the same picture within resize tolerance (tests/test_transform.py)."""
    image = tf.image.resize(tf.cast(decode_pixels(encoded, size), tf.float32), [size, size], antialias=True)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape([size, size, 3])
    return image

"""Untrusted image bytes, judged one by one inside the serving graph.

Before anything is decoded, each image's width and height are read from its header
(PNG IHDR, GIF logical screen, BMP info header, JPEG SOF via tf.io.extract_jpeg_shape)
and an image above `max_pixels` is refused without being decoded: a 0.4 MB one-colour
PNG of 20000x20000 would otherwise take 1.2 GB as uint8 and 4.8 GB more as float. An
image that fails to decode (truncated, corrupt, not an image) is dropped from a tf.data
pipeline by `ignore_errors()` instead of failing the batch, and gets its reason in
`error`; the others are decoded and classified as usual.

Error strings (the `error` output; empty when the image was classified):
  "empty image"
  "too large: {W}x{H} pixels > serving.max_pixels ({max_pixels})"
  "not a decodable JPEG, PNG, GIF or BMP image"
  "not a tf.Example with an '{image_key}' image feature"   (serving_examples only)
A batch above `max_batch` fails the whole request with one InvalidArgumentError naming
serving.max_batch.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf

EMPTY = "empty image"
UNDECODABLE = "not a decodable JPEG, PNG, GIF or BMP image"
HEADER_BYTES = 32

# Formats by magic number; 0 is "none we decode".
UNKNOWN, JPEG, PNG, GIF, BMP = 0, 1, 2, 3, 4
# Per-image status coming out of the decode pipeline.
OK, TOO_LARGE, NOT_IMAGE = 0, 1, 2


class Guarded(NamedTuple):
    images: tf.Tensor  # float32 [n, size, size, 3]; zeros where error is not empty
    error: tf.Tensor   # string [n]


def _tiny(fmt: str) -> bytes:
    """A valid 1x1 image, encoded, as Python bytes (a constant in the graph)."""
    with tf.init_scope():
        pixel = tf.zeros([1, 1, 3], tf.uint8)
        return (tf.io.encode_png(pixel) if fmt == "png" else tf.io.encode_jpeg(pixel)).numpy()


def _u(head, i):
    return tf.cast(head[:, i], tf.int64)


def header_dims(images: tf.Tensor):
    """(format, width, height) of encoded images [n] from their first bytes, int64 [n]
    each, for PNG, GIF and BMP; JPEG's (format JPEG, width and height 0 here) are read in
    the per-image step by tf.io.extract_jpeg_shape, which raises on a broken header.
    Vectorized, outside tf.data: a function run per element costs its size on every request."""
    head = tf.strings.substr(images, 0, HEADER_BYTES)
    head = tf.strings.substr(tf.strings.join([head, b"\0" * HEADER_BYTES]), 0, HEADER_BYTES)
    head = tf.reshape(tf.io.decode_raw(head, tf.uint8), [-1, HEADER_BYTES])

    def be32(i):
        return (_u(head, i) * 16777216 + _u(head, i + 1) * 65536 + _u(head, i + 2) * 256 + _u(head, i + 3))

    def le32_signed(i):
        v = _u(head, i) + _u(head, i + 1) * 256 + _u(head, i + 2) * 65536 + _u(head, i + 3) * 16777216
        return tf.where(v >= 2 ** 31, v - 2 ** 32, v)

    def le16(i):
        return _u(head, i) + _u(head, i + 1) * 256

    def magic(*values):
        return tf.reduce_all(tf.equal(head[:, :len(values)], tf.constant(values, tf.uint8)), axis=1)

    is_png = magic(0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A)
    is_gif = magic(0x47, 0x49, 0x46, 0x38)
    is_bmp = magic(0x42, 0x4D)
    is_jpeg = magic(0xFF, 0xD8, 0xFF)
    zero = tf.zeros_like(le16(0))
    fmt = tf.where(is_png, PNG, tf.where(is_gif, GIF, tf.where(is_bmp, BMP, tf.where(is_jpeg, JPEG, UNKNOWN))))
    width = tf.where(is_png, be32(16), tf.where(is_gif, le16(6), tf.where(is_bmp, tf.abs(le32_signed(18)), zero)))
    height = tf.where(is_png, be32(20), tf.where(is_gif, le16(8), tf.where(is_bmp, tf.abs(le32_signed(22)), zero)))
    return tf.cast(fmt, tf.int64), width, height


def check_batch_size(n: tf.Tensor, max_batch: int) -> tf.Operation:
    return tf.debugging.Assert(
        tf.less_equal(n, max_batch),
        [tf.strings.join([
            "batch of ", tf.strings.as_string(n), f" images is above serving.max_batch ({max_batch}): the whole "
            f"request is refused; send at most {max_batch} images per request"])],
        name="max_batch")


def decode_batch(images: tf.Tensor, decode_one: Callable[[tf.Tensor], tf.Tensor], size: int,
                 max_pixels: int, max_batch: int) -> Guarded:
    """Encoded images [n] -> Guarded(float32 [n, size, size, 3], error [n]). `decode_one`
    maps one encoded image to float32 [size, size, 3] and may raise on bad input."""
    n = tf.shape(images, out_type=tf.int64)[0]
    with tf.control_dependencies([check_batch_size(n, max_batch)]):
        n = tf.identity(n)

    fmt, width, height = header_dims(images)

    def one(index, encoded, fmt, width, height):
        # No tf.cond in here: a cond in a tf.data function is instantiated on every request
        # (measured: 100+ ms a call). What is not a JPEG has a tiny JPEG's shape read instead.
        is_jpeg = tf.equal(fmt, JPEG)
        shape = tf.cast(tf.io.extract_jpeg_shape(tf.where(is_jpeg, encoded, _tiny("jpeg"))), tf.int64)
        width = tf.where(is_jpeg, shape[1], width)
        height = tf.where(is_jpeg, shape[0], height)
        status = tf.where(tf.equal(fmt, UNKNOWN), tf.constant(NOT_IMAGE, tf.int64),
                          tf.where(width * height > max_pixels, tf.constant(TOO_LARGE, tf.int64),
                                   tf.constant(OK, tf.int64)))
        # A refused image is never decoded: a 1x1 PNG is decoded in its place and its
        # pixels are never used.
        image = tf.ensure_shape(decode_one(tf.where(tf.equal(status, OK), encoded, _tiny("png"))), [size, size, 3])
        return index, image, status, width, height

    dataset = (tf.data.Dataset.from_tensor_slices((tf.range(n), images, fmt, width, height))
               .map(one)
               .ignore_errors()  # a decode or header error drops that image only
               .batch(max_batch))  # n <= max_batch: at most one batch
    empty = (tf.zeros([0], tf.int64), tf.zeros([0, size, size, 3], tf.float32), tf.zeros([0], tf.int64),
             tf.zeros([0], tf.int64), tf.zeros([0], tf.int64))
    index, decoded, status, width, height = dataset.reduce(
        empty, lambda state, batch: tuple(tf.concat([s, b], 0) for s, b in zip(state, batch)))

    where = tf.expand_dims(index, 1)
    # Dropped by ignore_errors (never reached the end): not decodable.
    status_all = tf.tensor_scatter_nd_update(tf.fill([n], tf.constant(NOT_IMAGE, tf.int64)), where, status)
    width_all = tf.scatter_nd(where, width, [n])
    height_all = tf.scatter_nd(where, height, [n])
    too_large = tf.strings.join([
        "too large: ", tf.strings.as_string(width_all), "x", tf.strings.as_string(height_all),
        f" pixels > serving.max_pixels ({max_pixels})"])
    error = tf.where(tf.equal(status_all, OK), "",
                     tf.where(tf.equal(status_all, TOO_LARGE), too_large, UNDECODABLE))
    error = tf.where(tf.equal(tf.strings.length(images), 0), EMPTY, error)
    decoded_all = tf.scatter_nd(where, decoded, tf.stack([n, size, size, 3]))
    return Guarded(decoded_all, error)


def parse_images(examples: tf.Tensor, image_key: str, spec, max_batch: int):
    """Serialized tf.Examples [n] -> (encoded images [n], error [n]): each record parsed on
    its own, so one that is not a tf.Example, or lacks the image, is an error of its own."""
    n = tf.shape(examples, out_type=tf.int64)[0]
    with tf.control_dependencies([check_batch_size(n, max_batch)]):
        n = tf.identity(n)

    def one(index, serialized):
        value = tf.io.parse_single_example(serialized, {image_key: spec})[image_key]
        if isinstance(value, tf.SparseTensor):
            value = tf.sparse.to_dense(value, default_value="")
        return index, tf.reshape(value, [-1])[0]  # none: an error, so the record is dropped

    dataset = (tf.data.Dataset.from_tensor_slices((tf.range(n), examples)).map(one)
               .ignore_errors().batch(max_batch))
    index, images = dataset.reduce((tf.zeros([0], tf.int64), tf.zeros([0], tf.string)),
                                   lambda state, batch: tuple(tf.concat([s, b], 0) for s, b in zip(state, batch)))
    where = tf.expand_dims(index, 1)
    parsed = tf.scatter_nd(where, tf.ones_like(index, tf.int32), [n]) > 0
    images_all = tf.tensor_scatter_nd_update(tf.fill([n], ""), where, images)
    error = tf.where(parsed, "", f"not a tf.Example with an '{image_key}' image feature")
    return images_all, error

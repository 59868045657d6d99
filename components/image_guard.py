"""Untrusted image bytes, judged one by one inside the serving graph.

Before anything is decoded, each image's width and height are read from its header
(components/image_header.py, the reader DataCheck uses on the training data too: PNG
IHDR, GIF logical screen, BMP info header, JPEG SOF via tf.io.extract_jpeg_shape) and
an image above `max_pixels` is refused without being decoded: a 0.4 MB one-colour
PNG of 20000x20000 would otherwise take 1.2 GB as uint8 and 4.8 GB more as float. An
image that fails to decode (truncated, corrupt, not an image) is dropped from a tf.data
pipeline by `ignore_errors()` instead of failing the batch, and gets its reason in
`error`; the others are decoded and classified as usual.

A GIF's cost is not in its header: TensorFlow decodes it at the size of its largest frame
(a 296 KB GIF whose screen says 10x10 decoded here to 20000x20000x3, 1.5 GB) and reads
every frame, so each GIF's blocks are walked first (`gif_frames`) and it is judged by
largest frame x frame count.

Error strings (the `error` output; empty when the image was classified):
  "empty image"
  "too large: {W}x{H} pixels > serving.max_pixels ({max_pixels})"
  "too large: {W}x{H} pixels x {F} frames > serving.max_pixels ({max_pixels})"   (GIF)
  "too large: a GIF of more than 20000 blocks (frames and their data)"
  "not a decodable JPEG, PNG, GIF or BMP image"
  "not a tf.Example with an '{image_key}' image feature"   (serving_examples only)
A batch above `max_batch` fails the whole request with one InvalidArgumentError naming
serving.max_batch.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf

from xfer.components.decode import tiny
# The header reader is shared with DataCheck; its names stay importable from here.
from xfer.components.image_header import (BMP, GIF, GIF_MAX_BLOCKS, HEADER_BYTES, JPEG, PNG,  # noqa: F401
                                          UNKNOWN, WEBP, gif_frames, header_dims, jpeg_size, sizes,
                                          too_large)

EMPTY = "empty image"
UNDECODABLE = "not a decodable JPEG, PNG, GIF or BMP image"

# Per-image status coming out of the decode pipeline.
OK, TOO_LARGE, NOT_IMAGE = 0, 1, 2


class Guarded(NamedTuple):
    images: tf.Tensor  # float32 [n, size, size, 3]; zeros where error is not empty
    error: tf.Tensor   # string [n]


_tiny = tiny


def check_batch_size(n: tf.Tensor, max_batch: int) -> tf.Operation:
    return tf.debugging.Assert(
        tf.less_equal(n, max_batch),
        [tf.strings.join([
            "batch of ", tf.strings.as_string(n), f" images is above serving.max_batch ({max_batch}): the whole "
            f"request is refused; send at most {max_batch} images per request"])],
        name="max_batch")


def per_request(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """A dataset built inside the serving signature, anew on every request: without
    tf.data's static rewrites and autotuning, which it would otherwise redo per call for
    a dataset of at most serving.max_batch elements (measured: about 5% of a request of 16
    camera photos). Parallel maps then run one element per core. `single_batch` applies it,
    so DataCheck's per-chunk dataset, also built anew on every call, gets the same."""
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    return dataset.with_options(options)


def single_batch(dataset: tf.data.Dataset, sentinel, max_batch: int):
    """The elements of `dataset` (at most max_batch of them, maybe none) stacked into one
    batch, as a structure like `sentinel`, an element of the dataset's own structure. The
    sentinel is appended and cut off again so that there is always exactly one batch for
    get_single_element. Dataset.reduce, the other way to get a result that may be empty,
    instantiates its functions on every call: the guard of a one-image request took 44 ms
    with it and 1.4 ms with this (32 images: 55 and 10 ms)."""
    batched = per_request(dataset.concatenate(tf.data.Dataset.from_tensors(sentinel)).batch(max_batch + 1))
    return tf.nest.map_structure(lambda t: t[:-1], batched.get_single_element())


def decode_batch(images: tf.Tensor, decode_one: Callable[[tf.Tensor], tf.Tensor], size: int,
                 max_pixels: int, max_batch: int) -> Guarded:
    """Encoded images [n] -> Guarded(float32 [n, size, size, 3], error [n]). `decode_one`
    maps one encoded image to float32 [size, size, 3] and may raise on bad input."""
    n = tf.shape(images, out_type=tf.int64)[0]
    with tf.control_dependencies([check_batch_size(n, max_batch)]):
        n = tf.identity(n)

    fmt, width, height, frames, walked = sizes(images)

    def one(index, encoded, fmt, width, height, frames):
        width, height = jpeg_size(encoded, fmt, width, height)
        # TensorFlow decodes no WebP: not an image here, whatever its header says.
        not_image = tf.logical_or(tf.equal(fmt, UNKNOWN), tf.equal(fmt, WEBP))
        status = tf.where(not_image, tf.constant(NOT_IMAGE, tf.int64),
                          tf.where(width * height * frames > max_pixels, tf.constant(TOO_LARGE, tf.int64),
                                   tf.constant(OK, tf.int64)))
        # A refused image is never decoded: a 1x1 PNG is decoded in its place and its
        # pixels are never used.
        image = tf.ensure_shape(decode_one(tf.where(tf.equal(status, OK), encoded, _tiny("png"))), [size, size, 3])
        return index, image, status, width, height

    dataset = (
        tf.data.Dataset.from_tensor_slices((tf.range(n), images, fmt, width, height, frames))
        # Images decode in parallel (a request of camera photos is decode-bound); the
        # index puts each result back in its place.
        .map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        .ignore_errors())  # a decode or header error drops that image only
    zero = tf.constant(0, tf.int64)
    index, decoded, status, width, height = single_batch(
        dataset, (zero, tf.zeros([size, size, 3], tf.float32), zero, zero, zero), max_batch)

    where = tf.expand_dims(index, 1)
    # Dropped by ignore_errors (never reached the end): not decodable.
    status_all = tf.tensor_scatter_nd_update(tf.fill([n], tf.constant(NOT_IMAGE, tf.int64)), where, status)
    width_all = tf.scatter_nd(where, width, [n])
    height_all = tf.scatter_nd(where, height, [n])
    too_large_text = too_large(width_all, height_all, frames, walked, fmt, "serving.max_pixels", max_pixels)
    error = tf.where(tf.equal(status_all, OK), "",
                     tf.where(tf.equal(status_all, TOO_LARGE), too_large_text, UNDECODABLE))
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

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(n), examples)).map(one).ignore_errors()
    index, images = single_batch(dataset, (tf.constant(0, tf.int64), tf.constant("")), max_batch)
    where = tf.expand_dims(index, 1)
    parsed = tf.scatter_nd(where, tf.ones_like(index, tf.int32), [n]) > 0
    images_all = tf.tensor_scatter_nd_update(tf.fill([n], ""), where, images)
    error = tf.where(parsed, "", f"not a tf.Example with an '{image_key}' image feature")
    return images_all, error

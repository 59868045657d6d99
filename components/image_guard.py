"""Untrusted image bytes, judged one by one inside the serving graph.

Before anything is decoded, each image's width and height are read from its header
(PNG IHDR, GIF logical screen, BMP info header, JPEG SOF via tf.io.extract_jpeg_shape)
and an image above `max_pixels` is refused without being decoded: a 0.4 MB one-colour
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


_tiny = tiny


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


GIF_MAX_BLOCKS = 20000  # blocks walked per GIF; more is refused (a legit 1 MB animation has ~4,000)


def gif_frames(images: tf.Tensor, is_gif: tf.Tensor):
    """(frames, widest frame, tallest frame, walked) of each GIF in `images` [n], by walking
    its blocks (GIF89a spec: header, colour tables, extensions and image descriptors, each
    followed by data sub-blocks), int64 [n] each; 0 for what is not a GIF. TensorFlow's GIF
    decoder makes the output as large as the largest frame, whatever the header's screen
    size says, and reads every frame even when only the first is kept, so the header alone
    cannot bound its cost. Vectorized over the batch; the loop runs only while some GIF is
    unfinished, at most GIF_MAX_BLOCKS times (`walked` False: the GIF has more blocks)."""
    length = tf.cast(tf.strings.length(images), tf.int64)

    def read(pos, k):
        """k bytes at each image's pos (zeros past its end), uint8 [n, k]."""
        at = tf.minimum(pos, length)
        chunk = tf.strings.substr(images, at, tf.fill(tf.shape(at), tf.constant(k, tf.int64)))
        chunk = tf.strings.substr(tf.strings.join([chunk, b"\0" * k]), 0, k)
        return tf.cast(tf.reshape(tf.io.decode_raw(chunk, tf.uint8), [-1, k]), tf.int64)

    head = read(tf.zeros_like(length), 13)
    table = tf.where(head[:, 10] >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), head[:, 10] % 8), 0)
    zero = tf.zeros_like(length)
    state = (tf.constant(0), 13 + table, zero, zero, zero, tf.zeros_like(is_gif), tf.logical_not(is_gif))

    def step(i, pos, frames, width, height, in_blocks, done):
        b = read(pos, 10)
        # Inside data sub-blocks: a size byte, then that many bytes; size 0 ends them.
        sub_next = pos + 1 + b[:, 0]
        sub_left = tf.logical_and(in_blocks, tf.equal(b[:, 0], 0))
        # At a block: 0x21 extension (label, then sub-blocks); 0x2C image descriptor
        # (position, size, flags, local colour table, LZW code size, then sub-blocks);
        # anything else (0x3B trailer, garbage, the end) ends the walk.
        is_ext = tf.logical_and(tf.logical_not(in_blocks), tf.equal(b[:, 0], 0x21))
        is_img = tf.logical_and(tf.logical_not(in_blocks), tf.equal(b[:, 0], 0x2C))
        w, h = b[:, 5] + 256 * b[:, 6], b[:, 7] + 256 * b[:, 8]
        local = tf.where(b[:, 9] >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), b[:, 9] % 8), 0)
        live = tf.logical_not(done)
        new_pos = tf.where(in_blocks, sub_next, tf.where(is_ext, pos + 2, tf.where(is_img, pos + 11 + local, pos)))
        ends = tf.logical_or(tf.logical_and(tf.logical_not(in_blocks), tf.logical_not(is_ext | is_img)),
                             pos >= length)
        counted = tf.logical_and(live, is_img)
        return (i + 1,
                tf.where(live, new_pos, pos),
                frames + tf.cast(counted, tf.int64),
                tf.where(counted, tf.maximum(width, w), width),
                tf.where(counted, tf.maximum(height, h), height),
                tf.where(live, tf.logical_or(is_ext | is_img, tf.logical_and(in_blocks, tf.logical_not(sub_left))),
                         in_blocks),
                tf.logical_or(done, ends))

    _, _, frames, width, height, _, done = tf.while_loop(
        lambda i, *rest: tf.logical_not(tf.reduce_all(rest[-1])), step, state,
        shape_invariants=(tf.TensorShape([]),) + (tf.TensorShape([None]),) * 6,
        maximum_iterations=GIF_MAX_BLOCKS)
    return frames, width, height, tf.logical_or(done, tf.logical_not(is_gif))


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

    fmt, width, height = header_dims(images)
    frames, frame_w, frame_h, walked = gif_frames(images, tf.equal(fmt, GIF))
    width, height = tf.maximum(width, frame_w), tf.maximum(height, frame_h)
    # A GIF costs every frame it holds (see gif_frames); one not walked to its end is refused.
    frames = tf.where(walked, tf.maximum(frames, 1), tf.constant(2 ** 31, tf.int64))

    def one(index, encoded, fmt, width, height, frames):
        # No tf.cond in here: a cond in a tf.data function is instantiated on every request
        # (measured: 100+ ms a call). What is not a JPEG has a tiny JPEG's shape read instead.
        is_jpeg = tf.equal(fmt, JPEG)
        shape = tf.cast(tf.io.extract_jpeg_shape(tf.where(is_jpeg, encoded, _tiny("jpeg"))), tf.int64)
        width = tf.where(is_jpeg, shape[1], width)
        height = tf.where(is_jpeg, shape[0], height)
        status = tf.where(tf.equal(fmt, UNKNOWN), tf.constant(NOT_IMAGE, tf.int64),
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
    animated = tf.logical_and(tf.equal(fmt, GIF), frames > 1)
    frame_text = tf.where(tf.logical_and(animated, walked),
                          tf.strings.join([" x ", tf.strings.as_string(frames), " frames"]), "")
    too_large = tf.strings.join([
        "too large: ", tf.strings.as_string(width_all), "x", tf.strings.as_string(height_all),
        " pixels", frame_text, f" > serving.max_pixels ({max_pixels})"])
    too_large = tf.where(walked, too_large,
                         f"too large: a GIF of more than {GIF_MAX_BLOCKS} blocks (frames and their data)")
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

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(n), examples)).map(one).ignore_errors()
    index, images = single_batch(dataset, (tf.constant(0, tf.int64), tf.constant("")), max_batch)
    where = tf.expand_dims(index, 1)
    parsed = tf.scatter_nd(where, tf.ones_like(index, tf.int32), [n]) > 0
    images_all = tf.tensor_scatter_nd_update(tf.fill([n], ""), where, images)
    error = tf.where(parsed, "", f"not a tf.Example with an '{image_key}' image feature")
    return images_all, error

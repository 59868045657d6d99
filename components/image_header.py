"""What an encoded image will cost to decode, read from its header before any decoder runs:
one reader for the serving signatures (components/image_guard.py) and for DataCheck
(components/data_check.py), so a limit means the same in both.

A PNG's decoder allocates what its IHDR says (a 1.2 MB PNG of 20000x20000 black pixels
decodes to 1.2 GB), so the header decides. Width and height come from the PNG IHDR, the
GIF logical screen and every frame's descriptor (`gif_frames`), the BMP info header, the
WebP VP8/VP8L/VP8X chunk, and, for a JPEG, its SOFn marker through libjpeg's header reader
(`jpeg_size`: tf.io.extract_jpeg_shape stops at the first SOFn and allocates nothing by
the image's size; it raises on a broken header). Plain byte arithmetic on TensorFlow
tensors, no Python callbacks: it runs inside the exported serving graph as well as in
DataCheck's tf.data pipeline, vectorized over a batch.

The cost of an image is width x height x frames (a GIF's decoder reads every frame, at
the size of the largest); `too_large` is the one-line reason given when it is above a
limit, "too large: {W}x{H} pixels > {setting} ({max_pixels})" (with " x {F} frames" for
an animated GIF).
"""
from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from xfer.components.decode import tiny

HEADER_BYTES = 32

# Formats by magic number. TensorFlow 2.16 decodes JPEG, PNG, GIF and BMP; a WebP's size is
# read all the same, so that a huge one is named as such.
UNKNOWN, JPEG, PNG, GIF, BMP, WEBP = 0, 1, 2, 3, 4, 5
# A GIF not walked to its end (more blocks than GIF_MAX_BLOCKS) counts as this many frames.
UNBOUNDED_FRAMES = 2 ** 31


class Sizes(NamedTuple):
    """Per image, int64 [n] (walked: bool [n]). A JPEG's width and height are 0 here:
    `jpeg_size` reads them per image."""
    fmt: tf.Tensor
    width: tf.Tensor
    height: tf.Tensor
    frames: tf.Tensor  # 1 for a still image; UNBOUNDED_FRAMES for a GIF not walked to its end
    walked: tf.Tensor  # False: a GIF with more than GIF_MAX_BLOCKS blocks


def _u(head, i):
    return tf.cast(head[:, i], tf.int64)


def header_dims(images: tf.Tensor):
    """(format, width, height) of encoded images [n] from their first bytes, int64 [n]
    each, for PNG, GIF, BMP and WebP; JPEG's (format JPEG, width and height 0 here) are read
    in the per-image step by `jpeg_size`. Vectorized, outside tf.data: a function run per
    element costs its size on every request."""
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

    def le24(i):
        return le16(i) + _u(head, i + 2) * 65536

    def magic(*values, at=0):
        return tf.reduce_all(tf.equal(head[:, at:at + len(values)], tf.constant(values, tf.uint8)), axis=1)

    is_png = magic(0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A)
    is_gif = magic(0x47, 0x49, 0x46, 0x38)
    is_bmp = magic(0x42, 0x4D)
    is_jpeg = magic(0xFF, 0xD8, 0xFF)
    # WebP: "RIFF" size "WEBP", then its first chunk: "VP8 " (lossy: 14-bit sides after the
    # frame tag and start code), "VP8L" (lossless: 14-bit sides minus one after the 0x2F
    # signature) or "VP8X" (extended: 24-bit canvas sides minus one).
    is_webp = tf.logical_and(magic(0x52, 0x49, 0x46, 0x46), magic(0x57, 0x45, 0x42, 0x50, at=8))
    is_vp8 = tf.logical_and(is_webp, magic(0x56, 0x50, 0x38, 0x20, at=12))
    is_vp8l = tf.logical_and(is_webp, magic(0x56, 0x50, 0x38, 0x4C, at=12))
    vp8l_bits = le32_signed(21) % 2 ** 32
    webp_width = tf.where(is_vp8, le16(26) % 16384, tf.where(is_vp8l, vp8l_bits % 16384 + 1, le24(24) + 1))
    webp_height = tf.where(is_vp8, le16(28) % 16384, tf.where(is_vp8l, vp8l_bits // 16384 % 16384 + 1, le24(27) + 1))
    zero = tf.zeros_like(le16(0))
    fmt = tf.where(is_png, PNG, tf.where(is_gif, GIF, tf.where(is_bmp, BMP, tf.where(
        is_jpeg, JPEG, tf.where(is_webp, WEBP, UNKNOWN)))))
    width = tf.where(is_png, be32(16), tf.where(is_gif, le16(6), tf.where(
        is_bmp, tf.abs(le32_signed(18)), tf.where(is_webp, webp_width, zero))))
    height = tf.where(is_png, be32(20), tf.where(is_gif, le16(8), tf.where(
        is_bmp, tf.abs(le32_signed(22)), tf.where(is_webp, webp_height, zero))))
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


def sizes(images: tf.Tensor) -> Sizes:
    """Format, width, height and frames of encoded images [n], from their headers (a GIF's
    from every frame): vectorized, decoding nothing."""
    fmt, width, height = header_dims(images)
    frames, frame_w, frame_h, walked = gif_frames(images, tf.equal(fmt, GIF))
    width, height = tf.maximum(width, frame_w), tf.maximum(height, frame_h)
    # A GIF costs every frame it holds (see gif_frames); one not walked to its end is refused.
    frames = tf.where(walked, tf.maximum(frames, 1), tf.constant(UNBOUNDED_FRAMES, tf.int64))
    return Sizes(fmt, width, height, frames, walked)


def jpeg_size(encoded: tf.Tensor, fmt: tf.Tensor, width: tf.Tensor, height: tf.Tensor):
    """(width, height) of one image: a JPEG's from its SOFn marker, read by libjpeg's header
    reader (raises on a broken header), anything else's as given. No tf.cond: a cond in a
    tf.data function is instantiated on every request (measured: 100+ ms a call), so what
    is not a JPEG has a tiny JPEG's shape read instead."""
    is_jpeg = tf.equal(fmt, JPEG)
    shape = tf.cast(tf.io.extract_jpeg_shape(tf.where(is_jpeg, encoded, tiny("jpeg"))), tf.int64)
    return tf.where(is_jpeg, shape[1], width), tf.where(is_jpeg, shape[0], height)


def too_large(width, height, frames, walked, fmt, setting: str, max_pixels: int) -> tf.Tensor:
    """The reason an image above `setting` (max_pixels) is refused, elementwise (scalars or
    [n]): "too large: {W}x{H} pixels[ x {F} frames] > {setting} ({max_pixels})"."""
    animated = tf.logical_and(tf.equal(fmt, GIF), frames > 1)
    frame_text = tf.where(tf.logical_and(animated, walked),
                          tf.strings.join([" x ", tf.strings.as_string(frames), " frames"]), "")
    text = tf.strings.join([
        "too large: ", tf.strings.as_string(width), "x", tf.strings.as_string(height),
        " pixels", frame_text, f" > {setting} ({max_pixels})"])
    return tf.where(walked, text, f"too large: a GIF of more than {GIF_MAX_BLOCKS} blocks (frames and their data)")

"""Training-only augmentation, applied on the fly in the input pipeline.

It never lives in preprocessing_fn (Transform would freeze one random draw into the
data, and serving would augment too) nor in the exported model.
"""
from __future__ import annotations

import math
from typing import Optional

import tensorflow as tf

from xfer.components.settings import AugmentConfig


def build_augmenter(aug: AugmentConfig, seed: int) -> Optional[tf.keras.Sequential]:
    """A Sequential of random layers from the `train.augment` config, or None when empty."""
    layers = []
    flip = {(True, True): "horizontal_and_vertical", (True, False): "horizontal",
            (False, True): "vertical"}.get((aug.horizontal_flip, aug.vertical_flip))
    if flip:
        layers.append(tf.keras.layers.RandomFlip(flip, seed=seed))
    if aug.rotation:
        layers.append(tf.keras.layers.RandomRotation(aug.rotation, seed=seed + 1))
    if aug.shear:
        layers.append(RandomShear(aug.shear, seed=seed + 5))
    if aug.zoom:
        layers.append(tf.keras.layers.RandomZoom(aug.zoom, seed=seed + 2))
    if aug.translation:
        layers.append(tf.keras.layers.RandomTranslation(aug.translation, aug.translation, seed=seed + 3))
    if aug.contrast:
        layers.append(tf.keras.layers.RandomContrast(aug.contrast, seed=seed + 4))
    if not layers:
        return None
    return tf.keras.Sequential(layers, name="augment")


def shear_transforms(angles, height: int, width: int):
    """ImageProjectiveTransformV3's rows [a0 a1 a2 b0 b1 b2 c0 c1], each mapping an output
    pixel (x, y) to the input point it samples, for a shear of each angle (radians) about
    the image centre. The matrix is ImageDataGenerator's (tf-keras apply_affine_transform):
    x_in = x - sin(a) y, y_in = cos(a) y, centred; so a vertical line leans by
    atan(sin(a)) and rows spread by 1/cos(a) (a = 11.5 degrees: 11.2 degrees, 2%)."""
    cx, cy = (tf.cast(width, tf.float32) - 1.0) / 2.0, (tf.cast(height, tf.float32) - 1.0) / 2.0
    sin, cos = tf.sin(angles), tf.cos(angles)
    zero, one = tf.zeros_like(angles), tf.ones_like(angles)
    return tf.stack([one, -sin, sin * cy, zero, cos, cy - cos * cy, zero, zero], axis=1)


class RandomShear(tf.keras.__internal__.layers.BaseRandomLayer):
    """Shears each image by its own angle drawn uniformly from [-degrees, degrees], as
    ImageDataGenerator(shear_range=degrees) does (bilinear, edges filled with the nearest
    pixel). Graph ops only (one ImageProjectiveTransformV3 per batch, as Keras'
    RandomRotation and RandomZoom), so it runs inside tf.data on any host, a TPU's too,
    and keeps the input's static shape."""

    def __init__(self, degrees: float, seed: Optional[int] = None, **kwargs):
        super().__init__(seed=seed, force_generator=True, **kwargs)
        self.degrees, self.seed = float(degrees), seed

    def call(self, images, training=True):
        if not training or not self.degrees:
            return images
        batched = images.shape.rank == 4
        x = images if batched else images[None]
        limit = math.radians(self.degrees)
        angles = self._random_generator.random_uniform([tf.shape(x)[0]], -limit, limit)
        sheared = apply_shear(x, angles)
        return sheared if batched else sheared[0]

    def get_config(self):
        return {**super().get_config(), "degrees": self.degrees, "seed": self.seed}


def apply_shear(images, angles):
    """`images` [n, h, w, c] sheared by `angles` [n] (radians), as ImageDataGenerator."""
    height, width = images.shape[1], images.shape[2]
    dynamic = tf.shape(images)
    h = height if height is not None else dynamic[1]
    w = width if width is not None else dynamic[2]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=shear_transforms(tf.cast(angles, tf.float32), h, w),
        output_shape=tf.stack([h, w]) if height is None or width is None else tf.constant([height, width]),
        fill_value=tf.constant(0.0), interpolation="BILINEAR", fill_mode="NEAREST")
    out.set_shape(images.shape)
    return out

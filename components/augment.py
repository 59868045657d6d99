"""Training-only augmentation, applied on the fly in the input pipeline.

It never lives in preprocessing_fn (Transform would freeze one random draw into the
data, and serving would augment too) nor in the exported model.
"""
from __future__ import annotations

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
    if aug.zoom:
        layers.append(tf.keras.layers.RandomZoom(aug.zoom, seed=seed + 2))
    if aug.translation:
        layers.append(tf.keras.layers.RandomTranslation(aug.translation, aug.translation, seed=seed + 3))
    if aug.contrast:
        layers.append(tf.keras.layers.RandomContrast(aug.contrast, seed=seed + 4))
    if not layers:
        return None
    return tf.keras.Sequential(layers, name="augment")

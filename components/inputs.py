"""The Trainer's input pipeline: raw tf.Example TFRecords -> transform graph -> batches.

Transform is not materialized: the examples stay compact encoded images on disk and
the transform graph decodes them here, in parallel, ahead of the model. The pipeline
stays TPU-safe: static batch shapes, no tf.py_function.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tensorflow_transform as tft

from components.transform import IMAGE, LABEL

AUTOTUNE = tf.data.AUTOTUNE


def list_files(patterns: list[str]) -> list[str]:
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns}")
    return files


def make_dataset(patterns: list[str], tft_output: tft.TFTransformOutput, *, batch_size: int,
                 training: bool, seed: int, shuffle_buffer: int = 1024,
                 augmenter: Optional[tf.keras.layers.Layer] = None,
                 repeat: bool = False, drop_remainder: bool = True) -> tf.data.Dataset:
    files = list_files(patterns)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                       cycle_length=min(len(files), 4), num_parallel_calls=AUTOTUNE,
                       deterministic=not training)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    raw_spec = tft_output.raw_feature_spec()
    tft_layer = tft_output.transform_features_layer()

    def parse_and_transform(serialized):
        features = tft_layer(tf.io.parse_example(serialized, raw_spec))
        return features[IMAGE], features[LABEL]

    ds = ds.map(parse_and_transform, num_parallel_calls=AUTOTUNE, deterministic=not training)
    if augmenter is not None:
        ds = ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)

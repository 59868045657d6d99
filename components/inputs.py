"""The Trainer's input pipeline: raw tf.Example TFRecords -> transform graph -> batches.

Transform is not materialized: the examples stay compact encoded images on disk and
the transform graph decodes them here, in parallel, ahead of the model. The pipeline
stays TPU-safe: static batch shapes, no tf.py_function.

Records are read in a fixed order and shuffled by one seeded shuffle buffer. The
order a seeded shuffle produces depends only on the seed, the buffer and the number
of elements, so phase 1 on cached features (components/feature_cache.py) sees its
examples in exactly the order phase 1 on images would.
"""
from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf
import tensorflow_transform as tft

from xfer.components.transform import IMAGE, LABEL

AUTOTUNE = tf.data.AUTOTUNE


def list_files(patterns: list[str]) -> list[str]:
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns}")
    return files


def read_records(patterns: list[str]) -> tf.data.Dataset:
    """Serialized examples of all matching files, in a fixed order, read in parallel."""
    files = list_files(patterns)
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(len(files), 4), num_parallel_calls=AUTOTUNE, deterministic=True)


def count_records(patterns: list[str]) -> int:
    """Examples in the matching files (one read, no parsing)."""
    return int(read_records(patterns).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def order(ds: tf.data.Dataset, *, training: bool, seed: int, shuffle_buffer: int,
          repeat: bool, batch_size: int, drop_remainder: bool) -> tf.data.Dataset:
    """Shuffle (training only), repeat and batch: the same for images and cached features."""
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=drop_remainder)


def finish(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    # Shard by element across workers: a dataset may have fewer files than workers.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No autotuning: AUTOTUNE parallelism then means one call per core. With the
    # autotuner on, freeing an iterator after a full pass over the bench's images, the
    # model running beside it, took about 2.4 s (one core idle) in 2 to 7 of every 10 to
    # 14 passes; without it, in none of 24 (docs/speed.md). Every feature extraction and
    # every epoch's validation frees one.
    options.autotune.enabled = False
    return ds.with_options(options).prefetch(AUTOTUNE)


def make_dataset(patterns: list[str], tft_output: tft.TFTransformOutput, *, batch_size: int,
                 training: bool, seed: int, shuffle_buffer: int = 1024,
                 augmenter: Optional[tf.keras.layers.Layer] = None,
                 repeat: bool = False, drop_remainder: bool = True,
                 mixer: Optional[Callable[[tf.data.Dataset], tf.data.Dataset]] = None) -> tf.data.Dataset:
    """(image, label) batches; augmentation only when `training` and an augmenter is given;
    then, training only, `mixer` (MixUp/CutMix, components/recipe.py) turns each batch into
    (mixed images, soft targets)."""
    ds = order(read_records(patterns), training=training, seed=seed, shuffle_buffer=shuffle_buffer,
               repeat=repeat, batch_size=batch_size, drop_remainder=drop_remainder)
    raw_spec = tft_output.raw_feature_spec()
    tft_layer = tft_output.transform_features_layer()

    def parse_and_transform(serialized):
        features = tft_layer(tf.io.parse_example(serialized, raw_spec))
        return features[IMAGE], features[LABEL]

    # Deterministic: a seed must give the same batches, run after run.
    ds = ds.map(parse_and_transform, num_parallel_calls=AUTOTUNE, deterministic=True)
    if training and augmenter is not None:
        ds = ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=AUTOTUNE,
                    deterministic=True)
    if training and mixer is not None:
        ds = mixer(ds)
    return finish(ds)

"""Phase 1 on cached features (the Chinese tutorial's "fast feature extraction").

With the base frozen and called in inference mode, and no augmentation, the output
of the frozen part for an image never changes: compute it once per split, then train
the head on it for every phase-1 epoch. The features are shuffled and batched by the
same seeded `inputs.order` as images, so the head sees the same batches in the same
order as it would on images, and ends with the same weights (within float rounding).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from xfer.components import inputs

# from_tensor_slices embeds the arrays in the graph, which is capped at 2 GB.
MAX_BYTES = 1_500_000_000
# A frozen graph holds the weights and is capped at 2 GB too: larger bases are not frozen.
FREEZE_MAX_BYTES = 1_000_000_000
# Extraction runs at least this many images per call: frozen, about 780 images/s at 64
# against 715 at 32 on the bench's CPU; inference keeps only the activations in flight,
# none for gradients.
EXTRACT_BATCH = 64


def wanted(setting: str, augments: bool) -> bool:
    """Whether phase 1 runs on cached features (`on` with augmentation is a config error).
    `augments`: anything random touches the training images (augment layers, MixUp, CutMix)."""
    return setting == "on" or (setting == "auto" and not augments)


def extractor(features_model: tf.keras.Model, freeze: bool = True):
    """features_model(x, training=False) as one function for every split and batch size
    (tracing MobileNetV2 costs about a second; a function per split and per last partial
    batch traced it four times).

    With `freeze`, the weights go into the graph as constants (unless they are larger
    than FREEZE_MAX_BYTES), which Grappler's constant folding can then fold ahead of the
    run (bench/extract.py measures frozen against plain; bench/RESULTS.md has the figures).
    The Trainer does not freeze on a TPU, where the plain function reads the variables
    where they live."""
    shape = [None, *features_model.input_shape[1:]]
    plain = tf.function(lambda x: features_model(x, training=False),
                        input_signature=[tf.TensorSpec(shape, tf.float32)])
    weight_bytes = sum(int(np.prod(w.shape)) * w.dtype.size for w in features_model.weights)
    if not freeze or weight_bytes > FREEZE_MAX_BYTES:
        return plain
    # TensorFlow's own freezing (the SavedModel and TFLite converters use it); it has no
    # tf.* name in TF 2.16. tests/test_feature_cache.py checks its features against Keras'.
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(plain.get_concrete_function())
    return lambda x: frozen(x)[0]


def extract(predict, images: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels for every (image, label) batch, in the dataset's order."""
    feats, labels = [], []
    for x, y in images:
        feats.append(predict(x).numpy())
        labels.append(y.numpy())
    return np.concatenate(feats), np.concatenate(labels)


def dataset(features: np.ndarray, labels: np.ndarray, *, batch_size: int, training: bool, seed: int,
            shuffle_buffer: int, repeat: bool, drop_remainder: bool) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    ds = inputs.order(ds, training=training, seed=seed, shuffle_buffer=shuffle_buffer,
                      repeat=repeat, batch_size=batch_size, drop_remainder=drop_remainder)
    return inputs.finish(ds)


def fits(*arrays: np.ndarray) -> bool:
    return sum(a.nbytes for a in arrays) <= MAX_BYTES

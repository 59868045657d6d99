"""Transform: decode encoded image bytes to RGB, resize; labels to integer ids.

No augmentation here: Transform runs once, so anything random would be frozen into
the data, and this graph is also applied at serving time.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from xfer.components.decode import decode_image, decode_pixels, jpeg_ratio  # noqa: F401 (the graph's decoding)
from xfer.components.settings import TransformSettings

# Names of the transformed features, whatever the raw keys are called.
IMAGE = "image"
LABEL = "label"
LABEL_VOCABULARY = "label_vocabulary"


def as_vector(x) -> tf.Tensor:
    """A raw scalar feature as a dense [batch] tensor, whatever its parsed form."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(x, default_value="" if x.dtype == tf.string else 0)
    return tf.reshape(x, [-1])


def decode_images(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """A batch of encoded images [batch] -> float32 [batch, size, size, 3]."""
    return tf.map_fn(
        lambda b: decode_image(b, size), encoded,
        fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))


def preprocessing_fn(inputs, custom_config):
    s = TransformSettings.model_validate(custom_config)
    outputs = {IMAGE: decode_images(as_vector(inputs[s.image_key]), s.image_size)}
    if s.label_key in inputs:
        label = as_vector(inputs[s.label_key])
        if label.dtype == tf.string:
            label = tft.compute_and_apply_vocabulary(
                label, vocab_filename=LABEL_VOCABULARY, store_frequency=False)
        outputs[LABEL] = tf.cast(label, tf.int64)
    return outputs

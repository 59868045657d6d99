"""The one way xfer writes an image as a tf.Example: what import-folder, the embedded
digits, the benchmark's data and the tests all make, and what the pipeline reads."""
from __future__ import annotations

from typing import Optional, Union

Value = Union[bytes, str, int, float]


def _feature(value: Value):
    import tensorflow as tf

    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    if isinstance(value, float):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def image_example(image: bytes, label: Optional[Union[int, str]] = None, *, image_key: str = "image",
                  label_key: str = "label", **extra: Value) -> bytes:
    """A serialized tf.Example of one encoded image, its label (an index, or a class
    name for a vocabulary) unless None (as served), and any `extra` scalar features."""
    import tensorflow as tf

    # The feature map keeps this order when serialized: the same call, the same bytes.
    feature = {image_key: _feature(image)}
    if label is not None:
        feature[label_key] = _feature(label)
    feature.update({k: _feature(v) for k, v in extra.items()})
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

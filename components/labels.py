"""Class names for a run: from the label vocabulary, a labels file, or a count."""
from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tensorflow_transform as tft

from xfer.components.transform import LABEL_VOCABULARY


def read_labels_file(path: str) -> list[str]:
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"data.labels_file: '{path}' does not exist; give a labels.txt with one class "
            f"name per line (line i names label i), or set data.num_classes")
    with tf.io.gfile.GFile(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) < 2:
        raise ValueError(f"data.labels_file: '{path}' names {len(names)} class(es); need at least 2")
    return names


def vocabulary(tft_output: Optional[tft.TFTransformOutput]) -> Optional[list[str]]:
    """Transform's label vocabulary (string labels; entry i is class i), or None for
    integer labels, which are class indices already."""
    if tft_output is None:
        return None
    try:
        return [n.decode() if isinstance(n, bytes) else n
                for n in tft_output.vocabulary_by_name(LABEL_VOCABULARY)]
    except (ValueError, KeyError, tf.errors.NotFoundError):
        return None  # integer labels: no vocabulary


def class_names(tft_output: Optional[tft.TFTransformOutput], labels_file: Optional[str],
                num_classes: Optional[int]) -> list[str]:
    names = vocabulary(tft_output)
    if names is None and labels_file:
        names = read_labels_file(labels_file)
    if names is None:
        if not num_classes:
            raise ValueError(
                "the number of classes is unknown: labels are integers and neither "
                "data.labels_file nor data.num_classes is set; set one of them")
        names = [str(i) for i in range(num_classes)]
    if num_classes and num_classes != len(names):
        raise ValueError(
            f"data.num_classes is {num_classes} but the labels ({labels_file or 'vocabulary'}) "
            f"name {len(names)} classes; make them agree or drop data.num_classes")
    return names


def write_labels_file(path: str, names) -> str:
    """labels.txt as read_labels_file reads it: line i names label i."""
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(f"{n}\n" for n in names))
    return path

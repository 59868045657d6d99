"""The curated image-classification schema (schemas/image_classification.pbtxt), made
concrete for one dataset: the label domain [0, num_classes) and the feature keys."""
from __future__ import annotations




def _template_text() -> str:
    from importlib.resources import files
    return files("xfer.schemas").joinpath("image_classification.pbtxt").read_text()


def make_schema(num_classes: int, image_key: str = "image", label_key: str = "label"):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes; got {num_classes}")
    schema = text_format.Parse(_template_text(), schema_pb2.Schema())
    for feature in schema.feature:
        if feature.name == "label":
            feature.int_domain.max = num_classes - 1
            feature.name = label_key
        elif feature.name == "image":
            feature.name = image_key
    return schema


def write_schema(path: str, num_classes: int, image_key: str = "image", label_key: str = "label") -> str:
    import tensorflow as tf
    from google.protobuf import text_format

    schema = make_schema(num_classes, image_key, label_key)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("# Written by xfer from schemas/image_classification.pbtxt for "
                f"{num_classes} classes.\n" + text_format.MessageToString(schema))
    return path

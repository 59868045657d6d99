"""Configs for tests, built from the schema's defaults: a test states only what it is
about, and a new key with a default reaches every test without editing it."""
from typing import Optional

from xfer.components.settings import Config, ModelConfig, TrainerSettings

DIGITS = {"builtin": "digits"}


def make_config(data: Optional[dict] = None, **sections) -> Config:
    """`Config.model_validate` of the given sections (partial dicts: the rest is the
    schema's default), e.g. make_config(train={"transfer": {"epochs": 1}})."""
    return Config.model_validate({"data": data or DIGITS, **sections})


def trainer_settings(data: Optional[dict] = None, **sections) -> TrainerSettings:
    return make_config(data, **sections).trainer_settings(code_fingerprint="test")


def small_model(backbone: str = "mobilenet_v2", image_size: int = 32, **fields) -> ModelConfig:
    """A backbone that builds in seconds on CPU: random init, the narrowest MobileNetV2."""
    return ModelConfig.model_validate({"backbone": backbone, "weights": "none", "alpha": 0.35,
                                       "image_size": image_size, **fields})


def transform_graph(root, raw: list, image_size: int):
    """A real transform graph (TFT's Beam analysis of preprocessing_fn) written under
    root/transform, from raw {"image": bytes, "label": int} examples: the
    TFTransformOutput the Trainer and the export use."""
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

    from xfer.components.transform import preprocessing_fn

    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    step = make_config(model=small_model(image_size=image_size).model_dump()).transform_settings("test").model_dump()
    with beam.Pipeline(argv=[]) as p, tft_beam.Context(temp_dir=str(root / "tft-tmp")):
        fn = (p | beam.Create(raw), metadata) | tft_beam.AnalyzeDataset(lambda x: preprocessing_fn(x, step))
        _ = fn | tft_beam.WriteTransformFn(str(root / "transform"))
    metadata_io.write_metadata(metadata, str(root / "transform" / "metadata"))
    return tft.TFTransformOutput(str(root / "transform"))

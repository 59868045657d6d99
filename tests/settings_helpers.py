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

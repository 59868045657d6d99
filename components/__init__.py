"""Code that runs inside the pipeline's steps."""
import os

# TFT and TFMA need Keras 2; this must be set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _skip_autograph_for_tf_keras() -> None:
    # AutoGraph leaves `keras` unconverted but not `tf_keras` (Keras 2 under TF 2.16),
    # so every first model.fit re-parses all Keras layer sources: 27 s (VGG16) to 47 s
    # (MobileNetV2) on this 2-core machine, against under 1 s for the graph itself.
    # Keras layers are written to run unconverted, as they do under the name `keras`.
    from tensorflow.python.autograph.core import config

    rule = config.DoNotConvert("tf_keras")
    if str(rule) not in {str(r) for r in config.CONVERSION_RULES}:
        config.CONVERSION_RULES = (rule,) + tuple(config.CONVERSION_RULES)


_skip_autograph_for_tf_keras()

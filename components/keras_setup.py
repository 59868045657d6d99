"""Imported by step code that traces or fits Keras models in its process (the Trainer,
the Pusher's TFLite export).

AutoGraph leaves `keras` unconverted but not `tf_keras` (Keras 2 under TF 2.16), so every
first model.fit re-parsed all Keras layer sources: 27 s (VGG16) to 47 s (MobileNetV2) on
this 2-core machine, against under 1 s for the graph itself. Keras layers are written to
run unconverted, as they do under the name `keras`.
"""
from tensorflow.python.autograph.core import config as _autograph

_rule = _autograph.DoNotConvert("tf_keras")
if str(_rule) not in {str(r) for r in _autograph.CONVERSION_RULES}:
    _autograph.CONVERSION_RULES = (_rule,) + tuple(_autograph.CONVERSION_RULES)

"""Warm start from the model being served (`train.warm_start: served`).

The served version (the newest complete one under `push.destination`, read by the
`WarmStartModel` step before the Trainer, as ServedBaseline reads it for the Evaluator)
reaches the Trainer as TFX's `base_model` input. Both phases then start from all of its
weights, head included, instead of `model.weights`, when the class list and the model's
shape are unchanged; otherwise the Trainer falls back to `model.weights` and says why in
one line. A run's log says which weights it started from.

WarmStartModel hands on only a version that passed components/served_versions.py's
check (a damaged one passed over, a foreign one stops the run before training). This
side still reads the class names size-bounded and falls back, in its one line, on a
model that does not load as Keras: base_model is an input like any other.
"""
from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf

from xfer.components.served_versions import damage, read_class_names


def _shapes_differ(served: list, ours: list) -> Optional[str]:
    if len(served) != len(ours):
        return f"the served model has {len(served)} weight tensors, this one {len(ours)}"
    for a, b in zip(served, ours):
        if tuple(a.shape) != tuple(b.shape):
            return f"weight '{b.name}' is {tuple(b.shape)} here, {tuple(a.shape)} in the served model"
    return None


def warm_start(classifier: tf.keras.Model, base_model: Optional[str], names: list[str],
               fallback: str) -> tuple[bool, str]:
    """Set `classifier`'s weights from the served model at `base_model` (a SavedModel
    folder) if it fits; (started from it, the one line for the log). `fallback` names the
    weights used otherwise (e.g. "model.weights (imagenet)")."""
    prefix = "[xfer] warm start (train.warm_start: served):"
    if not base_model or not tf.io.gfile.exists(os.path.join(base_model, "saved_model.pb")):
        return False, f"{prefix} no model served yet; starting from {fallback}"
    served_names = read_class_names(base_model)[0]
    if served_names != list(names):
        return False, (f"{prefix} the class list changed (served: {', '.join(served_names or ['unknown'])}; "
                       f"this run: {', '.join(names)}); starting from {fallback}")
    damaged = damage(base_model)  # TensorFlow's reader trusts its input: plain protobuf first
    if damaged:
        return False, f"{prefix} the served model at {base_model} is damaged: {damaged}; starting from {fallback}"
    try:
        served = tf.keras.models.load_model(base_model, compile=False)
    except Exception as e:  # noqa: BLE001 - any failure to load: the documented fallback
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return False, (f"{prefix} the served model at {base_model} does not load as a Keras model "
                       f"({type(e).__name__}: {first}); starting from {fallback}")
    if not isinstance(served, tf.keras.Model):
        return False, (f"{prefix} the served model at {base_model} is a SavedModel but not a Keras "
                       f"model ({type(served).__name__}); starting from {fallback}")
    problem = _shapes_differ(served.weights, classifier.weights)
    if problem is not None:
        return False, (f"{prefix} the model changed (backbone, image size or head): {problem}; "
                       f"starting from {fallback}")
    classifier.set_weights(served.get_weights())
    return True, f"{prefix} starting from the served model's weights, head included ({base_model})"

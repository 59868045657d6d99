"""Warm start from the model being served (`train.warm_start: served`).

The served version (the newest complete one under `push.destination`, read by the
`WarmStartModel` step before the Trainer, as ServedBaseline reads it for the Evaluator)
reaches the Trainer as TFX's `base_model` input. Both phases then start from all of its
weights, head included, instead of `model.weights`, when the class list and the model's
shape are unchanged; otherwise the Trainer falls back to `model.weights` and says why in
one line. A run's log says which weights it started from.
"""
from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf

from xfer.components.labels import read_labels_file


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
    labels_path = os.path.join(base_model, "assets.extra", "labels.txt")
    served_names = read_labels_file(labels_path) if tf.io.gfile.exists(labels_path) else None
    if served_names != list(names):
        return False, (f"{prefix} the class list changed (served: {', '.join(served_names or ['unknown'])}; "
                       f"this run: {', '.join(names)}); starting from {fallback}")
    served = tf.keras.models.load_model(base_model, compile=False)
    problem = _shapes_differ(served.weights, classifier.weights)
    if problem is not None:
        return False, (f"{prefix} the model changed (backbone, image size or head): {problem}; "
                       f"starting from {fallback}")
    classifier.set_weights(served.get_weights())
    return True, f"{prefix} starting from the served model's weights, head included ({base_model})"

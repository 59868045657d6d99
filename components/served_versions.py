"""The served version the baseline and the warm start hand on: checked before it is.

A version under `push.destination` can be damaged (a saved_model.pb cut short or
overwritten, a variables file cut short) or foreign (a SavedModel that is not a
classifier xfer exported, e.g. a tf.Module saved by hand). Handed on unchecked, the
Evaluator fails with a bare DecodeError and a warm start crashes the Trainer, naming no
version, so every later run fails the same way. So before a version is handed on, its
saved_model.pb is read in plain protobuf (size bounded: TensorFlow's reader trusts its
input), its serving graph must have the signatures xfer exports (components/export.py)
and its class names (assets.extra/labels.txt), and then it must load.

What happens to a bad version follows what TF Serving does with it. Its file-system
source (`latest` policy, the default) aspires the highest numbered folder, whatever it
holds; the model server's AvailabilityPreservingPolicy unloads the version it serves only
once an aspired one is ready (tensorflow/serving
tensorflow_serving/sources/storage_path/file_system_storage_path_source.cc,
core/availability_preserving_policy.cc). So:

- A damaged version never becomes ready: a running server keeps serving the version it
  had; a restarted one serves nothing. What clients are served is the newest version that
  loads, so the damaged one is passed over to it, named with its reason in the log and
  the run's summary. The next push (numbered after it) is what replaces it.
- A foreign SavedModel loads, so TF Serving serves it: that is the served model. Passing
  over it would judge the candidate against a model nobody is served, and the push would
  replace a model that is not this pipeline's. The run stops, naming the version and the
  fix (remove it, or give this pipeline a push.destination of its own).
- A classifier of other classes (the baseline only: the candidate's labels.txt against
  the served one's) is served too, but accuracy against it measures nothing: the
  candidate is judged on value thresholds alone, as on a first run, and the run says why.
  The warm start's class check stays in the Trainer (components/warm_start.py), which
  falls back to model.weights, as documented.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import tensorflow as tf

from xfer.components.pusher import complete_versions

SAVED_MODEL_PB = "saved_model.pb"
LABELS = os.path.join("assets.extra", "labels.txt")
# xfer's saved_model.pb measured 0.5 MB (VGG16) and 2.0 MB (MobileNetV2): the graph of the
# signatures, not the weights. Far above any export, far below protobuf's 2 GiB limit.
MAX_SAVED_MODEL_PB = 256 * 2**20
MAX_LABELS_BYTES = 4 * 2**20
SERVE_TAG = "serve"


class ForeignServedVersion(ValueError):
    """The newest loadable version under push.destination is not a classifier xfer exported."""


@dataclass
class Inspected:
    """What reading a version in plain code found (nothing loaded by TensorFlow)."""
    damaged: Optional[str] = None   # why no model server can load it
    foreign: Optional[str] = None   # why it is not a classifier xfer exported
    class_names: list[str] = field(default_factory=list)


def _size(path: str) -> Optional[int]:
    try:
        return tf.io.gfile.stat(path).length
    except tf.errors.NotFoundError:
        return None


def damage(version_dir: str) -> Optional[str]:
    """Why the saved_model.pb in `version_dir` cannot be loaded by any model server
    (missing, does not parse, no serving graph), or None. Plain protobuf, size bounded."""
    return _read_graph(version_dir)[1]


def _read_graph(version_dir: str):
    """(the serving MetaGraphDef, None) or (None, why there is none)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(version_dir, SAVED_MODEL_PB)
    size = _size(path)
    if size is None:
        return None, f"it has no {SAVED_MODEL_PB}"
    if size > MAX_SAVED_MODEL_PB:
        return None, (f"its {SAVED_MODEL_PB} is {size:,} bytes, above the {MAX_SAVED_MODEL_PB:,} any "
                      f"export could need; not read")
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read(MAX_SAVED_MODEL_PB + 1)
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(data)
    except DecodeError as e:
        return None, f"its {SAVED_MODEL_PB} ({size:,} bytes) does not parse as a SavedModel ({e})"
    graphs = [g for g in saved.meta_graphs if SERVE_TAG in g.meta_info_def.tags]
    if not graphs:
        return None, (f"its {SAVED_MODEL_PB} ({size:,} bytes) holds no graph tagged '{SERVE_TAG}' "
                      f"(cut short, or not a SavedModel)")
    return graphs[0], None


def _missing_signatures(graph) -> list[str]:
    """The signatures xfer exports that `graph` lacks, or has with other inputs."""
    # Here, not at the top: the Pusher's damage() check needs neither export nor its imports.
    from tensorflow.core.framework import types_pb2

    from xfer.components.export import SERVING_EXAMPLES, TRANSFORM_FEATURES

    # Each one's single string input: raw image bytes, or serialized tf.Examples.
    wanted = {"serving_default": "images", SERVING_EXAMPLES: "examples", TRANSFORM_FEATURES: "examples"}
    missing = []
    for name, input_name in wanted.items():
        inputs = dict(graph.signature_def[name].inputs) if name in graph.signature_def else {}
        if list(inputs) != [input_name] or inputs[input_name].dtype != types_pb2.DT_STRING:
            missing.append(f"'{name}' ({input_name}: string)")
    return missing


def read_class_names(model_dir: str) -> tuple[list[str], Optional[str]]:
    """The class names in `model_dir`'s assets.extra/labels.txt (line i names class i),
    read in plain code, size bounded; or ([], why not)."""
    path = os.path.join(model_dir, LABELS)
    size = _size(path)
    if size is None:
        return [], f"it has no {LABELS}"
    if size > MAX_LABELS_BYTES:
        return [], f"its {LABELS} is {size:,} bytes, above {MAX_LABELS_BYTES:,}; not read"
    with tf.io.gfile.GFile(path, "rb") as f:
        text = f.read(MAX_LABELS_BYTES + 1).decode("utf-8", "replace")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) < 2:
        return [], f"its {LABELS} names {len(names)} class(es)"
    return names, None


def inspect(version_dir: str) -> Inspected:
    """The version read in plain code: damaged, foreign, or its class names."""
    graph, damaged = _read_graph(version_dir)
    if damaged:
        return Inspected(damaged=damaged)
    missing = _missing_signatures(graph)
    if missing:
        has = ", ".join(sorted(n for n in graph.signature_def if not n.startswith("__"))) or "none"
        return Inspected(foreign=f"it lacks the signature(s) xfer exports: {', '.join(missing)} "
                                 f"(it has: {has})")
    names, problem = read_class_names(version_dir)
    if problem:
        return Inspected(foreign=f"{problem} (every model xfer exports names its classes there)")
    return Inspected(class_names=names)


def load_failure(version_dir: str) -> Optional[str]:
    """Why TensorFlow cannot load the SavedModel (variables cut short, ...), or None.
    Called only once its saved_model.pb has been read and checked in plain code."""
    try:
        tf.saved_model.load(version_dir, tags=[SERVE_TAG])
    except Exception as e:  # noqa: BLE001 - whatever fails, a model server fails alike
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return f"it does not load ({type(e).__name__}: {first})"
    return None


@dataclass
class Choice:
    """The version to hand on (None: none), and what the run must say about it."""
    path: Optional[str] = None
    version: int = 0
    passed_over: list[str] = field(default_factory=list)  # one line per damaged version
    not_comparable: Optional[str] = None  # why the served version is no baseline (classes)

    def note(self) -> Optional[str]:
        """One line for the log and the run's summary, when there is something to say."""
        parts = [f"passed over {line}" for line in self.passed_over]
        if self.not_comparable:
            parts.append(self.not_comparable)
        elif parts:
            parts.append(f"the served model is version {self.version} ({self.path})" if self.path
                         else "no version loads: nothing is served")
        return "; ".join(parts) or None


def choose(destination: str, class_names: Optional[list[str]] = None) -> Choice:
    """The newest complete version under `destination` that loads, with the damaged newer
    ones it passed over. Raises ForeignServedVersion when that version is not a classifier
    xfer exported. With `class_names` (the candidate's), a version of other classes is
    not handed on (`not_comparable` says why)."""
    choice = Choice()
    for version in reversed(complete_versions(destination)):
        path = os.path.join(destination, str(version))
        found = inspect(path)
        if found.foreign:
            raise ForeignServedVersion(
                f"push.destination: version {version} ({path}) is not a classifier xfer exported: "
                f"{found.foreign}. A model server loads it, so it is the model being served: the "
                f"candidate cannot be compared with it, and a push would replace a model that is not "
                f"this pipeline's. If it does not belong there, remove {path}; if {destination} is "
                f"another model's folder, set push.destination to a folder of this pipeline's own")
        damaged = found.damaged or load_failure(path)
        if damaged:
            choice.passed_over.append(
                f"version {version} ({path}): {damaged}; no model server can load it (a running one "
                f"keeps serving the version it had, a restarted one serves nothing): remove it, or "
                f"push a good model (the next version replaces it)")
            continue
        if class_names is not None and found.class_names != list(class_names):
            choice.not_comparable = (
                f"version {version} ({path}) classifies other classes (served: "
                f"{', '.join(found.class_names)}; this model: {', '.join(class_names)}): accuracy "
                f"against it measures nothing, so the candidate is judged on value thresholds alone")
            return choice
        choice.path, choice.version = path, version
        return choice
    return choice

"""The Evaluator's baseline: the model being served now, read at run time by a step.

TFX's way is a Resolver node (LatestBlessedModelStrategy) answered by the orchestrator
from its metadata store. The open-source Kubeflow Pipelines backend refuses resolver
executors ("resolver executors not implemented", kubeflow/pipelines
backend/src/v2/compiler/argocompiler/dag.go), so the baseline is instead whatever a
model server would load: the newest complete version under `push.destination`. The
same step runs on every runner, so "baseline" means the same thing everywhere, and a
model pushed by hand or by another pipeline counts too.

The step copies that version into its output Model artifact (`Format-Serving`, the
layout the Evaluator reads). With nothing served yet the artifact stays empty and the
Evaluator judges the candidate on value thresholds alone (components/evaluator.py).
It must never come from a cache: the runners switch caching off for this node.

Before it is copied, a version is checked (components/served_versions.py): a damaged
newest version is passed over to the newest one that loads, a foreign one stops the run,
one of other classes than the candidate's is no baseline; the step's log and the run's
summary say which and why. WarmStartModel applies the same check, on every runner alike.
"""

import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from xfer.components.pusher import COMPLETE_MARKER, SOURCE_FILE

SERVING_DIR = "Format-Serving"  # tfx.utils.path_utils.serving_model_dir's folder name
# Custom properties of the baseline artifact, read by the run summary.
SERVED_VERSION = "served_version"   # 0: nothing served
SERVED_PATH = "served_path"
SERVED_NOTE = "served_note"  # versions passed over, or why the served one is no baseline


def has_baseline(model_uri: str) -> bool:
    """Whether a baseline artifact holds a model (the step found a served version)."""
    import tensorflow as tf

    return tf.io.gfile.exists(os.path.join(model_uri, SERVING_DIR, "saved_model.pb"))


def copy_tree(src: str, dst: str, skip: tuple = ()) -> None:
    """A folder copied with tf.io.gfile (local or gs://), files only: no zero-byte
    "directory" objects are written on object stores (kubeflow/pipelines#13476)."""
    import tensorflow as tf

    for folder, _, files in tf.io.gfile.walk(src):
        rel = os.path.relpath(folder, src)
        for name in files:
            if rel == "." and name in skip:
                continue
            target = os.path.normpath(os.path.join(dst, rel, name))
            if "://" not in target:
                os.makedirs(os.path.dirname(target), exist_ok=True)
            tf.io.gfile.copy(os.path.join(folder, name), target, overwrite=True)


def copy_served(push_destination: str, model, class_names: "list[str] | None" = None):
    """The newest complete version under `push_destination` that passes the check,
    copied into `model`'s Format-Serving, its version, path and note recorded; returns
    the Choice (its path None when nothing is handed on). Raises ForeignServedVersion."""
    from xfer.components.served_versions import choose

    choice = choose(push_destination, class_names)
    note = choice.note()
    if note:
        model.set_string_custom_property(SERVED_NOTE, note)
    if choice.path is None:
        model.set_int_custom_property(SERVED_VERSION, 0)
        return choice
    copy_tree(choice.path, os.path.join(model.uri, SERVING_DIR), skip=(COMPLETE_MARKER, SOURCE_FILE))
    model.set_int_custom_property(SERVED_VERSION, choice.version)
    model.set_string_custom_property(SERVED_PATH, choice.path)
    return choice


def _say(step: str, choice) -> None:
    """One line per version passed over, and the one for a served model of other classes."""
    for line in choice.passed_over:
        print(f"[xfer] {step}: passed over {line}", flush=True)
    if choice.not_comparable:
        print(f"[xfer] {step}: {choice.not_comparable}", flush=True)


@component
def WarmStartModel(
    examples: InputArtifact[standard_artifacts.Examples],
    model: OutputArtifact[standard_artifacts.Model],
    push_destination: Parameter[str],
    run_nonce: Parameter[str] = "",
) -> None:
    """The served model, read just before the Trainer for `train.warm_start: served`
    (the Trainer's base_model). `examples` only orders it after DataCheck. The class
    list is compared in the Trainer, which knows this run's (components/warm_start.py)."""
    del examples, run_nonce
    choice = copy_served(push_destination, model)
    _say("warm start", choice)
    served = choice.path or ("none that loads" if choice.passed_over else "none yet")
    print(f"[xfer] warm start: the served model is {served}", flush=True)


@component
def ServedBaseline(
    candidate: InputArtifact[standard_artifacts.Model],
    baseline: OutputArtifact[standard_artifacts.Model],
    push_destination: Parameter[str],
    run_nonce: Parameter[str] = "",
) -> None:
    # `candidate` orders this step after the Trainer, so the baseline is what is served
    # when the candidate is judged, even after hours of training; its class names decide
    # whether the served model can be its baseline.
    # `run_nonce` is {{$.pipeline_job_uuid}} on Kubeflow / Vertex: a cache key that
    # differs every run, whatever caching a submit asks for.
    from xfer.components.served_versions import read_class_names

    del run_nonce
    names = read_class_names(os.path.join(candidate.uri, SERVING_DIR))[0] or None
    choice = copy_served(push_destination, baseline, names)
    _say("baseline", choice)
    if choice.not_comparable:
        return
    if choice.path is None:
        why = (f"no version under {push_destination} loads" if choice.passed_over else
               f"nothing served under {push_destination} yet")
        print(f"[xfer] baseline: {why}; the candidate is judged on value thresholds alone", flush=True)
        return
    print(f"[xfer] baseline: the served model, version {choice.version} ({choice.path})", flush=True)

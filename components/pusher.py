"""The Pusher's executor: numbered versions, never half-written, never duplicated.

TFX's own Pusher names versions by Unix time and copies straight into the serving
folder, so a model server polling it can load a half-copied version, and a re-run
whose Trainer came from cache pushes the same model again. Here:

- versions are 1, 2, 3, ... (what TF Serving and Vertex expect);
- a version is copied into a hidden temporary folder and renamed into place (atomic on
  a local filesystem); on object stores (gs://), where there is no rename, a
  `_XFER_COMPLETE` marker is written last and readers (`xfer predict`) require it;
- numbering continues after the highest numbered folder already there, complete or
  not, made by xfer or not (a destination that already holds `1/`, `2/` gets `3/`);
  only complete versions (with the marker) count as served;
- a blessed model that is already the latest version creates no new version;
- a failed push leaves no staging folder behind (it is removed, the error re-raised);
- `push.keep` bounds how many versions stay (oldest removed first);
- with `push.tflite`, the version also holds `assets.extra/model.tflite`, written
  before the version becomes visible. It is made here, not in the Trainer, so turning
  it on exports the model already trained instead of training a new one;
- every new version holds its model card (MODEL_CARD.md, model_card.html;
  components/model_card.py), written in the staging folder (before the marker on gs://),
  so a version never appears without it and a version that is not new gets none.

The card needs more than TFX's Pusher receives (the model and its blessing), so the
component is TFX's Pusher with its spec extended by optional inputs: the Trainer's
model run, DataCheck's examples, the Evaluator's evaluation and the baseline the
Evaluator judged against. They are ordinary channels, so they reach the executor the
same way on the local runner and on Kubeflow / Vertex (where there is no metadata store
to look artifacts up in), and `xfer compile` lists them as the step's inputs.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from typing import Any, Callable, Optional

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components import Pusher as TfxPusher
from tfx.components.pusher import executor as tfx_pusher
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, json_utils, proto_utils

from xfer.components import kfp_artifacts
from xfer.components.settings import PusherSettings

COMPLETE_MARKER = "_XFER_COMPLETE"
SOURCE_FILE = "xfer_source.json"
VERSION_NAME = re.compile(r"[0-9]+")


def version_number(name: str) -> Optional[int]:
    """The version a folder under a push destination stands for, or None: ASCII digits
    only. `str.isdigit` also accepts Unicode digits ('²', '1²', '١'), on which int()
    fails or reads another number; such a folder is not a version, whoever made it.
    Every place that lists versions goes through here (this module's listings; the
    baseline, the warm start and `xfer predict` read them)."""
    name = name.rstrip("/")  # gs:// listings end folder names with '/'
    return int(name) if VERSION_NAME.fullmatch(name) else None


def numbered_folders(base: str) -> dict[int, str]:
    """{version: folder name} of every numbered folder under `base`, complete or not."""
    if not tf.io.gfile.exists(base):
        return {}
    found = {}
    for name in tf.io.gfile.listdir(base):
        number = version_number(name)
        if number is not None:
            found[number] = name.rstrip("/")
    return found


def complete_versions(base: str) -> list[int]:
    """The numbered versions under `base` that were written completely, ascending."""
    return sorted(number for number, name in numbered_folders(base).items()
                  if tf.io.gfile.exists(os.path.join(base, name, COMPLETE_MARKER)))


def highest_version(base: str) -> int:
    """The highest numbered folder under `base`, complete or not (0 if none): the next
    version must not collide with any of them, whoever wrote them."""
    return max(numbered_folders(base), default=0)


def latest_version_dir(base: str) -> Optional[str]:
    versions = complete_versions(base)
    return os.path.join(base, str(versions[-1])) if versions else None


def _source_of(version_dir: str) -> Optional[dict]:
    path = os.path.join(version_dir, SOURCE_FILE)
    if not tf.io.gfile.exists(path):
        return None
    source = json.loads(tf.io.gfile.GFile(path).read())
    return {"model_uri": source.get("model_uri"), "tflite": tflite_kind(source.get("tflite"))}


def tflite_kind(value) -> Any:
    """push.tflite as a version's source records it: False or the kind ('float32' for
    the true of versions pushed before the kinds)."""
    return "float32" if value is True else (value or False)


def push_version(model_path: str, model_uri: str, base: str, keep: Optional[int],
                 tflite: Any = False, card: Optional[Callable[[str, int], Any]] = None,
                 tflite_check: Optional[dict] = None) -> tuple[str, bool]:
    """Copy the SavedModel at `model_path` to the next version under `base`, with a
    TFLite export of it if asked, and `card(folder, version)` called to write into the
    version's folder before it becomes visible (only for a new version).

    Returns (version dir, whether a new version was written)."""
    source = {"model_uri": model_uri, "tflite": tflite_kind(tflite)}
    versions = complete_versions(base)
    if versions:
        latest = os.path.join(base, str(versions[-1]))
        # The same model asking for another export is a new version: a version never changes.
        # A latest version whose saved_model.pb is damaged is pushed again as a new one:
        # a model server cannot load it, and only a newer version replaces it.
        from xfer.components.served_versions import damage
        if _source_of(latest) == source and damage(latest) is None:
            return latest, False
    # After every numbered folder there, not only the complete ones: foreign or
    # half-written folders are left alone, and never collided with.
    version = highest_version(base) + 1
    final = os.path.join(base, str(version))
    tf.io.gfile.makedirs(base)
    if "://" in base:
        # No atomic rename on object stores: copy in place, then the marker, last.
        target = final
    else:
        target = os.path.join(base, f".staging-{version}-{uuid.uuid4().hex[:8]}")
    try:
        _write_version(model_path, target, source, (lambda folder: card(folder, version)) if card else None,
                       tflite_check)
        if target != final:
            os.rename(target, final)  # readers see no version or the whole version
    except BaseException:
        # Nothing half-written stays behind (a KeyboardInterrupt too); a SIGKILL cannot
        # be caught: its staging folder is hidden from readers and never numbered.
        if tf.io.gfile.exists(target):
            tf.io.gfile.rmtree(target)
        raise
    if keep:
        for old in versions[: max(0, len(versions) + 1 - keep)]:
            tf.io.gfile.rmtree(os.path.join(base, str(old)))
    return final, True


def _write_version(model_path: str, version_dir: str, source: dict,
                   card: Optional[Callable[[str], Any]] = None, tflite_check: Optional[dict] = None) -> None:
    """Everything a version holds, the complete marker last. `tflite_check`: the examples
    and the agreement the TFLite file is measured against (components/tflite_export.py)."""
    io_utils.copy_dir(model_path, version_dir)
    if source["tflite"]:
        write_tflite(model_path, version_dir, kind=source["tflite"], **(tflite_check or {}))
    if card is not None:
        card(version_dir)
    with tf.io.gfile.GFile(os.path.join(version_dir, SOURCE_FILE), "w") as f:
        json.dump(source, f)
    with tf.io.gfile.GFile(os.path.join(version_dir, COMPLETE_MARKER), "w") as f:
        f.write("")


def write_tflite(model_path: str, version_dir: str, kind: str = "float32", examples_uri: Optional[str] = None,
                 min_agreement: Optional[float] = None) -> Optional[str]:
    """assets.extra/model.tflite in `version_dir`, from the Keras model saved at
    `model_path` (beside the labels.txt the Trainer wrote there), measured on the eval
    split of `examples_uri` when given; None when its agreement is below `min_agreement`."""
    # Here, not at the top: a push without TFLite needs neither Keras nor the transform code.
    from xfer.components import tflite_export
    return tflite_export.write(model_path, version_dir, kind, examples_uri, min_agreement)


# The Pusher's extra inputs and parameter (all optional: TFX's own inputs still suffice).
MODEL_RUN_KEY, EXAMPLES_KEY, EVALUATION_KEY, BASELINE_KEY = "model_run", "examples", "evaluation", "baseline_model"
RUN_ID_KEY = "run_id"
MODEL_CARD_PROPERTY = "model_card"
# The outputs the Kubeflow UI draws (components/kfp_artifacts.py).
BLESSING_REPORT_KEY, MODEL_CARD_KEY = "blessing_report", "model_card"


class PusherSpec(standard_component_specs.PusherSpec):
    """TFX's Pusher spec with the inputs the model card is read from."""
    PARAMETERS = {**standard_component_specs.PusherSpec.PARAMETERS,
                  RUN_ID_KEY: ExecutionParameter(type=str, optional=True)}
    INPUTS = {**standard_component_specs.PusherSpec.INPUTS,
              MODEL_RUN_KEY: ChannelParameter(type=standard_artifacts.ModelRun, optional=True),
              EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
              EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation, optional=True),
              BASELINE_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True)}
    OUTPUTS = {**standard_component_specs.PusherSpec.OUTPUTS,
               BLESSING_REPORT_KEY: ChannelParameter(type=kfp_artifacts.HTML),
               MODEL_CARD_KEY: ChannelParameter(type=kfp_artifacts.Markdown)}


def _one(input_dict: dict, key: str):
    found = input_dict.get(key) or []
    return found[0] if found else None


def _prop(artifact, name: str):
    if artifact is None or not artifact.has_custom_property(name):
        return None
    return artifact.get_custom_property(name)


class Executor(tfx_pusher.Executor):
    """Pushes a blessed model to `push.destination` as the next numbered version."""

    def Do(self, input_dict: dict[str, list], output_dict: dict[str, list],
           exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        pushed = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        s = PusherSettings.model_validate_json(exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(pushed)
            fill_kfp_views(input_dict, output_dict, s, blessed=False, card_path=None)
            return
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
        base = destination.filesystem.base_directory
        model_path = self.GetModelPath(input_dict)
        run_id = exec_properties.get(RUN_ID_KEY) or getattr(self._context, "pipeline_run_id", None)

        def card(folder: str, version: int) -> None:
            from xfer.components import model_card
            examples, baseline = _one(input_dict, EXAMPLES_KEY), _one(input_dict, BASELINE_KEY)
            served = _prop(baseline, "served_version")
            spans = _prop(examples, "spans") or _prop(examples, "span")
            # The canary and TF Serving's warm-up requests, on the staged copy (components/canary.py):
            # a refusal raises CanaryRefused, and push_version removes the staging folder.
            from xfer.components import canary
            serving_check = canary.before_push(folder, getattr(examples, "uri", None), s.image_key,
                                               getattr(_one(input_dict, EVALUATION_KEY), "uri", None))
            model_card.write(model_card.Inputs(
                model_dir=model_path, model_uri=model.uri, version=version, destination=base, eval=s.eval,
                canary=serving_check,
                blessed=True, code_fingerprint=s.code_fingerprint, run_id=run_id, image=s.image,
                model_run_uri=getattr(_one(input_dict, MODEL_RUN_KEY), "uri", None),
                examples_uri=getattr(examples, "uri", None),
                spans=None if spans is None else str(spans), bad_records=_prop(examples, "bad_records"),
                evaluation_uri=getattr(_one(input_dict, EVALUATION_KEY), "uri", None),
                baseline=f"version {served} ({_prop(baseline, 'served_path')})" if served else None), folder)

        examples = _one(input_dict, EXAMPLES_KEY)
        version_dir, new = push_version(
            model_path, model.uri, base, s.keep, tflite=s.tflite, card=card,
            tflite_check={"examples_uri": examples.uri, "min_agreement": s.tflite_min_agreement} if examples else None)
        if new:
            logging.info("Model pushed as new version %s.", version_dir)
        else:
            logging.info("Model already pushed as %s; no new version.", version_dir)
        self._MarkPushed(pushed, pushed_destination=version_dir,
                         pushed_version=os.path.basename(version_dir))
        pushed.set_int_custom_property("new_version", int(new))
        from xfer.components.model_card import MARKDOWN
        card_path = os.path.join(version_dir, MARKDOWN)
        if tf.io.gfile.exists(card_path):
            pushed.set_string_custom_property(MODEL_CARD_PROPERTY, card_path)
        fill_kfp_views(input_dict, output_dict, s, blessed=True,
                       card_path=card_path if tf.io.gfile.exists(card_path) else None)
        if s.vertex_model_registry and new:
            from xfer.components.model_registry import register
            name = register(version_dir, s.vertex_model_registry)
            logging.info("Registered %s in the Vertex AI Model Registry as %s.", version_dir, name)
            pushed.set_string_custom_property("vertex_model", name)


def fill_kfp_views(input_dict: dict, output_dict: dict, s: PusherSettings, blessed: bool,
                   card_path: Optional[str]) -> None:
    """The blessing report (system.HTML, the renderer's view: pipeline/html_views.py) and
    the pushed version's model card (system.Markdown, the card's own MODEL_CARD.md), or one
    line saying why there is none: a KFP viewer given no file shows an error."""
    from xfer.pipeline import html_views

    report = _one(output_dict, BLESSING_REPORT_KEY)
    if report is not None:
        evaluation, model = _one(input_dict, EVALUATION_KEY), _one(input_dict, standard_component_specs.MODEL_KEY)
        if evaluation is None:
            view = html_views.lines_view("Blessing report", ["no evaluation reached this step: no report"])
        else:
            view = html_views.blessing_view(evaluation.uri, blessed, getattr(model, "uri", None), s.eval)
        kfp_artifacts.write_document(report, kfp_artifacts.html_page("Blessing report", [view]), "blessing report")
    card = _one(output_dict, MODEL_CARD_KEY)
    if card is not None:
        if card_path is not None:
            text = tf.io.gfile.GFile(card_path).read()
        elif blessed:
            text = "# Model card\n\nThe pushed version has no model card (MODEL_CARD.md).\n"
        else:
            text = "# Model card\n\nNothing pushed: the model was not blessed, so there is no new version and no card.\n"
        kfp_artifacts.write_document(card, text, "model card")


class Pusher(TfxPusher):
    """TFX's Pusher, run by the executor above, with the model card's inputs."""
    SPEC_CLASS = PusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel,
                 push_destination: pusher_pb2.PushDestination, custom_config: dict,
                 model_run: Optional[types.BaseChannel] = None, examples: Optional[types.BaseChannel] = None,
                 evaluation: Optional[types.BaseChannel] = None, baseline_model: Optional[types.BaseChannel] = None,
                 run_id: str = ""):
        spec = PusherSpec(
            model=model, model_blessing=model_blessing, push_destination=push_destination,
            custom_config=json_utils.dumps(custom_config), run_id=run_id,
            model_run=model_run, examples=examples, evaluation=evaluation, baseline_model=baseline_model,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
            blessing_report=types.Channel(type=kfp_artifacts.HTML),
            model_card=types.Channel(type=kfp_artifacts.Markdown))
        # TFX's Pusher.__init__ builds TFX's spec; this one is built above.
        base_component.BaseComponent.__init__(self, spec=spec)

"""TFX's Evaluator, reading its baseline from the ServedBaseline step.

A Kubeflow task always emits every output it declares, so "nothing is served yet"
arrives as an empty baseline artifact rather than no artifact. TFX's Evaluator treats
an empty baseline list as "no baseline" (change thresholds are rubber-stamped, value
thresholds still judge); this executor turns an empty artifact into that empty list,
so the first run means the same on every runner.

With `eval.tta: flips` the model spec names the TTA signature (components/export.py).
Every model exported since it existed has it; a served model exported before does not,
and TFMA evaluates the baseline with the candidate's signature. Then candidate and
baseline are both evaluated in one pass (`serving_examples`) for that run, and the run
says so: a TTA candidate judged against a one-pass baseline would be favoured by the
averaging alone. TTA applies from the next run once a model exported with it is served.
The signature TFMA actually used is in its output (eval_config.json), which the blessing
report and the model card read.
"""
from __future__ import annotations

import os
from typing import Optional

from tfx.components import Evaluator as TfxEvaluator
from tfx.components.evaluator import executor as tfx_evaluator
from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_component_specs
from tfx.types.component_spec import ChannelParameter

from xfer.components import kfp_artifacts
from xfer.components.baseline import SERVED_PATH, SERVED_VERSION, SERVING_DIR, has_baseline


class CandidateLacksSignature(ValueError):
    """The candidate model has no signature for the configured eval.tta."""


def saved_signatures(model_dir: str) -> set[str]:
    """The signature names of the SavedModel in `model_dir`, read from saved_model.pb
    without loading the model."""
    from tensorflow.python.saved_model import loader_impl

    saved = loader_impl.parse_saved_model(model_dir)
    return {name for graph in saved.meta_graphs for name in graph.signature_def}


def tta_fallback(eval_config_json: str, candidate_dir: str, baseline_dir: Optional[str],
                 baseline_name: str = "the served model") -> tuple[str, Optional[str]]:
    """(the eval config to run, a note when TTA is set aside for this run).

    The candidate must have the configured signature; a baseline without it makes both
    models be evaluated in one pass, and the note says why."""
    import tensorflow_model_analysis as tfma
    from tfx.utils import proto_utils

    from xfer.components.export import SERVING_EXAMPLES, TTA_SIGNATURES

    config = tfma.EvalConfig()
    proto_utils.json_to_proto(eval_config_json, config)
    wanted = {spec.signature_name for spec in config.model_specs} & set(TTA_SIGNATURES.values())
    if not wanted:
        return eval_config_json, None
    missing = wanted - saved_signatures(candidate_dir)
    if missing:
        raise CandidateLacksSignature(
            f"eval.tta: the candidate model has no '{sorted(missing)[0]}' signature ({candidate_dir}): it "
            f"was exported before eval.tta existed (a Trainer output reused by a partial run?); re-run "
            f"the Trainer (xfer run --from Trainer) or set eval.tta: false")
    if baseline_dir is None or not (wanted - saved_signatures(baseline_dir)):
        return eval_config_json, None
    for spec in config.model_specs:
        spec.signature_name = SERVING_EXAMPLES
    note = (f"eval.tta set aside for this run: {baseline_name} was exported before eval.tta existed and "
            f"has no '{sorted(wanted)[0]}' signature, so the candidate and it are both evaluated in one "
            f"pass (serving_examples) and compared alike; TTA applies once a model exported with it is "
            f"served (the next push), or set eval.tta: false to silence this")
    return proto_utils.proto_to_json(config), note


def with_floor_threshold(eval_config_json: str) -> str:
    """The eval config with `>= 0` as value threshold wherever a threshold has none.

    With no baseline, TFX drops change thresholds; with no value threshold either, TFMA
    has nothing to validate and TFX writes no blessing at all, so a config with only
    `eval.max_drop` could never bless its first model, and so never have a baseline.
    A floor that cannot fail makes that first run blessed, by TFMA's own validation."""
    import tensorflow_model_analysis as tfma
    from tfx.utils import proto_utils

    config = tfma.EvalConfig()
    proto_utils.json_to_proto(eval_config_json, config)
    for spec in config.metrics_specs:
        for metric in spec.metrics:
            for per_slice in metric.per_slice_thresholds:
                if not per_slice.threshold.HasField("value_threshold"):
                    per_slice.threshold.value_threshold.lower_bound.value = 0.0
    return proto_utils.proto_to_json(config)


class Executor(tfx_evaluator.Executor):
    def Do(self, input_dict, output_dict, exec_properties):
        from tfx.types import artifact_utils
        from tfx.utils import path_utils

        key = standard_component_specs.BASELINE_MODEL_KEY
        config_key = standard_component_specs.EVAL_CONFIG_KEY
        baselines = [a for a in input_dict.get(key, []) if has_baseline(a.uri)]
        if not baselines and exec_properties.get(config_key):
            exec_properties = {**exec_properties, config_key: with_floor_threshold(exec_properties[config_key])}
        if exec_properties.get(config_key):
            model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
            baseline = baselines[0] if baselines else None
            name = "the served model"
            if baseline is not None and baseline.has_custom_property(SERVED_VERSION):
                name = (f"the served model (version {baseline.get_int_custom_property(SERVED_VERSION)}, "
                        f"{baseline.get_string_custom_property(SERVED_PATH)})")
            config, note = tta_fallback(
                exec_properties[config_key], path_utils.serving_model_path(model.uri),
                os.path.join(baseline.uri, SERVING_DIR) if baseline is not None else None, name)
            if note:
                print(f"[xfer] {note}", flush=True)
                exec_properties = {**exec_properties, config_key: config}
        super().Do({**input_dict, key: baselines}, output_dict, exec_properties)
        fill_kfp_views(input_dict, output_dict)


# The outputs the Kubeflow UI draws (components/kfp_artifacts.py).
METRICS_KEY, CONFUSION_MATRIX_KEY = "metrics", "confusion_matrix"


def fill_kfp_views(input_dict: dict, output_dict: dict) -> None:
    """Accuracy and recall per class (system.Metrics) and the confusion matrix
    (system.ClassificationMetrics), from the evaluation TFMA just wrote, with the class
    names the Trainer exported beside the model."""
    from tfx.types import artifact_utils
    from tfx.utils import path_utils

    from xfer.components.model_card import class_names
    from xfer.pipeline.blessing import read_blessing

    if not output_dict.get(METRICS_KEY) and not output_dict.get(CONFUSION_MATRIX_KEY):
        return
    evaluation = artifact_utils.get_single_instance(output_dict[standard_component_specs.EVALUATION_KEY])
    blessing = artifact_utils.get_single_instance(output_dict[standard_component_specs.BLESSING_KEY])
    model = artifact_utils.get_single_instance(input_dict[standard_component_specs.MODEL_KEY])
    names = class_names(path_utils.serving_model_path(model.uri)) or None
    blessed = blessing.has_custom_property("blessed") and blessing.get_int_custom_property("blessed") == 1
    if output_dict.get(METRICS_KEY):
        kfp_artifacts.fill_metrics(artifact_utils.get_single_instance(output_dict[METRICS_KEY]),
                                   read_blessing(evaluation.uri, blessed, names))
    if output_dict.get(CONFUSION_MATRIX_KEY):
        matrix = kfp_artifacts.confusion_matrix(evaluation.uri)
        if matrix is not None:
            kfp_artifacts.fill_confusion_matrix(
                artifact_utils.get_single_instance(output_dict[CONFUSION_MATRIX_KEY]), matrix, names)


class EvaluatorSpec(standard_component_specs.EvaluatorSpec):
    """TFX's Evaluator spec with the outputs the Kubeflow UI draws."""
    OUTPUTS = {**standard_component_specs.EvaluatorSpec.OUTPUTS,
               METRICS_KEY: ChannelParameter(type=kfp_artifacts.Metrics),
               CONFUSION_MATRIX_KEY: ChannelParameter(type=kfp_artifacts.ClassificationMetrics)}


class Evaluator(TfxEvaluator):
    # A subclass of TFX's executor, so the KFP v2 entrypoint's blessing fix-up (it checks
    # issubclass of the Evaluator executor) still applies.
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
    # SPEC_CLASS stays TFX's: its __init__ checks its own spec against it, and ours is one.

    def __init__(self, **kwargs):
        # TFX's __init__ builds TFX's spec from the arguments; the same, with two outputs more.
        super().__init__(**kwargs)
        tfx_spec = self.spec
        spec = EvaluatorSpec(
            **{k: v for k, v in tfx_spec.exec_properties.items() if v is not None}, **tfx_spec.inputs,
            **tfx_spec.outputs, metrics=types.Channel(type=kfp_artifacts.Metrics),
            confusion_matrix=types.Channel(type=kfp_artifacts.ClassificationMetrics))
        base_component.BaseComponent.__init__(self, spec=spec)

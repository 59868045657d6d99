"""TFX's Evaluator, reading its baseline from the ServedBaseline step.

A Kubeflow task always emits every output it declares, so "nothing is served yet"
arrives as an empty baseline artifact rather than no artifact. TFX's Evaluator treats
an empty baseline list as "no baseline" (change thresholds are rubber-stamped, value
thresholds still judge); this executor turns an empty artifact into that empty list,
so the first run means the same on every runner.
"""
from __future__ import annotations

from tfx.components import Evaluator as TfxEvaluator
from tfx.components.evaluator import executor as tfx_evaluator
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_component_specs

from xfer.components.baseline import has_baseline


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
        key = standard_component_specs.BASELINE_MODEL_KEY
        baselines = [a for a in input_dict.get(key, []) if has_baseline(a.uri)]
        if not baselines and exec_properties.get(standard_component_specs.EVAL_CONFIG_KEY):
            exec_properties = {**exec_properties, standard_component_specs.EVAL_CONFIG_KEY:
                               with_floor_threshold(exec_properties[standard_component_specs.EVAL_CONFIG_KEY])}
        super().Do({**input_dict, key: baselines}, output_dict, exec_properties)


class Evaluator(TfxEvaluator):
    # A subclass of TFX's executor, so the KFP v2 entrypoint's blessing fix-up (it checks
    # issubclass of the Evaluator executor) still applies.
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

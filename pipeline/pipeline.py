"""The one DAG. Local, Kubeflow and Vertex runs differ only in runner and config."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
# The TFX classes by their modules, not through `tfx.v1`: that one also imports every
# extension (the Vertex AI client among them), 1.7 s of each `xfer run` here.
from tfx.components import (ExampleValidator, FileBasedExampleGen, SchemaGen, StatisticsGen, Trainer,
                            Transform)
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.components.base import executor_spec
from tfx.orchestration.metadata import sqlite_metadata_connection_config
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import example_gen_pb2, pusher_pb2, trainer_pb2

from xfer.components import pusher as versioned_pusher
from xfer.components.baseline import ServedBaseline, WarmStartModel
from xfer.components.data_check import DataCheck
from xfer.components.evaluator import Evaluator
from xfer.components.import_gen import Executor as CheckedImportExecutor
from xfer.pipeline.config import Config, class_count

TRANSFORM_FN = "xfer.components.transform.preprocessing_fn"
RUN_FN = "xfer.components.trainer.run_fn"
# Substituted by the Kubeflow / Vertex driver with the run's id: a cache key that differs
# every run (kubeflow/pipelines backend/src/v2/driver/resolve.go substitutes it).
RUN_NONCE = "{{$.pipeline_job_uuid}}"
# Reads what can change under the same inputs (the served model): never taken from a
# cache, on any runner. (On Kubeflow, ImportExampleGen too: see pipeline/kfp_spec.py.)
NEVER_CACHED = ("ServedBaseline", "WarmStartModel")

# Node ids, in DAG order; the CLI and tests refer to components by these names.
COMPONENTS = [
    "ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "DataCheck", "Transform",
    "Trainer", "ServedBaseline", "Evaluator", "Pusher",
]
# In the DAG only when configured: WarmStartModel with train.warm_start: served.
OPTIONAL_COMPONENTS = ["WarmStartModel"]


def code_fingerprint() -> str:
    """A hash of the step code. Steps reference code by import path, which TFX does
    not fingerprint (it does for module_file), so without this an edited trainer
    would be served from cache."""
    from xfer import components

    digest = hashlib.sha256()
    for path in sorted(Path(components.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _custom_config(settings) -> dict:
    """A step's typed settings as its custom_config (part of TFX's cache key); the step
    validates them again on its side."""
    return settings.model_dump(mode="json")


def _input_config(config: Config) -> Optional[example_gen_pb2.Input]:
    if not config.data.splits:
        return None
    return example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name=name, pattern=pattern)
        for name, pattern in config.data.splits.items()])


def _import_config(config: Config) -> example_gen_pb2.CustomConfig:
    """What the checked ImportExampleGen executor needs beyond TFX's: the span window, the
    train pattern as written (the driver passes it resolved to the newest span), the keys."""
    from google.protobuf import struct_pb2

    values = struct_pb2.Struct()
    values.update({"window": config.data.spans.window, "train_pattern": config.data.splits.get("train", ""),
                   "image_key": config.data.image_key, "label_key": config.data.label_key})
    custom = example_gen_pb2.CustomConfig()
    custom.custom_config.Pack(values)
    return custom


def _output_config(config: Config) -> Optional[example_gen_pb2.Output]:
    if config.data.splits:
        return None  # the input is already split
    return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
        for name, buckets in config.data.hash_buckets.items()]))


def eval_config(config: Config) -> tfma.EvalConfig:
    """TFMA: accuracy, top-k accuracy and loss, overall and per true class; the
    configured thresholds judge the overall slice only (a class with a handful of
    eval images must not decide the blessing on its own)."""
    from xfer.components.export import PREDICTION_KEY, SERVING_EXAMPLES, TRANSFORM_FEATURES, TTA_SIGNATURES
    from xfer.components.transform import LABEL

    ev = config.eval
    threshold = tfma.MetricThreshold()
    if ev.min_accuracy is not None:
        threshold.value_threshold.CopyFrom(
            tfma.GenericValueThreshold(lower_bound={"value": ev.min_accuracy}))
    if ev.max_drop is not None or ev.max_drop_relative is not None:
        change = tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER)
        if ev.max_drop is not None:
            change.absolute.value = -ev.max_drop
        if ev.max_drop_relative is not None:
            change.relative.value = -ev.max_drop_relative
        threshold.change_threshold.CopyFrom(change)
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            # eval.tta: the same outputs averaged over flipped copies (components/export.py);
            # serving clients keep calling the one-pass signatures.
            signature_name=TTA_SIGNATURES[ev.tta] if ev.tta else SERVING_EXAMPLES,
            preprocessing_function_names=[TRANSFORM_FEATURES],
            label_key=LABEL,
            prediction_key=PREDICTION_KEY,
            # Load with tf.saved_model, not Keras: TFMA otherwise rebuilds the Keras model
            # several times per run (once just to detect its type), minutes on 2 cores.
            model_type=tfma.TF_GENERIC)],
        # Overall, and per true class: accuracy within a class is that class's recall.
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[LABEL])],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="SparseCategoricalAccuracy", per_slice_thresholds=[
                tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)]),
            tfma.MetricConfig(class_name="SparseTopKCategoricalAccuracy",
                              config=json.dumps({"k": ev.top_k, "name": f"top_{ev.top_k}_accuracy"})),
            tfma.MetricConfig(class_name="SparseCategoricalCrossentropy", config='{"name": "loss"}'),
            tfma.MetricConfig(class_name="ExampleCount"),
            # Per-class precision and recall come from it (see `xfer show RUN Evaluator`).
            tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
        ])])


BEAM_STEPS = ("ImportExampleGen", "StatisticsGen", "DataCheck", "Transform", "Evaluator")


def in_process_beam_args(args: list[str]) -> list[str]:
    """The Beam args every step gets: as given when they name a runner, else with Beam's
    in-process runner named.

    Left to choose, Beam 2.72's DirectRunner first tries its Prism runner, fetching the
    binary from GitHub where the network allows it (apache_beam/runners/direct/
    direct_runner.py, runners/portability/prism_runner.py) and leaving a beam-temp folder
    in /tmp where it cannot start; and with no container image or package named, TFX
    builds a 52 MB sdist of itself in /tmp for every Beam step, about 1.7 s here
    (tfx/utils/dependency_utils.py, make_beam_dependency_flags). A step's own process,
    on a laptop or in a cluster's pod, wants neither.
    """
    if any(a.startswith("--runner") for a in args):
        return list(args)
    return [*args, "--runner=FnApiRunner", "--sdk_container_image=none"]


def _cluster_settings(config: Config, components: list) -> None:
    """Per-component resources and Dataflow for the Beam steps, on Kubeflow / Vertex."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    kf = config.kubeflow
    by_id = {c.id: c for c in components}
    for name, r in kf.resources.items():
        if name not in by_id and name in OPTIONAL_COMPONENTS:
            continue  # configured for a step this config leaves out
        if name not in by_id:
            raise ValueError(f"kubeflow.resources: no component '{name}'; components: {', '.join(COMPONENTS)}")
        spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
            cpu_limit=r.cpu or 0, memory_limit=r.memory_gb or 0)
        if r.accelerator:
            spec.accelerator.type = r.accelerator
            spec.accelerator.count = r.accelerator_count
        by_id[name].with_platform_config(spec)
    if kf.dataflow:
        for name in BEAM_STEPS:
            by_id[name].with_beam_pipeline_args(kf.dataflow.args(kf.image))


def _vertex_training(config: Config) -> dict:
    v = config.kubeflow.vertex_training
    from tfx.v1.extensions import google_cloud_ai_platform as gcp
    from xfer.pipeline import vertex_job
    return {gcp.ENABLE_VERTEX_KEY: True, gcp.VERTEX_REGION_KEY: v.region,
            gcp.TRAINING_ARGS_KEY: vertex_job.training_args(v, config.kubeflow.image)}


def _class_count(config: Config) -> int:
    """The classes DataCheck checks integer labels against; 0 when only Transform's
    vocabulary will know (string labels, or a labels file not readable here)."""
    try:
        return class_count(config) or 0
    except Exception:  # noqa: BLE001 - e.g. gs:// without credentials at compile time
        return 0


def create_pipeline(config: Config, *, for_kubeflow: bool = False) -> Pipeline:
    fingerprint = code_fingerprint()
    # ImportExampleGen's component with its executor extended: each input file checked at
    # the door and each record traced to it (components/import_gen.py). TFX's documented
    # way to give a file-based ExampleGen its own executor.
    example_gen = FileBasedExampleGen(
        input_base=config.data_dir,
        input_config=_input_config(config),
        output_config=_output_config(config),
        custom_executor_spec=executor_spec.BeamExecutorSpec(CheckedImportExecutor),
        custom_config=_import_config(config),
    ).with_id("ImportExampleGen")

    # Image-domain statistics (formats, sizes) for the encoded image bytes, not UTF-8 noise.
    statistics_gen = StatisticsGen(
        examples=example_gen.outputs["examples"],
        stats_options=tfdv.StatsOptions(enable_semantic_domain_stats=True))

    if config.data.schema_path:
        schema_gen = ImportSchemaGen(schema_file=config.data.schema_path)
    else:
        schema_gen = SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    schema_gen = schema_gen.with_id("SchemaGen")

    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])

    # The gate: anomalies stop the run (data.on_anomaly), and every image is decoded once
    # so a bad record is named here, not deep in a later step (data.on_bad_image).
    data_check = DataCheck(
        examples=example_gen.outputs["examples"],
        anomalies=example_validator.outputs["anomalies"],
        image_key=config.data.image_key,
        label_key=config.data.label_key,
        num_classes=_class_count(config),
        on_anomaly=config.data.on_anomaly,
        on_bad_image=config.data.on_bad_image,
        max_bad_fraction=config.data.max_bad_fraction,
        drift=config.data.drift.model_dump_json(),
        image_size=config.model.image_size,
        max_pixels=config.data.max_pixels).with_id("DataCheck")
    examples = data_check.outputs["checked_examples"]

    # Not materialized: decoded float images are ~20x their encoded bytes. The Trainer
    # and the Evaluator apply the transform graph to the raw examples instead.
    transform = Transform(
        examples=examples,
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=TRANSFORM_FN,
        materialize=False,
        # Pre-transform statistics are StatisticsGen's; post-transform ones would decode
        # every image once more only to describe float pixels.
        disable_statistics=True,
        custom_config=_custom_config(config.transform_settings(fingerprint)))

    trainer_cls, trainer_config = Trainer, _custom_config(config.trainer_settings(fingerprint))
    if for_kubeflow and config.kubeflow.vertex_training:
        from tfx.v1.extensions.google_cloud_ai_platform import Trainer as VertexTrainer
        trainer_cls = VertexTrainer
        trainer_config = {**trainer_config, **_vertex_training(config)}
    # train.warm_start: served: the model being served, read now, as TFX's base_model.
    warm = None
    if config.train.warm_start == "served":
        warm = WarmStartModel(examples=examples, push_destination=config.push.destination,
                              run_nonce=RUN_NONCE if for_kubeflow else "").with_id("WarmStartModel")
    trainer = trainer_cls(
        run_fn=RUN_FN,
        base_model=warm.outputs["model"] if warm else None,
        examples=examples,
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=trainer_pb2.TrainArgs(splits=["train"]),
        eval_args=trainer_pb2.EvalArgs(splits=["eval"]),
        custom_config=trainer_config)

    # The model being served now, read at run time (no resolver: Kubeflow's open-source
    # backend refuses resolver executors). Never cached (see runners and kfp_spec).
    baseline = ServedBaseline(
        candidate=trainer.outputs["model"],
        push_destination=config.push.destination,
        run_nonce=RUN_NONCE if for_kubeflow else "").with_id("ServedBaseline")

    evaluator = Evaluator(
        examples=examples,
        example_splits=["eval"],
        model=trainer.outputs["model"],
        baseline_model=baseline.outputs["baseline"],
        eval_config=eval_config(config))

    # TFX's Pusher with numbered, atomic versions, each with its model card, whose facts
    # come in as the step's inputs (components/pusher.py).
    pusher = versioned_pusher.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=config.push.destination)),
        custom_config=_custom_config(config.pusher_settings(fingerprint)),
        model_run=trainer.outputs["model_run"],
        examples=examples,
        evaluation=evaluator.outputs["evaluation"],
        baseline_model=baseline.outputs["baseline"],
        # Locally the executor reads the run id from its context; Kubeflow substitutes the job's.
        run_id=RUN_NONCE if for_kubeflow else "")

    components = [example_gen, statistics_gen, schema_gen, example_validator, data_check, transform,
                  *([warm] if warm else []), trainer, baseline, evaluator, pusher]
    if for_kubeflow:
        _cluster_settings(config, components)
    metadata = None if for_kubeflow else sqlite_metadata_connection_config(config.metadata_path)
    # On Dataflow every Beam step gets Dataflow's runner and image (_cluster_settings); the
    # in-process runner's args ahead of them would only be overridden.
    on_dataflow = for_kubeflow and bool(config.kubeflow.dataflow)
    return Pipeline(
        pipeline_name=config.name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata,
        beam_pipeline_args=(list(config.beam_pipeline_args) if on_dataflow
                            else in_process_beam_args(config.beam_pipeline_args)))

"""Runners: the same DAG run locally (LocalDagRunner) or compiled for Kubeflow v2 / Vertex."""
from __future__ import annotations

import datetime
import json
import os
import tempfile
from typing import Optional

from xfer.pipeline.config import Config, ConfigError
from xfer.pipeline.summary import RunSummary, summarize


def prepare_data(config: Config) -> None:
    """Make the embedded dataset's TFRecords at first use; check a user's folder exists."""
    if config.data.builtin == "digits":
        from xfer.pipeline.data.digits import ensure_digits
        ensure_digits(config.data_dir)
        return
    import tensorflow as tf
    if not tf.io.gfile.exists(config.data_dir):
        raise ConfigError(
            f"data.input_base: folder '{config.data_dir}' does not exist; point it at a folder "
            f"of TFRecords (e.g. made by `xfer data import-folder`)")


def check_weights(config: Config) -> None:
    """Offline with `weights: imagenet` and nothing cached: fail now, naming the fix,
    not minutes later in the Trainer. (A cached or downloadable file passes, and the
    download fills the cache the local Trainer reads.)"""
    if config.model.weights != "imagenet":
        return
    from xfer.components.backbones import WeightsUnavailable, build_base
    m = config.model
    try:
        build_base(m.backbone, m.image_size, "imagenet", m.alpha)
    except WeightsUnavailable as e:
        raise ConfigError(str(e)) from None


def run_local(config: Config, from_nodes: Optional[list[str]] = None,
              to_nodes: Optional[list[str]] = None, check_only: bool = False,
              keep_cache: bool = False) -> Optional[RunSummary]:
    """Run the DAG locally. With from_nodes/to_nodes, a partial run: only the nodes
    between them execute, the rest of their inputs come from the latest run in MLMD.
    A partial run re-executes its nodes unless `keep_cache` (xfer lr-find: the steps up
    to Transform, from cache when unchanged).

    The preflight runs first (check_only: only it); then the run holds the root's lock,
    clears what interrupted runs left, and returns the summary of its own run."""
    from tfx.dsl.compiler import constants
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.portable import runtime_parameter_utils
    from tfx.proto.orchestration import pipeline_pb2

    from xfer.pipeline import interrupted, preflight
    from xfer.pipeline.lock import RootLock
    from xfer.pipeline.pipeline import COMPONENTS, OPTIONAL_COMPONENTS, create_pipeline

    for node in (from_nodes or []) + (to_nodes or []):
        if node not in COMPONENTS + OPTIONAL_COMPONENTS:
            raise ConfigError(f"--from/--to: no component '{node}'; components: {', '.join(COMPONENTS)}")
    from xfer.pipeline import beam_args
    beam_args.parse(config.beam_pipeline_args, "beam_pipeline_args")  # Beam would drop an unknown flag
    prepare_data(config)
    check_weights(config)
    report = preflight.require(config)
    for note in report.notes:
        print(f"[xfer] preflight: {note}", flush=True)
    if check_only:
        return None
    os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
    run_options = None
    if from_nodes or to_nodes:
        if from_nodes and not os.path.exists(config.metadata_path):
            raise ConfigError(f"--from/--to: no earlier run in {config.metadata_path} to take "
                              f"upstream artifacts from; run the whole pipeline once first")
        run_options = pipeline_pb2.RunOptions()
        run_options.partial_run.from_nodes.extend(from_nodes or [])
        run_options.partial_run.to_nodes.extend(to_nodes or [])
        # Upstream artifacts of the nodes run come from the latest run.
        run_options.partial_run.snapshot_settings.latest_pipeline_run_strategy.SetInParent()
        # A partial run exists to re-execute its nodes (e.g. after editing trainer code).
        if not keep_cache:
            config = config.model_copy(update={"enable_cache": False})
    # The run's id is chosen here, not by the runner, so the summary is of this run.
    run_id = datetime.datetime.now().isoformat()
    ir = pipeline_ir(create_pipeline(config))
    runtime_parameter_utils.substitute_runtime_parameter(
        ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id})
    with RootLock(config.root, run_id) as lock:
        if lock.interrupted:
            print(f"[xfer] the last run on this root, {lock.interrupted.line()}, was interrupted",
                  flush=True)
        for line in interrupted.clean_up(config):
            print(f"[xfer] {line}", flush=True)
        if from_nodes:
            require_upstream(config, ir, run_options)
        LocalDagRunner().run_with_ir(ir, run_options=run_options)
    return summarize(config.metadata_path, config.name, run_id)


def require_upstream(config: Config, ir, run_options) -> None:
    """A partial run takes the outputs of every step before --from from the latest run;
    a step that did not succeed there would stop TFX with "No previous successful
    executions found for node_id X" after it has registered an empty run, which then
    becomes the latest run and fails the next --from too. Checked first, naming the step."""
    import copy

    from tfx.orchestration.portable import partial_run_utils

    from xfer.pipeline import store as mlmd

    marked = copy.deepcopy(ir)
    opts = run_options.partial_run
    partial_run_utils.mark_pipeline(marked, from_nodes=opts.from_nodes or None, to_nodes=opts.to_nodes or None,
                                    snapshot_settings=opts.snapshot_settings)
    reused = [n.pipeline_node.node_info.id for n in marked.nodes
              if partial_run_utils._reuse_artifact_required(n.pipeline_node.execution_options)]  # noqa: SLF001
    store = mlmd.open_store(config.metadata_path)
    runs = mlmd.pipeline_runs(store, config.name)
    if not runs:
        raise ConfigError(f"--from {opts.from_nodes[0]}: no earlier run of '{config.name}' in "
                          f"{config.metadata_path} to take the steps before it from; run without --from first")
    latest = runs[-1]
    states = {node: mlmd.state_name(ex) for node, ex in mlmd.step_executions(store, latest, config.name)}
    missing = [n for n in reused if states.get(n) not in ("executed", "cached")]
    if missing:
        said = "; ".join(f"{n}: {states[n]} there" if n in states else f"{n}: did not run there" for n in missing)
        raise ConfigError(
            f"--from {opts.from_nodes[0]} takes the steps before it from the latest run ({latest.name}), but "
            f"{', '.join(missing)} did not succeed in it ({said}). Run the whole pipeline (without --from), "
            f"or start at that step: --from {missing[0]}")


def pipeline_ir(pipeline):
    """The pipeline compiled for the local runner, with caching off for the nodes that
    must never come from a cache (TFX has no per-node switch above the IR)."""
    from tfx.dsl.compiler import compiler

    from xfer.pipeline.pipeline import NEVER_CACHED

    ir = compiler.Compiler().compile(pipeline)
    for node in ir.nodes:
        if node.pipeline_node.node_info.id in NEVER_CACHED:
            node.pipeline_node.execution_options.caching_options.enable_cache = False
    return ir


# The command of every compiled step: TFX's entrypoint behind ours (components/kfp_entrypoint.py).
STEP_COMMAND = ("python", "-m", "xfer.components.kfp_entrypoint")


# The template's placeholders mean "fill me in": a compiled spec or a run with them in
# would fail on the cluster, minutes later, far from the cause.
def refuse_placeholders(config: Config, command: str) -> None:
    """Raise a config error naming every key that still holds a template placeholder
    (YOUR_PROJECT, YOUR_BUCKET: the preflight's rule, preflight.placeholders)."""
    from xfer.pipeline.preflight import placeholders

    found = placeholders(config)
    if not found:
        return
    template = ("; or, to write a template with the placeholders left in, add --allow-placeholders"
                if command == "compile" else "")
    raise ConfigError(f"xfer {command}: {len(found)} config value(s) still hold the template's "
                      f"placeholders:\n" + "\n".join(f"  - {line}" for line in found)
                      + f"\nSet them in your config or with --set{template}")


def _check_out(out: str) -> str:
    """The output's format, and its folder checked, before anything is compiled."""
    from xfer.pipeline import kfp_spec

    fmt = kfp_spec.output_format(out)
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise ConfigError(f"--out {out}: is a folder; name a file, e.g. {os.path.join(out, 'pipeline.' + fmt)}")
    if not os.path.isdir(folder):
        raise ConfigError(f"--out {out}: folder {folder} does not exist; create it or write elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: folder {folder} cannot be written")
    return fmt


def compile_kubeflow(config: Config, out: str, target: str = "kubeflow", *,
                     allow_placeholders: bool = False, command: str = "compile") -> str:
    """Write the KFP pipeline spec 2.1.0 to `out` (.yaml/.yml or .json): for Kubeflow the
    bare PipelineSpec its upload takes, for Vertex AI the PipelineJob wrapping it
    (pipeline/kfp_spec.py). `out` is written whole or not at all."""
    _check_out(out)
    if not allow_placeholders:
        refuse_placeholders(config, command)
    remote = [k for k, v in (("root", config.root), ("data.input_base", config.data.input_base),
                             ("push.destination", config.push.destination)) if v and "://" in v]
    if remote and "://" not in (config.pipeline_root or ""):
        raise ConfigError(f"pipeline_root: '{config.pipeline_root}' is local but this is a cloud config "
                          f"({', '.join(remote)} on object storage): the steps run on other machines and "
                          f"cannot share a local folder. Set pipeline_root to a gs:// path")
    if not config.kubeflow.image:
        raise ConfigError("kubeflow.image: not set; name the project's container image every step "
                          "runs in, e.g. --set kubeflow.image=REGISTRY/xfer:TAG")
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    from xfer.pipeline import beam_args, kfp_spec
    from xfer.pipeline.pipeline import create_pipeline

    # Beam drops a flag it does not know and runs on: a typo must stop here, not on the cluster.
    beam_args.parse(config.beam_pipeline_args, "beam_pipeline_args")
    if config.kubeflow.dataflow:
        beam_args.check_dataflow([*config.beam_pipeline_args, *config.kubeflow.dataflow.args(config.kubeflow.image)])

    # TFX writes its PipelineJob JSON in a folder of its own, never at `out`: what reaches
    # `out` is the finished document, renamed into place.
    with tempfile.TemporaryDirectory(prefix="xfer-compile-") as folder:
        runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
            config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
                default_image=config.kubeflow.image,
                # Every step runs TFX's entrypoint through ours: it restores the input types
                # the open-source launcher leaves empty and resolves spans in the step.
                default_commands=list(STEP_COMMAND),
                # Schema 2.1.0 with `constant` values: the open-source API server and driver
                # accept nothing else; Vertex AI accepts it too.
                use_pipeline_spec_2_1=True),
            output_dir=folder, output_filename="pipeline_job.json")
        runner.run(create_pipeline(config, for_kubeflow=True))
        with open(os.path.join(folder, "pipeline_job.json")) as f:
            job = json.load(f)
    kfp_spec.make_conformant(job["pipelineSpec"])
    document = kfp_spec.kubeflow_document(job) if target == "kubeflow" else job
    problems = kfp_spec.violations(kfp_spec.kubeflow_document(job))
    if problems:
        raise ValueError("the compiled spec would be refused or mis-run by Kubeflow Pipelines: "
                         + "; ".join(problems))
    kfp_spec.write(document, out)
    return out

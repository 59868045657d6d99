"""Runners: the same DAG run locally (LocalDagRunner) or compiled for Kubeflow v2 / Vertex."""
from __future__ import annotations

import os
import time
from typing import Optional

from xfer.pipeline.config import Config, ConfigError, to_absolute
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
              to_nodes: Optional[list[str]] = None) -> RunSummary:
    """Run the DAG locally. With from_nodes/to_nodes, a partial run: only the nodes
    between them execute, the rest of their inputs come from the latest run in MLMD."""
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.pipeline import RunOptions

    from xfer.pipeline.pipeline import COMPONENTS, create_pipeline

    for node in (from_nodes or []) + (to_nodes or []):
        if node not in COMPONENTS:
            raise ConfigError(f"--from/--to: no component '{node}'; components: {', '.join(COMPONENTS)}")
    config = to_absolute(config)
    prepare_data(config)
    check_weights(config)
    os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)
    run_options = None
    if from_nodes or to_nodes:
        if from_nodes and not os.path.exists(config.metadata_path):
            raise ConfigError(f"--from/--to: no earlier run in {config.metadata_path} to take "
                              f"upstream artifacts from; run the whole pipeline once first")
        run_options = RunOptions(from_nodes=from_nodes, to_nodes=to_nodes)
        # A partial run exists to re-execute its nodes (e.g. after editing trainer code).
        config = config.model_copy(update={"enable_cache": False})
    start = time.perf_counter()
    LocalDagRunner().run(create_pipeline(config), run_options=run_options)
    summary = summarize(config.metadata_path, config.name)
    summary.seconds = time.perf_counter() - start
    return summary


def compile_kubeflow(config: Config, out: str) -> str:
    """Write the KFP v2 pipeline spec (PipelineJob JSON) for Kubeflow Pipelines / Vertex."""
    from tfx import v1 as tfx

    from xfer.pipeline.pipeline import create_pipeline

    remote = [k for k, v in (("root", config.root), ("data.input_base", config.data.input_base),
                             ("push.destination", config.push.destination)) if v and "://" in v]
    if remote and "://" not in (config.pipeline_root or ""):
        raise ConfigError(f"pipeline_root: '{config.pipeline_root}' is local but this is a cloud config "
                          f"({', '.join(remote)} on object storage): the steps run on other machines and "
                          f"cannot share a local folder. Set pipeline_root to a gs:// path")
    if not config.kubeflow.image:
        raise ConfigError("kubeflow.image: not set; name the project's container image every step "
                          "runs in, e.g. --set kubeflow.image=REGISTRY/xfer:TAG")
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=config.kubeflow.image),
        output_dir=os.path.dirname(os.path.abspath(out)),
        output_filename=os.path.basename(out))
    runner.run(create_pipeline(config, for_kubeflow=True))
    return out

"""Distribution strategy and mixed precision for the Trainer.

`train.strategy: auto` picks, in order: TPU when a TPU is configured (`train.tpu`) or
discoverable (the cluster resolver finds one, as on a Cloud TPU VM or with TPU_NAME
set by the platform), multi-worker when TF_CONFIG names several workers (Vertex
Training and KFP set it), mirrored when there are several GPUs, else the default
strategy. TF_CONFIG is the platform's contract with TensorFlow, so reading it here is
not a back door around the config.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Optional, get_args

import tensorflow as tf

from xfer.components.settings import StrategyKind


@dataclass
class Chosen:
    kind: str
    strategy: tf.distribute.Strategy
    why: str

    @property
    def replicas(self) -> int:
        return getattr(self.strategy, "num_replicas_in_sync", 1)


def _workers_in_tf_config(env: dict) -> int:
    raw = env.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except ValueError:
        raise ValueError("TF_CONFIG is not valid JSON; the platform (or you) must set it to "
                         "{\"cluster\": {...}, \"task\": {...}}") from None
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def workers_named(env: Optional[dict] = None) -> int:
    """How many workers (chief included) TF_CONFIG names; 0 without TF_CONFIG."""
    return _workers_in_tf_config(os.environ if env is None else env)


def _find_tpu(tpu: Optional[str], resolver_factory: Callable) -> Optional[object]:
    """A TPU cluster resolver when a TPU is configured or discoverable, else None."""
    try:
        resolver = resolver_factory(tpu=tpu) if tpu else resolver_factory()
    except (ValueError, RuntimeError, tf.errors.NotFoundError):
        if tpu:
            raise
        return None
    try:
        master = resolver.master()
    except (ValueError, RuntimeError):
        master = ""
    return resolver if (tpu or master) else None


def decide(kind: StrategyKind, *, tpu_found: bool, workers: int, gpus: int) -> str:
    """Which strategy `train.strategy: kind` means on this machine."""
    if kind not in get_args(StrategyKind):
        raise ValueError(f"train.strategy: '{kind}' is not one of {', '.join(get_args(StrategyKind))}")
    if kind != "auto":
        return kind
    if tpu_found:
        return "tpu"
    if workers > 1:
        return "multi_worker"
    if gpus > 1:
        return "mirrored"
    return "default"


def choose(kind: StrategyKind, *, tpu: Optional[str] = None, devices: Optional[list[str]] = None,
           env: Optional[dict] = None,
           resolver_factory: Optional[Callable] = None,
           connect: Optional[Callable] = None,
           initialize: Optional[Callable] = None,
           tpu_strategy: Optional[Callable] = None) -> Chosen:
    """The strategy for `kind` (see module doc), built. The TPU hooks are parameters so
    selection can be tested without a TPU; the defaults are TensorFlow's own."""
    env = os.environ if env is None else env
    resolver = None
    if kind in ("auto", "tpu"):
        resolver = _find_tpu(tpu, resolver_factory or tf.distribute.cluster_resolver.TPUClusterResolver)
        if kind == "tpu" and resolver is None:
            raise ValueError("train.strategy is tpu but no TPU was found; set train.tpu to the "
                             "TPU name or grpc:// address (or 'local' on a TPU VM)")
    workers = _workers_in_tf_config(env)
    # Physical, not logical: listing logical devices starts TensorFlow's runtime, after
    # which MultiWorkerMirroredStrategy can no longer set up its collectives ("Collective
    # ops must be configured at program startup").
    gpus = len(tf.config.list_physical_devices("GPU"))
    chosen = decide(kind, tpu_found=resolver is not None, workers=workers, gpus=gpus)

    if chosen == "tpu":
        (connect or tf.config.experimental_connect_to_cluster)(resolver)
        (initialize or tf.tpu.experimental.initialize_tpu_system)(resolver)
        return Chosen("tpu", (tpu_strategy or tf.distribute.TPUStrategy)(resolver),
                      f"TPU {tpu or resolver.master()}")
    if chosen == "multi_worker":
        return Chosen("multi_worker", tf.distribute.MultiWorkerMirroredStrategy(),
                      f"TF_CONFIG names {workers} workers")
    if chosen == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=devices) if devices else tf.distribute.MirroredStrategy()
        return Chosen("mirrored", strategy, f"devices {', '.join(devices)}" if devices else f"{gpus} GPUs")
    return Chosen("default", tf.distribute.get_strategy(), f"one device ({'GPU' if gpus else 'CPU'})")


def is_chief(chosen: Chosen) -> bool:
    """Whether this process writes the run's outputs: always, except a non-chief
    multi-worker task (TF's multi-worker saving rules: every worker saves, because saving
    reads distributed variables through collectives, but only the chief's copy is kept)."""
    return chosen.kind != "multi_worker" or chosen.strategy.extended.should_checkpoint


def task_name(chosen: Chosen) -> str:
    """This process's place in the cluster, e.g. 'worker-0' (TF_CONFIG's task)."""
    resolver = getattr(chosen.strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "chief"
    return f"{resolver.task_type}-{resolver.task_id}"


def barrier(chosen: Chosen) -> None:
    """Returns once every worker has reached it (a sum over the cluster); nothing on one worker."""
    if chosen.kind == "multi_worker":
        chosen.strategy.reduce(tf.distribute.ReduceOp.SUM,
                               chosen.strategy.run(lambda: tf.constant(1.0)), axis=None)


def precision_policy(setting: str, chosen_kind: str) -> str:
    """The Keras mixed-precision policy for `train.mixed_precision`.

    auto: bfloat16 compute on TPU, float16 on GPU (with loss scaling, which Keras adds
    at compile), float32 on CPU where low precision is slower, not faster."""
    if setting == "off":
        return "float32"
    if setting != "auto":
        return setting
    if chosen_kind == "tpu":
        return "mixed_bfloat16"
    if tf.config.list_logical_devices("GPU"):
        return "mixed_float16"
    return "float32"

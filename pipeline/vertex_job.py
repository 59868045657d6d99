"""The Trainer's Vertex AI custom job: its worker pools, built from
`kubeflow.vertex_training` and checked at compile time against the rules Vertex states,
so a job Vertex would refuse (or run as something else) fails here with one line.

The rules, each with where Vertex states it (API v1):
- CustomJobSpec.workerPoolSpecs is required; the pools past the first are optional
  (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/CustomJobSpec).
- workerPoolSpecs[0] is the primary replica (the chief) and its replicaCount is 1;
  workerPoolSpecs[1] holds the workers (https://cloud.google.com/vertex-ai/docs/training/
  distributed-training, "Configure a distributed training job").
- ContainerSpec.imageUri is required
  (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/CustomJobSpec#ContainerSpec).
- MachineSpec.acceleratorType is one of the AcceleratorType enum's names
  (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/MachineSpec#AcceleratorType),
  attached "as per acceleratorCount": a count needs a type, and a type a count of 1 or more
  (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/MachineSpec).
- Several workers set Scheduling.restartJobOnWorkerRestart, so a restarted replica
  restarts them all (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/CustomJobSpec#Scheduling).
- The field names are WorkerPoolSpec's: the spec is parsed into the google-cloud-aiplatform
  v1 message (the client TFX's Vertex Trainer submits with), which refuses unknown fields.
"""
from __future__ import annotations

from xfer.pipeline.config import ConfigError

KEY = "kubeflow.vertex_training"


def worker_pool_specs(v, image: str) -> list[dict]:
    """The chief's pool (1 replica), then, with `workers` above 1, a pool of the other
    workers-1: the same image and machine, so MultiWorkerMirroredStrategy's replicas
    are alike (TF_CONFIG is set by Vertex from the pools)."""
    machine = {"machine_type": v.machine_type}
    if v.accelerator_type:
        machine.update(accelerator_type=v.accelerator_type, accelerator_count=v.accelerator_count)

    def pool(replicas: int) -> dict:
        return {"machine_spec": dict(machine), "replica_count": replicas,
                "container_spec": {"image_uri": image}}

    return [pool(1)] + ([pool(v.workers - 1)] if v.workers > 1 else [])


def check(pools: list[dict]) -> None:
    """ConfigError, one line naming the key and the fix, when `pools` breaks a rule above."""
    from google.cloud.aiplatform_v1.types import AcceleratorType, CustomJobSpec

    if not pools:
        raise ConfigError(f"{KEY}: the job has no worker pool; Vertex requires workerPoolSpecs[0], the chief")
    names = [t.name for t in AcceleratorType if t.name != "ACCELERATOR_TYPE_UNSPECIFIED"]
    for p in pools:  # before the message parse below, which would say only KeyError('T4')
        kind = ((p or {}).get("machine_spec") or {}).get("accelerator_type")
        if kind is not None and kind not in names:
            raise ConfigError(f"{KEY}.accelerator_type: {kind!r} is not a Vertex accelerator type; "
                              f"one of {', '.join(names)}")
    try:
        CustomJobSpec(worker_pool_specs=pools)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{KEY}: not a Vertex WorkerPoolSpec: {' '.join(str(e).split())}") from None
    if pools[0].get("replica_count") != 1:
        raise ConfigError(f"{KEY}: the first worker pool is the chief and has 1 replica "
                          f"(Vertex: workerPoolSpecs[0].replicaCount 1), not {pools[0].get('replica_count')}")
    for i, p in enumerate(pools):
        if not p:
            continue  # an empty pool past the first is allowed: Vertex skips it
        where = f"{KEY} (workerPoolSpecs[{i}])"
        if not (p.get("container_spec") or {}).get("image_uri"):
            raise ConfigError(f"{where}: no container image; set kubeflow.image (Vertex requires containerSpec.imageUri)")
        if not isinstance(p.get("replica_count"), int) or p["replica_count"] < 1:
            raise ConfigError(f"{where}: replica_count {p.get('replica_count')!r}; a pool has 1 or more replicas")
        m = p.get("machine_spec") or {}
        if not m.get("machine_type"):
            raise ConfigError(f"{where}: no machine_type; name one, e.g. n1-standard-8")
        kind, count = m.get("accelerator_type"), m.get("accelerator_count")
        if kind is None and count:
            raise ConfigError(f"{where}: accelerator_count {count} without accelerator_type; name the type, "
                              f"e.g. NVIDIA_TESLA_T4")
        if kind is not None and (not isinstance(count, int) or count < 1):
            raise ConfigError(f"{KEY}.accelerator_count: {count!r}; {kind} needs 1 or more")


def training_args(v, image: str) -> dict:
    """TFX's ai_platform_training_args for the Vertex Trainer, checked."""
    if v.workers > 1 and (v.accelerator_type or "").startswith("TPU"):
        # xfer's rule, not Vertex's: strategy.py picks TPUStrategy whenever a TPU is found,
        # so each TPU host would train a model of its own instead of one together.
        raise ConfigError(f"{KEY}.workers: {v.workers} with {v.accelerator_type}; the Trainer trains on one TPU "
                          f"host (TPUStrategy), not several: set workers: 1, or a GPU type for several workers")
    pools = worker_pool_specs(v, image)
    check(pools)
    args = {"project": v.project, "worker_pool_specs": pools}
    if v.workers > 1:
        # A worker lost mid-epoch fails the others' next collective (MultiWorkerMirroredStrategy
        # has no elastic membership: tests/test_multi_worker.py); what resumes them is a restart
        # of every replica, from the epoch backup. Vertex does that with this field
        # (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/CustomJobSpec#Scheduling).
        args["scheduling"] = {"restart_job_on_worker_restart": True}
    return args

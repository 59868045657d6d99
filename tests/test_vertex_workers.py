"""kubeflow.vertex_training.workers compiles to Vertex worker pools (the chief's pool of 1
replica, then the other workers), every pool the same image, machine and accelerators;
a job Vertex would refuse fails at compile time with one line (pipeline/vertex_job.py
cites where Vertex states each rule)."""
import json

import pytest
import yaml

from conftest import xfer
from settings_helpers import make_config
from test_compile import IMAGE, KUBEFLOW
from xfer.pipeline import vertex_job
from xfer.pipeline.config import ConfigError, validate

VERTEX = {"project": "p1", "region": "us-central1"}


def _vertex(**fields):
    return make_config(kubeflow={"vertex_training": {**VERTEX, **fields}}).kubeflow.vertex_training


def test_one_worker_is_the_chief_alone():
    assert vertex_job.worker_pool_specs(_vertex(), IMAGE) == [
        {"machine_spec": {"machine_type": "n1-standard-8"}, "replica_count": 1,
         "container_spec": {"image_uri": IMAGE}}]


def test_three_workers_are_the_chief_and_a_pool_of_two_alike():
    v = _vertex(workers=3, machine_type="n1-highmem-8", accelerator_type="NVIDIA_TESLA_T4", accelerator_count=2)
    pools = vertex_job.worker_pool_specs(v, IMAGE)
    assert [p["replica_count"] for p in pools] == [1, 2]
    machine = {"machine_type": "n1-highmem-8", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 2}
    assert all(p["machine_spec"] == machine and p["container_spec"] == {"image_uri": IMAGE} for p in pools)
    vertex_job.check(pools)  # what the config builds passes the rules


def _pool(**over):
    p = {"machine_spec": {"machine_type": "n1-standard-8"}, "replica_count": 1,
         "container_spec": {"image_uri": IMAGE}}
    p.update(over)
    return p


@pytest.mark.parametrize("pools, message", [
    ([], "the job has no worker pool; Vertex requires workerPoolSpecs[0], the chief"),
    ([_pool(replica_count=3)], "the first worker pool is the chief and has 1 replica "
                               "(Vertex: workerPoolSpecs[0].replicaCount 1), not 3"),
    ([_pool(), _pool(replica_count=0)], "(workerPoolSpecs[1]): replica_count 0; a pool has 1 or more replicas"),
    ([_pool(container_spec={"image_uri": ""})], "(workerPoolSpecs[0]): no container image; set kubeflow.image"),
    ([_pool(machine_spec={"machine_type": ""})], "(workerPoolSpecs[0]): no machine_type"),
    ([_pool(machine_spec={"machine_type": "n1-standard-8", "accelerator_count": 2})],
     "accelerator_count 2 without accelerator_type"),
    ([_pool(machine_spec={"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4",
                          "accelerator_count": 0})], "accelerator_count: 0; NVIDIA_TESLA_T4 needs 1 or more"),
    ([_pool(machine_spec={"machine_type": "n1-standard-8", "accelerator_type": "TESLA_T4",
                          "accelerator_count": 1})], "'TESLA_T4' is not a Vertex accelerator type; one of "),
    ([_pool(machin_spec={})], "not a Vertex WorkerPoolSpec: Unknown field for WorkerPoolSpec: machin_spec"),
])
def test_each_vertex_rule_refuses_a_job_breaking_it(pools, message):
    with pytest.raises(ConfigError) as e:
        vertex_job.check(pools)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("kubeflow.vertex_training")


def test_an_empty_pool_past_the_chief_is_allowed():
    vertex_job.check([_pool(), {}])  # Vertex: "all worker pools except the first one are optional"


def test_several_workers_on_tpus_are_refused():
    with pytest.raises(ConfigError) as e:
        vertex_job.training_args(_vertex(workers=2, accelerator_type="TPU_V3", accelerator_count=8), IMAGE)
    assert str(e.value) == ("kubeflow.vertex_training.workers: 2 with TPU_V3; the Trainer trains on one TPU host "
                            "(TPUStrategy), not several: set workers: 1, or a GPU type for several workers")
    vertex_job.training_args(_vertex(workers=1, accelerator_type="TPU_V3", accelerator_count=8), IMAGE)


def test_replica_count_is_refused_naming_workers():
    with pytest.raises(ConfigError) as e:
        validate({"data": {"builtin": "digits"}, "kubeflow": {"vertex_training": {**VERTEX, "replica_count": 4}}})
    assert str(e.value) == (
        "config: kubeflow.vertex_training: replica_count is replaced by workers (the chief's pool has 1 replica, "
        "the other workers a pool of their own, as Vertex requires); write workers: 4 instead")


def _trainer_custom_config(out) -> dict:
    spec = yaml.safe_load(out.read_text())["pipelineSpec"]
    return json.loads(spec["root"]["dag"]["tasks"]["Trainer"]["inputs"]["parameters"]["custom_config"]
                      ["runtimeValue"]["constant"])


def test_compiled_vertex_job_has_the_chief_and_the_workers(tmp_path):
    out = tmp_path / "pipeline.yaml"
    xfer("compile", *KUBEFLOW, "--target", "vertex", "--out", str(out), "--set",
         "kubeflow.vertex_training={project: p1, region: us-central1, workers: 4, accelerator_type: NVIDIA_L4, "
         "accelerator_count: 2}")
    args = _trainer_custom_config(out)["ai_platform_training_args"]
    pools = args["worker_pool_specs"]
    assert [p["replica_count"] for p in pools] == [1, 3]
    # One replica lost fails the others' collectives: the whole job restarts, and TFX's
    # Vertex client takes these args as the CustomJobSpec, which must accept the field.
    assert args["scheduling"] == {"restart_job_on_worker_restart": True}
    from google.cloud.aiplatform_v1.types import CustomJobSpec
    assert CustomJobSpec(worker_pool_specs=pools, scheduling=args["scheduling"]).scheduling.restart_job_on_worker_restart
    for p in pools:
        assert p["container_spec"]["image_uri"] == IMAGE
        assert p["machine_spec"] == {"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_L4",
                                     "accelerator_count": 2}


def test_an_unknown_accelerator_fails_the_compile_with_one_line(tmp_path):
    out = tmp_path / "pipeline.yaml"
    proc = xfer("compile", *KUBEFLOW, "--target", "vertex", "--out", str(out), "--set",
                "kubeflow.vertex_training={project: p1, region: us-central1, workers: 2, accelerator_type: T4}",
                check=False, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("xfer:")]
    assert len(lines) == 1 and lines[0].startswith(
        "xfer: config error: kubeflow.vertex_training.accelerator_type: 'T4' is not a Vertex accelerator type; "
        "one of NVIDIA_TESLA_K80"), proc.stderr
    assert not out.exists() and not (tmp_path / "state").exists()

"""`xfer compile` writes a KFP v2 PipelineJob whose every step runs the configured image."""
import json

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from conftest import xfer
from xfer.pipeline.pipeline import COMPONENTS

IMAGE = "registry.example.com/team/xfer:1.2.3"
# The Beam steps, written out here (not taken from the pipeline) so that a step left out
# there shows here.
BEAM_STEPS = ("ImportExampleGen", "StatisticsGen", "DataCheck", "Transform", "Evaluator")


def test_compile_kubeflow_parses_as_pipeline_job_with_configured_image(tmp_path):
    out = tmp_path / "pipeline.json"
    proc = xfer("compile", "--config", "kubeflow", "--target", "kubeflow", "--out", str(out),
                "--set", f"kubeflow.image={IMAGE}", "--set", "pipeline_root=gs://bucket/root")
    assert str(out) in proc.stdout
    job = json_format.Parse(out.read_text(), pipeline_spec_pb2.PipelineJob(), ignore_unknown_fields=False)
    assert job.runtime_config.gcs_output_directory == "gs://bucket/root"
    executors = job.pipeline_spec["deploymentSpec"]["executors"]
    containers = {name: ex["container"] for name, ex in executors.items() if "container" in ex}
    assert set(containers) == set(executors)  # every step is a container: no resolver
    for name, container in containers.items():
        assert container["image"] == IMAGE, name
    tasks = set(job.pipeline_spec["root"]["dag"]["tasks"])
    assert tasks == set(COMPONENTS), tasks
    # Step code goes by import path; no step pip-installs a module file at run time.
    text = json.dumps(json.loads(out.read_text()))
    assert "xfer.components.trainer.run_fn" in text and "module_file" not in text.replace('"module_file": null', "")
    # The Kubeflow template's Beam args name no runner: each Beam step gets Beam's
    # in-process runner (its worker processes kept), not a Prism fetched at run time.
    for step in BEAM_STEPS:
        args = containers[f"{step}_executor"]["args"]
        assert [a for a in args if a.startswith("--runner")] == ["--runner=FnApiRunner"], step
        assert "--sdk_container_image=none" in args and "--direct_running_mode=multi_processing" in args, step


def test_compile_without_image_is_a_config_error(tmp_path):
    proc = xfer("compile", "--config", "kubeflow", "--set", "kubeflow.image=null",
                "--out", str(tmp_path / "p.json"), check=False)
    assert proc.returncode == 2 and "kubeflow.image" in proc.stderr


def test_production_settings_reach_the_compiled_spec(tmp_path):
    out = tmp_path / "pipeline.json"
    xfer("compile", "--config", "kubeflow", "--out", str(out), "--set", f"kubeflow.image={IMAGE}",
         "--set", "kubeflow.resources={Trainer: {cpu: 8, memory_gb: 32, accelerator: NVIDIA_TESLA_T4, "
                  "accelerator_count: 2}, Evaluator: {cpu: 4, memory_gb: 16}}",
         "--set", "kubeflow.dataflow={project: p1, region: europe-west4, temp_location: gs://b/tmp, "
                  "max_num_workers: 20}")
    spec = json.loads(out.read_text())["pipelineSpec"]
    ex = spec["deploymentSpec"]["executors"]
    trainer = ex["Trainer_executor"]["container"]["resources"]
    assert trainer["cpuLimit"] == 8 and trainer["memoryLimit"] == 32
    assert trainer["accelerator"] == {"type": "NVIDIA_TESLA_T4", "count": "2"}
    assert ex["Evaluator_executor"]["container"]["resources"]["cpuLimit"] == 4
    assert "resources" not in ex["Pusher_executor"]["container"]
    for step in BEAM_STEPS:
        args = ex[f"{step}_executor"]["container"]["args"]
        assert "--runner=DataflowRunner" in args and f"--sdk_container_image={IMAGE}" in args, step
        assert "--project=p1" in args and "--temp_location=gs://b/tmp" in args and "--max_num_workers=20" in args
        # Dataflow's runner and image alone, no in-process args ahead of them.
        assert [a for a in args if a.startswith(("--runner", "--sdk_container_image"))] == [
            "--runner=DataflowRunner", f"--sdk_container_image={IMAGE}"], step
    assert "--runner=DataflowRunner" not in ex["Trainer_executor"]["container"]["args"]


def test_vertex_training_runs_the_trainer_as_a_custom_job(tmp_path):
    out = tmp_path / "pipeline.json"
    xfer("compile", "--config", "kubeflow", "--out", str(out), "--set", f"kubeflow.image={IMAGE}",
         "--set", "kubeflow.vertex_training={project: p1, region: us-central1, accelerator_type: NVIDIA_L4}")
    spec = json.loads(out.read_text())["pipelineSpec"]
    args = spec["deploymentSpec"]["executors"]["Trainer_executor"]["container"]["args"]
    assert "tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor" in args
    custom = json.loads(spec["root"]["dag"]["tasks"]["Trainer"]["inputs"]["parameters"]["custom_config"]
                        ["runtimeValue"]["constant"])
    assert custom["ai_platform_enable_vertex"] is True and custom["ai_platform_vertex_region"] == "us-central1"
    pool = custom["ai_platform_training_args"]["worker_pool_specs"][0]
    assert pool["container_spec"]["image_uri"] == IMAGE
    assert pool["machine_spec"]["accelerator_type"] == "NVIDIA_L4"
    assert custom["train"]["batch_size"] == 64  # the run_fn's own config travels with it


def test_cloud_config_with_local_pipeline_root_is_a_config_error(tmp_path):
    proc = xfer("compile", "--config", "kubeflow", "--set", f"kubeflow.image={IMAGE}",
                "--set", "pipeline_root=/tmp/root", "--out", str(tmp_path / "p.json"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "pipeline_root: '/tmp/root' is local but this is a cloud config" in proc.stderr

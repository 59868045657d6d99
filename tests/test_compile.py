"""`xfer compile` writes a KFP v2 PipelineJob whose every step runs the configured image."""
import json

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from conftest import xfer
from pipeline.pipeline import COMPONENTS

IMAGE = "registry.example.com/team/xfer:1.2.3"


def test_compile_kubeflow_parses_as_pipeline_job_with_configured_image(tmp_path):
    out = tmp_path / "pipeline.json"
    proc = xfer("compile", "--config", "kubeflow", "--target", "kubeflow", "--out", str(out),
                "--set", f"kubeflow.image={IMAGE}", "--set", "pipeline_root=gs://bucket/root")
    assert str(out) in proc.stdout
    job = json_format.Parse(out.read_text(), pipeline_spec_pb2.PipelineJob(), ignore_unknown_fields=False)
    assert job.runtime_config.gcs_output_directory == "gs://bucket/root"
    executors = job.pipeline_spec["deploymentSpec"]["executors"]
    containers = {name: ex["container"] for name, ex in executors.items() if "container" in ex}
    assert len(containers) >= 7  # every component but the resolver runs in a container
    for name, container in containers.items():
        assert container["image"] == IMAGE, name
    tasks = set(job.pipeline_spec["root"]["dag"]["tasks"])
    steps = [c for c in COMPONENTS if c != "LatestBlessedModelResolver"]
    assert set(steps) <= tasks, tasks
    # KFP v2 resolves the latest blessed model in two resolver tasks, no container.
    assert any(t.startswith("LatestBlessedModelResolver") for t in tasks)
    # Step code goes by import path; no step pip-installs a module file at run time.
    text = json.dumps(json.loads(out.read_text()))
    assert "components.trainer.run_fn" in text and "module_file" not in text.replace('"module_file": null', "")


def test_compile_without_image_is_a_config_error(tmp_path):
    proc = xfer("compile", "--config", "kubeflow", "--set", "kubeflow.image=null",
                "--out", str(tmp_path / "p.json"), check=False)
    assert proc.returncode == 2 and "kubeflow.image" in proc.stderr

"""`xfer compile` writes the KFP pipeline spec 2.1.0 whose every step runs the configured
image: for Kubeflow the PipelineSpec its upload takes, for Vertex AI a PipelineJob; in
the format the file's name says; whole or not at all; never with template placeholders
unless asked."""
import json

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from conftest import xfer
from kfp_upload import pipeline_specs_as_the_api_server_reads
from xfer.pipeline.pipeline import COMPONENTS

IMAGE = "registry.example.com/team/xfer:1.2.3"
# The shipped kubeflow template with every placeholder (YOUR_BUCKET, YOUR_PROJECT) set.
KUBEFLOW = ["--config", "kubeflow", "--set", f"kubeflow.image={IMAGE}", "--set", "root=gs://bucket/xfer",
            "--set", "pipeline_root=gs://bucket/root", "--set", "data.input_base=gs://bucket/data",
            "--set", "data.labels_file=gs://bucket/data/labels.txt", "--set", "push.destination=gs://bucket/serving"]


def _spec(path) -> dict:
    """The one PipelineSpec the KFP API server would take from the file."""
    specs = pipeline_specs_as_the_api_server_reads(path)
    assert len(specs) == 1, path.read_text()[:500]
    return specs[0][0]
# The Beam steps, written out here (not taken from the pipeline) so that a step left out
# there shows here.
BEAM_STEPS = ("ImportExampleGen", "StatisticsGen", "DataCheck", "Transform", "Evaluator")


def test_compile_kubeflow_writes_the_pipeline_spec_with_configured_image(tmp_path):
    out = tmp_path / "pipeline.yaml"
    proc = xfer("compile", *KUBEFLOW, "--target", "kubeflow", "--out", str(out))
    assert str(out) in proc.stdout and "PipelineSpec 2.1.0" in proc.stdout, proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yaml"]  # no temporary left beside it
    spec = _spec(out)
    assert spec["defaultPipelineRoot"] == "gs://bucket/root"
    executors = spec["deploymentSpec"]["executors"]
    containers = {name: ex["container"] for name, ex in executors.items() if "container" in ex}
    assert set(containers) == set(executors)  # every step is a container: no resolver
    for name, container in containers.items():
        assert container["image"] == IMAGE, name
    tasks = set(spec["root"]["dag"]["tasks"])
    assert tasks == set(COMPONENTS), tasks
    # Step code goes by import path; no step pip-installs a module file at run time.
    text = json.dumps(spec)
    assert "xfer.components.trainer.run_fn" in text and "module_file" not in text.replace('"module_file": null', "")
    # The Kubeflow template's Beam args name no runner: each Beam step gets Beam's
    # in-process runner (its worker processes kept), not a Prism fetched at run time.
    for step in BEAM_STEPS:
        args = containers[f"{step}_executor"]["args"]
        assert [a for a in args if a.startswith("--runner")] == ["--runner=FnApiRunner"], step
        assert "--sdk_container_image=none" in args and "--direct_running_mode=multi_processing" in args, step


def test_compile_without_image_is_a_config_error(tmp_path):
    proc = xfer("compile", *KUBEFLOW, "--set", "kubeflow.image=null", "--out", str(tmp_path / "p.json"),
                check=False)
    assert proc.returncode == 2 and "kubeflow.image" in proc.stderr


def test_production_settings_reach_the_compiled_spec(tmp_path):
    out = tmp_path / "pipeline.json"  # JSON by its name: the API server reads it as YAML
    xfer("compile", *KUBEFLOW, "--out", str(out),
         "--set", "kubeflow.resources={Trainer: {cpu: 8, memory_gb: 32, accelerator: NVIDIA_TESLA_T4, "
                  "accelerator_count: 2}, Evaluator: {cpu: 4, memory_gb: 16}}",
         "--set", "kubeflow.dataflow={project: p1, region: europe-west4, temp_location: gs://b/tmp, "
                  "max_num_workers: 20}")
    assert out.read_text().startswith("{")
    spec = _spec(out)
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
    out = tmp_path / "pipeline.yml"  # Vertex's PipelineJob, as YAML by its name
    xfer("compile", *KUBEFLOW, "--target", "vertex", "--out", str(out),
         "--set", "kubeflow.vertex_training={project: p1, region: us-central1, accelerator_type: NVIDIA_L4}")
    job = yaml.safe_load(out.read_text())
    json_format.ParseDict(job, pipeline_spec_pb2.PipelineJob(), ignore_unknown_fields=False)
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"
    spec = job["pipelineSpec"]
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
    proc = xfer("compile", *KUBEFLOW, "--set", "pipeline_root=/tmp/root", "--out", str(tmp_path / "p.json"),
                check=False)
    assert proc.returncode == 2, proc.stderr
    assert "pipeline_root: '/tmp/root' is local but this is a cloud config" in proc.stderr


def _no_trace(tmp_path):
    return {"XDG_STATE_HOME": str(tmp_path / "state")}


def test_an_output_name_of_no_known_format_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "pipeline.txt"
    proc = xfer("compile", *KUBEFLOW, "--out", str(out), check=False, env=_no_trace(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"xfer: config error: --out {out}: name a .yaml, .yml or .json file (the spec is written in the "
        f"format its name says; KFP's own compiler writes .yaml)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no file, no trace folder


def test_template_placeholders_are_refused_naming_each_key(tmp_path):
    out = tmp_path / "pipeline.yaml"
    proc = xfer("compile", "--config", "kubeflow", "--set", "data.input_base=gs://mine/images",
                "--out", str(out), check=False, env=_no_trace(tmp_path))
    assert proc.returncode == 2, proc.stderr
    named = {line.split(":")[0].strip(" -") for line in proc.stderr.splitlines() if line.startswith("  - ")}
    assert {"root", "pipeline_root", "data.labels_file", "push.destination", "kubeflow.image"} <= named, proc.stderr
    assert "data.input_base" not in named  # set: no longer a placeholder
    assert "--allow-placeholders" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_allow_placeholders_writes_the_template_as_make_compile_does(tmp_path):
    """`make compile`: the shipped template, no --out: pipeline.yaml in the current folder."""
    proc = xfer("compile", "--config", "kubeflow", "--allow-placeholders", cwd=tmp_path)
    assert "wrote pipeline.yaml" in proc.stdout, proc.stdout
    assert "is a template: " in proc.stderr and "kubeflow.image" in proc.stderr, proc.stderr
    spec = _spec(tmp_path / "pipeline.yaml")
    assert spec["defaultPipelineRoot"] == "gs://YOUR_BUCKET/xfer/pipeline_root"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yaml"]


@pytest.mark.timeout(300)
def test_a_compile_that_fails_after_tfx_wrote_leaves_the_old_file_and_nothing_else(tmp_path, monkeypatch):
    """The compile in this process (TFX's runner for real); a failure in the checks after
    TFX wrote, then one in the final rename: the earlier pipeline.yaml is untouched, no
    temporary is left beside it, and TFX's own folder is gone."""
    import os
    import tempfile

    from xfer.pipeline import kfp_spec
    from xfer.pipeline.config import load_config
    from xfer.pipeline.runners import compile_kubeflow

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "pipeline.yaml"
    out.write_text("the earlier spec\n")
    config = load_config("kubeflow", [a for a in KUBEFLOW[2:] if a != "--set"])

    monkeypatch.setattr(kfp_spec, "violations", lambda spec: ["a rule broken"])
    with pytest.raises(ValueError, match="a rule broken"):
        compile_kubeflow(config, str(out))
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))

    def replace_fails(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OSError, match="No space left"):
        compile_kubeflow(config, str(out))
    assert sorted(p.name for p in out_dir.iterdir()) == ["pipeline.yaml"]
    assert out.read_text() == "the earlier spec\n"
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == []


def test_strings_a_yaml_1_2_reader_would_take_for_numbers_are_quoted():
    """The API server decodes YAML with gopkg.in/yaml.v3 (YAML 1.2), PyYAML writes YAML 1.1:
    a string PyYAML leaves plain, such as 1e3 or 0o17, would reach the strict parse as a
    number and be refused."""
    from xfer.pipeline import kfp_spec

    values = {"a": "1e3", "b": "0o17", "c": "true", "d": ".inf", "e": "", "f": "-5", "g": "0x1F",
              "h": "NULL", "i": "~", "plain": "gs://b/x", "n": 3, "t": True}
    text = kfp_spec.dumps(values, "yaml")
    for key in "abcdefghi":
        assert f'{key}: "{values[key]}"' in text, text
    assert "plain: gs://b/x" in text and "n: 3" in text and "t: true" in text
    assert yaml.safe_load(text) == values

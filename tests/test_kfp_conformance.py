"""The compiled spec against the rules of the open-source Kubeflow Pipelines backend
(kubeflow/pipelines, tag 2.17.0, unchanged at its head when read) and Vertex AI, read
from the file `xfer compile` writes, as written, the way the API server reads an upload
(backend/src/apiserver/template/template.go, isV2Spec / isPipelineSpec: YAML documents, each
parsed strictly, unknown fields refused, as a PipelineSpec with pipelineInfo.name and root;
see tests/kfp_upload.py).

The run's views reach the KFP UI as artifacts of the types it draws. The type name in ML
Metadata comes from the compiled output definition: TFX's v2 compiler writes a custom
artifact class's TYPE_NAME as its instanceSchema title (tensorflow/tfx
tfx/orchestration/kubeflow/v2/compiler_utils.py, get_artifact_schema), pipeline/kfp_spec.py
rewrites it as KFP's compiler writes it (schemaTitle, schemaVersion 0.0.1:
kfp/dsl/types/artifact_types.py), and the launcher records either under the title
(backend/src/v2/component/launcher_v2.go, getArtifactSchema; backend/src/v2/metadata/
client.go, SchemaToArtifactType). The frontend picks viewers by that name
(frontend/src/components/viewers/MetricsVisualizations.tsx):

  output                     ML Metadata type               viewer
  Evaluator.metrics          system.Metrics                 Scalar Metrics table
  Evaluator.confusion_matrix system.ClassificationMetrics   confusion matrix
  Pusher.blessing_report     system.HTML                    Static HTML (file at the URI)
  Pusher.model_card          system.Markdown                Static Markdown (file at the URI)
  DataCheck.report           system.HTML                    Static HTML (file at the URI)

Each assertion names the backend file that enforces the rule. The rules are written
here from those files, not imported from pipeline/kfp_spec.py, so this test does not
grade the compiler with its own answer key. The last test shows the rules bite: TFX's
default output for the same DAG breaks them.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CIFAR, CONFIGS, xfer
from kfp_upload import UI_VIEWERS, pipeline_specs_as_the_api_server_reads, ui_typed_outputs

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = ["python", "-m", "xfer.components.kfp_entrypoint"]


def _producers(task: dict) -> set:
    inputs = task.get("inputs", {})
    return ({a["taskOutputArtifact"]["producerTask"] for a in inputs.get("artifacts", {}).values()
             if "taskOutputArtifact" in a}
            | {p["taskOutputParameter"]["producerTask"] for p in inputs.get("parameters", {}).values()
               if "taskOutputParameter" in p})


def backend_refusals(spec: dict) -> list:
    """What the open-source backend would refuse or mis-run, as each file states it."""
    out = []
    # backend/src/apiserver/template/v2_template.go (NewV2SpecTemplate): "KFP only supports
    # schema version 2.1.0".
    if spec.get("schemaVersion") != "2.1.0":
        out.append(f"schemaVersion {spec.get('schemaVersion')}")
    # backend/src/v2/compiler/argocompiler/dag.go: "resolver executors not implemented".
    out += [f"resolver executor {n}" for n, e in spec["deploymentSpec"]["executors"].items() if "resolver" in e]
    tasks = spec["root"]["dag"]["tasks"]
    for name, task in tasks.items():
        # backend/src/v2/driver/resolve.go (resolveInputParameter): runtimeValue.constant only.
        for key, p in task.get("inputs", {}).get("parameters", {}).items():
            if "runtimeValue" in p and set(p["runtimeValue"]) != {"constant"}:
                out.append(f"{name}.{key}: {sorted(p['runtimeValue'])}")
        # backend/src/v2/compiler/argocompiler/dag.go: driver.Depends = depends(task.GetDependentTasks()).
        missing = _producers(task) - set(task.get("dependentTasks", []))
        if missing:
            out.append(f"{name} reads {sorted(missing)} without dependentTasks")
    # backend/src/v2/driver/resolve.go: parameter values are checked against parameterType.
    for cname, component in spec["components"].items():
        for key, d in component.get("inputDefinitions", {}).get("parameters", {}).items():
            if "parameterType" not in d:
                out.append(f"{cname}.{key} has no parameterType")
    # Nothing in backend/src reads `lifecycle`: a preCacheCheck hook never runs there.
    out += [f"lifecycle hook on {n}" for n, e in spec["deploymentSpec"]["executors"].items()
            if "lifecycle" in e.get("container", {})]
    return out


SPAN_CONFIG = ["--config", str(CONFIGS / "cifar_small.yaml"), "--set", "kubeflow.image=registry.example/xfer:1",
               "--set", "pipeline_root=gs://bucket/root", "--set", f"data.input_base={CIFAR}",
               "--set", f"data.labels_file={CIFAR / 'labels.txt'}",
               "--set", 'data.splits={train: "span-{SPAN}/train/*", eval: "span-{SPAN}/eval/*"}']


@pytest.fixture(scope="module")
def compiled_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("spec") / "pipeline.yaml"  # the name KFP users upload
    xfer("compile", *SPAN_CONFIG, "--out", str(out))
    return out


@pytest.fixture(scope="module")
def compiled(compiled_file):
    specs = pipeline_specs_as_the_api_server_reads(compiled_file)
    assert len(specs) == 1, f"{len(specs)} pipeline specs in {compiled_file}"
    return specs[0][0]


def test_the_file_as_written_is_what_the_api_server_takes(compiled_file, compiled):
    # One YAML document, not JSON inside a .yaml name, and no other document in the stream.
    text = compiled_file.read_text()
    assert not text.lstrip().startswith("{")
    assert len(list(yaml.safe_load_all(text))) == 1
    # v2_template.go (NewV2SpecTemplate): "KFP only supports schema version 2.1.0".
    assert compiled["schemaVersion"] == "2.1.0"
    assert compiled["pipelineInfo"]["name"] == "xfer-cifar-test" and compiled["root"]["dag"]["tasks"]
    # What Vertex's PipelineJob wrapper held in runtimeConfig: the pipeline root, here the
    # spec's default, which the KFP UI offers for a run (frontend/src/pages/NewRunV2.tsx).
    assert compiled["defaultPipelineRoot"] == "gs://bucket/root"


def test_the_vertex_wrapper_is_refused_as_kubeflow_would_refuse_it(tmp_path):
    """The PipelineJob wrapper (displayName, pipelineSpec, runtimeConfig) has no document
    the API server takes: "unknown template format"."""
    out = tmp_path / "vertex.yaml"
    xfer("compile", *SPAN_CONFIG, "--target", "vertex", "--out", str(out))
    assert pipeline_specs_as_the_api_server_reads(out) == []
    job = yaml.safe_load(out.read_text())
    assert set(job) >= {"displayName", "pipelineSpec", "runtimeConfig"}
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    json_format.ParseDict(job, pipeline_spec_pb2.PipelineJob(), ignore_unknown_fields=False)


def test_the_open_source_backend_would_accept_and_run_it(compiled):
    assert backend_refusals(compiled) == []


def test_every_step_runs_the_type_restoring_entrypoint_with_its_input_definitions(compiled):
    for name, executor in compiled["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["command"] == ENTRYPOINT, name
        # Pipeline spec 2.1 passes the component's input definitions, from which the
        # entrypoint restores the types the open-source launcher leaves empty.
        assert "--json_serialized_inputs_spec_args" in container["args"], name
        assert container["image"] == "registry.example/xfer:1"


def test_span_data_and_the_served_model_are_never_taken_from_a_cache(compiled):
    tasks = compiled["root"]["dag"]["tasks"]
    # A KFP cache key is the task's inputs: the same {SPAN} pattern after a new span
    # lands, and no input at all for the served model.
    for name in ("ImportExampleGen", "ServedBaseline"):
        assert tasks[name].get("cachingOptions", {}).get("enableCache") is not True, name
    assert tasks["Trainer"]["cachingOptions"]["enableCache"] is True
    # The driver substitutes {{$.pipeline_job_uuid}} (backend/src/v2/driver/resolve.go):
    # a cache key that differs every run, even if a submit turns caching on for all tasks.
    nonce = tasks["ServedBaseline"]["inputs"]["parameters"]["run_nonce"]["runtimeValue"]["constant"]
    assert nonce == "{{$.pipeline_job_uuid}}"
    # The baseline is read after training, so it is what is served when the candidate is judged.
    assert "Trainer" in tasks["ServedBaseline"]["dependentTasks"]
    assert "ServedBaseline" in tasks["Evaluator"]["dependentTasks"]


# What the KFP UI draws for this pipeline: output -> (ML Metadata type, schemaVersion).
UI_OUTPUTS = {
    "Evaluator.metrics": ("system.Metrics", "0.0.1"),
    "Evaluator.confusion_matrix": ("system.ClassificationMetrics", "0.0.1"),
    "Pusher.blessing_report": ("system.HTML", "0.0.1"),
    "Pusher.model_card": ("system.Markdown", "0.0.1"),
    "DataCheck.report": ("system.HTML", "0.0.1"),
}


def test_the_views_are_outputs_of_the_types_the_kfp_ui_draws(compiled):
    """Exactly these outputs get a viewer, each under the type named in the frontend, in
    the form KFP's own compiler writes for an Output[Metrics] (schemaTitle, 0.0.1); still ten
    steps, the views are outputs of xfer's own."""
    assert ui_typed_outputs(compiled) == UI_OUTPUTS
    assert {title for title, _ in UI_OUTPUTS.values()} == set(UI_VIEWERS)
    assert len(compiled["root"]["dag"]["tasks"]) == 10
    for name, (title, _) in UI_OUTPUTS.items():
        task, key = name.split(".")
        component = compiled["components"][compiled["root"]["dag"]["tasks"][task]["componentRef"]["name"]]
        assert component["outputDefinitions"]["artifacts"][key]["artifactType"] == {
            "schemaTitle": title, "schemaVersion": "0.0.1"}, name


def test_tfx_default_output_for_the_same_dag_breaks_the_rules(tmp_path):
    """TFX's KubeflowV2DagRunner with its defaults: what `xfer compile` wrote before."""
    script = f"""
import json, sys
from xfer.pipeline.config import load_config
from xfer.pipeline.pipeline import create_pipeline
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as r
config = load_config({str(CONFIGS / 'cifar_small.yaml')!r}, ["kubeflow.image=x:1", "pipeline_root=gs://b/r",
    "data.input_base={CIFAR}", "data.labels_file={CIFAR / 'labels.txt'}"])
r.KubeflowV2DagRunner(config=r.KubeflowV2DagRunnerConfig(default_image="x:1"), output_dir={str(tmp_path)!r},
    output_filename="default.json").run(create_pipeline(config, for_kubeflow=True))
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, capture_output=True)
    refusals = backend_refusals(json.loads((tmp_path / "default.json").read_text())["pipelineSpec"])
    assert any(r.startswith("schemaVersion 2.0.0") for r in refusals), refusals
    assert any("constantValue" in r for r in refusals), refusals
    assert any(r.startswith("lifecycle hook") for r in refusals), refusals
    # TFX writes the views' types as an instanceSchema title, without KFP's schemaVersion.
    default_ui = ui_typed_outputs(json.loads((tmp_path / "default.json").read_text())["pipelineSpec"])
    assert default_ui == {name: (title, "") for name, (title, _) in UI_OUTPUTS.items()}

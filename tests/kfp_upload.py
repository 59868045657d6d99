"""How the Kubeflow Pipelines API server reads an uploaded pipeline file, for the tests that
check what `xfer compile` writes."""
from pathlib import Path

import yaml


def pipeline_specs_as_the_api_server_reads(path: Path) -> list:
    """Every document in the file that the KFP API server would take as the pipeline spec.

    backend/src/apiserver/template/template.go (isV2Spec, isPipelineSpec) and v2_template.go
    (NewV2SpecTemplate): the uploaded bytes are decoded as a stream of YAML documents
    (gopkg.in/yaml.v3; JSON is YAML); each document is marshalled to JSON and passed to
    protojson.Unmarshal into api/v2alpha1 PipelineSpec with its default options, that is
    unknown fields refused (DiscardUnknown false); a document counts only if that succeeds
    and pipelineInfo.name and root are set. Other documents (a PlatformSpec with a
    `platforms.kubernetes` entry) are read as the platform spec; a second PipelineSpec is an
    error ("multiple pipeline specs provided"); none is "unknown template format". The same
    proto, from the kfp-pipeline-spec package, is used here through json_format.ParseDict.
    """
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    found = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not isinstance(doc, dict):
            continue
        spec = pipeline_spec_pb2.PipelineSpec()
        try:
            json_format.ParseDict(doc, spec, ignore_unknown_fields=False)
        except json_format.ParseError:
            continue
        if spec.pipeline_info.name and spec.HasField("root"):
            found.append((doc, spec))
    return found


# The ML Metadata type names the KFP v2 UI draws, and how (kubeflow/pipelines
# frontend/src/components/viewers/MetricsVisualizations.tsx; the run comparison,
# frontend/src/pages/CompareV2.tsx, compares the same four). Each viewer skips an artifact
# without a display_name custom property, which the launcher sets to the output's name when
# the step did not (backend/src/v2/metadata/client.go, RecordArtifact).
UI_VIEWERS = {
    "system.Metrics": "Scalar Metrics table: every custom property but display_name (ScalarMetricsSection)",
    "system.ClassificationMetrics": "confusion matrix from the confusionMatrix custom property "
                                    "(ConfusionMatrixSection, validateConfusionMatrix)",
    "system.HTML": "Static HTML: the file at the artifact's URI, in a frame (getHtmlViewerConfig)",
    "system.Markdown": "Static Markdown: the file at the artifact's URI (getMarkdownViewerConfig)",
}


def _yaml_title(instance_schema: str) -> str:
    return (yaml.safe_load(instance_schema) or {}).get("title", "")


def ui_typed_outputs(spec: dict) -> dict:
    """{"Task.output": (ML Metadata type name, schemaVersion)} of every task output the KFP UI
    draws. The launcher names the type from the output definition: `schemaTitle` as is, an
    `instanceSchema` by its `title:` (backend/src/v2/component/launcher_v2.go,
    getArtifactSchema; backend/src/v2/metadata/client.go, SchemaToArtifactType). An
    instanceSchema has no version: ''."""
    found = {}
    for task_name, task in spec["root"]["dag"]["tasks"].items():
        component = spec["components"][task["componentRef"]["name"]]
        for key, definition in component.get("outputDefinitions", {}).get("artifacts", {}).items():
            t = definition["artifactType"]
            title = t.get("schemaTitle") or _yaml_title(t.get("instanceSchema", ""))
            if title in UI_VIEWERS:
                found[f"{task_name}.{key}"] = (title, t.get("schemaVersion", ""))
    return found

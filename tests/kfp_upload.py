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

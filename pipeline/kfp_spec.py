"""The compiled pipeline spec, made acceptable to open-source Kubeflow Pipelines 2.x as
well as Vertex AI, checked against the backend's rules, and written in the document each
of them takes.

TFX's KubeflowV2DagRunner targets Vertex AI. With `use_pipeline_spec_2_1` it writes
schema 2.1.0 and `constant` parameter values; the DAG has no resolver node (the baseline
is a step, components/baseline.py). What is left is done here, on the PipelineSpec:

- `lifecycle.preCacheCheck` (ImportExampleGen's driver) is removed: the open-source
  backend never runs it, and the step now resolves spans itself
  (components/kfp_entrypoint.py), the same on both backends;
- caching is off for the tasks whose output can change under the same inputs: a KFP
  cache key is made of the task's inputs, which for ImportExampleGen are a file pattern
  that stays the same when a new span lands, and for ServedBaseline nothing at all;
- every task lists, in `dependentTasks`, every task whose outputs it reads: the
  open-source backend orders tasks by that list alone;
- the outputs of KFP's own types (system.Metrics, system.ClassificationMetrics,
  system.HTML, system.Markdown: components/kfp_artifacts.py), which TFX writes as an
  instanceSchema titled with the type, are written as KFP's compiler writes them:
  `schemaTitle` and `schemaVersion` 0.0.1. Either names the ML Metadata type the UI draws
  by (backend/src/v2/component/launcher_v2.go, getArtifactSchema); this form is the one
  every KFP tool (kfp.local, the SDK's loader, Vertex) knows as that type.

The two targets take different documents. Kubeflow takes the PipelineSpec itself: its
API server reads an uploaded file as YAML documents and keeps one only if it parses
strictly, unknown fields refused, as a PipelineSpec with pipelineInfo.name and root
(backend/src/apiserver/template/template.go, isV2Spec / isPipelineSpec); TFX's PipelineJob
wrapper (displayName, pipelineSpec, runtimeConfig) is refused there as "unknown template
format". What the wrapper's runtimeConfig held, the pipeline root, goes into the spec's
defaultPipelineRoot, which the KFP UI offers as the run's pipeline root
(frontend/src/pages/NewRunV2.tsx). Vertex AI takes the PipelineJob as TFX writes it.

`violations()` states the backend's rules, each with the file in kubeflow/pipelines
(tag 2.17.0) where the backend enforces it; `xfer compile` refuses to write a spec that
breaks one.
"""
from __future__ import annotations

import copy
import json
import os
import re
import tempfile

import yaml

from xfer.pipeline.config import ConfigError

SCHEMA_VERSION = "2.1.0"
# On Kubeflow the cache key cannot see new files under the same {SPAN} pattern, nor a
# newly served model.
NEVER_CACHED = ("ImportExampleGen", "ServedBaseline", "WarmStartModel")
# File name endings and the format written for each. The KFP SDK writes YAML (JSON is
# deprecated there); the API server takes both (.yaml/.yml, and .json since 2.x).
FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def _producers(task: dict) -> set[str]:
    inputs = task.get("inputs", {})
    found = {a["taskOutputArtifact"]["producerTask"]
             for a in inputs.get("artifacts", {}).values() if "taskOutputArtifact" in a}
    found |= {p["taskOutputParameter"]["producerTask"]
              for p in inputs.get("parameters", {}).values() if "taskOutputParameter" in p}
    return found


def make_conformant(spec: dict) -> dict:
    """The PipelineSpec TFX wrote, changed in place as the module doc says."""
    from xfer.components.kfp_artifacts import KFP_SCHEMA_VERSION, kfp_types

    for component in spec.get("components", {}).values():
        outputs = component.get("outputDefinitions", {}).get("artifacts", {})
        for name, title in kfp_types(outputs).items():
            outputs[name]["artifactType"] = {"schemaTitle": title, "schemaVersion": KFP_SCHEMA_VERSION}
    for executor in spec["deploymentSpec"]["executors"].values():
        executor.get("container", {}).pop("lifecycle", None)
    for name, task in spec["root"]["dag"]["tasks"].items():
        if name in NEVER_CACHED:
            task["cachingOptions"] = {"enableCache": False}
        missing = _producers(task) - set(task.get("dependentTasks", []))
        if missing:
            task["dependentTasks"] = sorted(set(task.get("dependentTasks", [])) | missing)
    return spec


def kubeflow_document(job: dict) -> dict:
    """The bare PipelineSpec Kubeflow's upload takes, carrying what the wrapper's
    runtimeConfig held: the pipeline root as defaultPipelineRoot, and any parameter value as
    the default of the root's input of that name, which the backend uses when a run gives
    none (backend/src/v2/compiler/argocompiler/argo.go, Compile). (This pipeline has no
    runtime parameters today: TFX's runtimeConfig holds the root alone.)"""
    spec = copy.deepcopy(job["pipelineSpec"])
    runtime = job.get("runtimeConfig", {})
    if runtime.get("gcsOutputDirectory"):
        spec["defaultPipelineRoot"] = runtime["gcsOutputDirectory"]
    inputs = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    for name, value in (runtime.get("parameterValues") or {}).items():
        if name not in inputs:
            raise ValueError(f"runtimeConfig.parameterValues.{name}: the pipeline has no input of that "
                             f"name to carry it (root.inputDefinitions.parameters)")
        inputs[name]["defaultValue"] = value
    return spec


def _strict_parse_error(spec: dict) -> str | None:
    """Why the API server's protojson.Unmarshal (unknown fields refused) would not take
    `spec` as a PipelineSpec, or None. The proto is the one the KFP SDK ships."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    try:
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    except json_format.ParseError as e:
        return str(e)
    return None


def violations(spec: dict) -> list[str]:
    """What the open-source KFP backend (or Vertex AI) would refuse or mis-run in a
    PipelineSpec, one line each."""
    found = []
    why = _strict_parse_error(spec)
    if why:
        found.append(f"not a PipelineSpec when read strictly: {why} "
                     f"(backend/src/apiserver/template/template.go, isPipelineSpec)")
    if not spec.get("pipelineInfo", {}).get("name") or not spec.get("root"):
        found.append("pipelineInfo.name or root is empty: the API server takes no such spec "
                     "(backend/src/apiserver/template/template.go, isPipelineSpec)")
    if spec.get("schemaVersion") != SCHEMA_VERSION:
        found.append(f"schemaVersion is {spec.get('schemaVersion')!r}: the API server accepts "
                     f"{SCHEMA_VERSION} only (backend/src/apiserver/template/v2_template.go)")
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    for name, executor in sorted(executors.items()):
        if "resolver" in executor:
            found.append(f"executor {name} is a resolver: refused when a run is created "
                         f"(backend/src/v2/compiler/argocompiler/dag.go: resolver executors not implemented)")
        if "customJob" in executor:
            found.append(f"executor {name} is a Vertex custom job: refused by the open-source "
                         f"backend (backend/src/v2/compiler/argocompiler/dag.go)")
        if "lifecycle" in executor.get("container", {}):
            found.append(f"executor {name} has a lifecycle hook: nothing in the open-source backend "
                         f"runs it (no reader of lifecycle in backend/src)")

    def parameter_values(where: str, params: dict):
        for key, value in params.items():
            runtime = value.get("runtimeValue")
            if runtime is not None and "constant" not in runtime:
                found.append(f"{where} parameter {key} is {list(runtime)}: the driver resolves "
                             f"runtimeValue.constant only (backend/src/v2/driver/resolve.go)")

    def walk(dag: dict, where: str):
        tasks = dag.get("tasks", {})
        for name, task in sorted(tasks.items()):
            parameter_values(f"{where}task {name}", task.get("inputs", {}).get("parameters", {}))
            missing = _producers(task) - set(task.get("dependentTasks", []))
            if missing:
                found.append(f"{where}task {name} reads outputs of {sorted(missing)} without listing "
                             f"them in dependentTasks: the backend orders tasks by that list alone "
                             f"(backend/src/v2/compiler/argocompiler/dag.go)")
            if name in NEVER_CACHED and task.get("cachingOptions", {}).get("enableCache"):
                found.append(f"{where}task {name} may be taken from the cache, but its output can "
                             f"change under the same inputs")
    walk(spec.get("root", {}).get("dag", {}), "")
    from xfer.components.kfp_artifacts import KFP_SCHEMA_VERSION, kfp_types

    for cname, component in sorted(spec.get("components", {}).items()):
        outputs = component.get("outputDefinitions", {}).get("artifacts", {})
        for key, title in sorted(kfp_types(outputs).items()):
            written = outputs[key]["artifactType"]
            if written != {"schemaTitle": title, "schemaVersion": KFP_SCHEMA_VERSION}:
                found.append(f"component {cname} output {key} of type {title} is written as {written}: KFP's "
                             f"compiler writes schemaTitle {title} with schemaVersion {KFP_SCHEMA_VERSION} "
                             f"(kfp/dsl/types/artifact_types.py), the form the KFP UI's viewers are tested with")
        for key, definition in component.get("inputDefinitions", {}).get("parameters", {}).items():
            if "parameterType" not in definition:
                found.append(f"component {cname} input {key} has no parameterType: the driver "
                             f"checks values against it (backend/src/v2/driver/resolve.go)")
        if "dag" in component:
            walk(component["dag"], f"component {cname} ")
    return found


def output_format(path: str) -> str:
    """'yaml' or 'json', from the file name; anything else is the user's error."""
    ending = os.path.splitext(path)[1].lower()
    if ending not in FORMATS:
        raise ConfigError(f"--out {path}: name a .yaml, .yml or .json file (the spec is written in "
                          f"the format its name says; KFP's own compiler writes .yaml)")
    return FORMATS[ending]


# A plain YAML scalar that a YAML 1.2 reader (the API server's gopkg.in/yaml.v3) could take
# for a number, bool or null: PyYAML, a YAML 1.1 writer, leaves some of these unquoted
# (1e3, 0o17), and a string read back as a number is refused by the strict parse.
_NOT_PLAINLY_A_STRING = re.compile(r"^([-+]?\.?[0-9]|\.(inf|Inf|INF|nan|NaN|NAN)$|"
                                   r"(true|True|TRUE|false|False|FALSE|null|Null|NULL|~)$)|^$")


class _SpecDumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, text: str):
    style = '"' if _NOT_PLAINLY_A_STRING.match(text) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_SpecDumper.add_representer(str, _represent_str)


def dumps(document: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(document, indent=2, sort_keys=True) + "\n"
    return yaml.dump(document, Dumper=_SpecDumper, sort_keys=True, allow_unicode=True)


def write(document: dict, path: str) -> None:
    """`document` in the format `path` names, complete or not at all: written beside it
    under a hidden temporary name, renamed over `path` when done, removed on any failure."""
    text = dumps(document, output_format(path))
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

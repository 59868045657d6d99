"""The compiled pipeline spec, made acceptable to open-source Kubeflow Pipelines 2.x as
well as Vertex AI, and checked against the backend's rules before it is written.

TFX's KubeflowV2DagRunner targets Vertex AI. With `use_pipeline_spec_2_1` it writes
schema 2.1.0 and `constant` parameter values; the DAG has no resolver node (the baseline
is a step, components/baseline.py). What is left is done here, on the JSON:

- `lifecycle.preCacheCheck` (ImportExampleGen's driver) is removed: the open-source
  backend never runs it, and the step now resolves spans itself
  (components/kfp_entrypoint.py), the same on both backends;
- caching is off for the tasks whose output can change under the same inputs: a KFP
  cache key is made of the task's inputs, which for ImportExampleGen are a file pattern
  that stays the same when a new span lands, and for ServedBaseline nothing at all;
- every task lists, in `dependentTasks`, every task whose outputs it reads: the
  open-source backend orders tasks by that list alone.

`violations()` states the backend's rules, each with the file in kubeflow/pipelines
(tag 2.17.0) where the backend enforces it; `xfer compile` refuses to write a spec that
breaks one.
"""
from __future__ import annotations

import json

SCHEMA_VERSION = "2.1.0"
# On Kubeflow the cache key cannot see new files under the same {SPAN} pattern, nor a
# newly served model.
NEVER_CACHED = ("ImportExampleGen", "ServedBaseline", "WarmStartModel")


def _producers(task: dict) -> set[str]:
    inputs = task.get("inputs", {})
    found = {a["taskOutputArtifact"]["producerTask"]
             for a in inputs.get("artifacts", {}).values() if "taskOutputArtifact" in a}
    found |= {p["taskOutputParameter"]["producerTask"]
              for p in inputs.get("parameters", {}).values() if "taskOutputParameter" in p}
    return found


def make_conformant(job: dict) -> dict:
    """The PipelineJob JSON TFX wrote, changed in place as the module doc says."""
    spec = job["pipelineSpec"]
    for executor in spec["deploymentSpec"]["executors"].values():
        executor.get("container", {}).pop("lifecycle", None)
    for name, task in spec["root"]["dag"]["tasks"].items():
        if name in NEVER_CACHED:
            task["cachingOptions"] = {"enableCache": False}
        missing = _producers(task) - set(task.get("dependentTasks", []))
        if missing:
            task["dependentTasks"] = sorted(set(task.get("dependentTasks", [])) | missing)
    return job


def violations(job: dict) -> list[str]:
    """What the open-source KFP backend (or Vertex AI) would refuse or mis-run, one line each."""
    spec = job.get("pipelineSpec", job)
    found = []
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
    for cname, component in sorted(spec.get("components", {}).items()):
        for key, definition in component.get("inputDefinitions", {}).get("parameters", {}).items():
            if "parameterType" not in definition:
                found.append(f"component {cname} input {key} has no parameterType: the driver "
                             f"checks values against it (backend/src/v2/driver/resolve.go)")
        if "dag" in component:
            walk(component["dag"], f"component {cname} ")
    return found


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def save(job: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(job, f, indent=2, sort_keys=True)
        f.write("\n")

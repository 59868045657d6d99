"""A test tool that plays the KFP v2 launcher for a TFX-compiled pipeline: it runs each
container task of the compiled spec in DAG order, in `docker run` of the spec's image
with the spec's exact command and arguments, `{{$}}` replaced by the ExecutorInput a
launcher would give (parameters, input artifacts with the metadata their producers
wrote, output artifact URIs under the pipeline root, the output file). A task's
preCacheCheck (ImportExampleGen's driver) runs first, as the launcher runs it.

Resolver tasks, which a KFP backend answers from its metadata store, are answered by
the caller (`resolved`: task name -> list of runtime artifacts; empty on a first run).
Never used at run time: production runs on a real KFP or Vertex backend.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Optional


def _value(v: dict):
    """A compiled constant -> the protobuf Value JSON ExecutorInput.parameterValues holds."""
    c = v["runtimeValue"]["constantValue"]
    if "stringValue" in c:
        return c["stringValue"]
    if "intValue" in c:
        return int(c["intValue"])
    if "doubleValue" in c:
        return float(c["doubleValue"])
    return next(iter(c.values()))


def _order(tasks: dict) -> list[str]:
    done, order = set(), []
    while len(order) < len(tasks):
        progressed = False
        for name, t in sorted(tasks.items()):
            deps = set(t.get("dependentTasks", []))
            deps |= {a["taskOutputArtifact"]["producerTask"]
                     for a in t.get("inputs", {}).get("artifacts", {}).values() if "taskOutputArtifact" in a}
            if name not in done and deps <= done:
                done.add(name)
                order.append(name)
                progressed = True
        if not progressed:
            raise ValueError(f"cycle or missing task among {set(tasks) - done}")
    return order


def run(spec_path: str, root: str, image: str, mounts: list[str], *,
        resolved: Optional[dict] = None, log=print) -> dict:
    """Run the pipeline; returns {task: {output key: runtime artifact}} and timings."""
    job = json.load(open(spec_path))
    spec = job["pipelineSpec"]
    tasks, components = spec["root"]["dag"]["tasks"], spec["components"]
    executors = spec["deploymentSpec"]["executors"]
    run_id = time.strftime("run-%Y%m%d-%H%M%S")
    produced: dict = {}
    timings: dict = {}
    for name in _order(tasks):
        task = tasks[name]
        component = components[task["componentRef"]["name"]]
        executor = executors[component["executorLabel"]]
        if "resolver" in executor:
            produced[name] = {k: v for k, v in (resolved or {}).get(name, {}).items()}
            log(f"[harness] {name}: resolved {sorted(produced[name]) or 'nothing (no blessed model yet)'}")
            continue
        task_root = os.path.join(root, run_id, name)
        os.makedirs(task_root, exist_ok=True)
        os.chmod(task_root, 0o777)
        constants = task.get("inputs", {}).get("parameters", {})
        params = {k: _value(v) for k, v in constants.items()}
        # Both forms a launcher fills: parameterValues (protobuf Value) and the older
        # `parameters` (typed Value), which TFX's entrypoints read when no inputs spec is given.
        typed = {k: v["runtimeValue"]["constantValue"] for k, v in constants.items()}
        in_artifacts = {}
        for key, ref in task.get("inputs", {}).get("artifacts", {}).items():
            src = ref["taskOutputArtifact"]
            artifact = produced.get(src["producerTask"], {}).get(src["outputArtifactKey"])
            if artifact is not None:
                in_artifacts[key] = {"artifacts": [artifact]}
        outputs = {}
        for key, definition in component.get("outputDefinitions", {}).get("artifacts", {}).items():
            outputs[key] = {"artifacts": [{
                "name": f"{name}-{key}", "type": definition["artifactType"],
                "uri": os.path.join(task_root, key), "metadata": {}}]}
        output_file = os.path.join(task_root, "executor_output.json")
        executor_input = json.dumps({
            "inputs": {"parameterValues": params, "parameters": typed, "artifacts": in_artifacts},
            "outputs": {"artifacts": outputs, "outputFile": output_file}})
        container = executor["container"]
        steps = []
        if "lifecycle" in container:
            pre = container["lifecycle"]["preCacheCheck"]
            steps.append(("driver", pre["command"], pre["args"]))
        steps.append(("executor", container["command"], container["args"]))
        start = time.perf_counter()
        for what, command, args in steps:
            args = [executor_input if a == "{{$}}" else a for a in args]
            cmd = ["docker", "run", "--rm", "--network", "none"]
            for m in mounts + [root]:
                cmd += ["-v", f"{m}:{m}"]
            cmd += [container["image"] if container["image"] == image else image, *command, *args]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{name} ({what}) failed in the container, exit {proc.returncode}:\n"
                                   f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        timings[name] = time.perf_counter() - start
        log(f"[harness] {name}: done in {timings[name]:.1f}s")
        result = json.load(open(output_file)) if os.path.exists(output_file) else {}
        produced[name] = {}
        for key, out in outputs.items():
            artifact = dict(out["artifacts"][0])
            written = result.get("artifacts", {}).get(key, {}).get("artifacts", [])
            if written:
                artifact["metadata"] = written[0].get("metadata", {})
            produced[name][key] = artifact
    return {"artifacts": produced, "timings": timings, "run_id": run_id}

"""What a run did, read back from the ML Metadata store (per step executed or cached,
eval accuracy, the blessing and why, where the model was pushed), as the text `xfer run`
ends with and `xfer runs` lists, and the report kept beside the runs."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from xfer.pipeline import store as mlmd
from xfer.pipeline.blessing import Blessing, read_blessing


@dataclass
class RunSummary:
    run_id: str
    states: dict[str, str]  # component id -> executed | cached | failed | ...
    blessing: Optional[Blessing] = None
    pushed_to: Optional[str] = None
    model_uri: Optional[str] = None
    durations: dict[str, float] = field(default_factory=dict)  # component -> seconds
    started_ms: Optional[int] = None
    pushed_version: Optional[str] = None
    pushed_new: bool = True  # False: the blessed model was already the latest version


def summarize(metadata_path: str, pipeline_name: str, run_id: Optional[str] = None) -> RunSummary:
    """The summary of a run, by id; the newest without one."""
    store = mlmd.open_store(metadata_path)
    return _summarize(store, mlmd.find_run(store, pipeline_name, run_id), pipeline_name)


def _summarize(store, run, pipeline_name: str) -> RunSummary:
    summary = RunSummary(run_id=run.name, states={})
    evaluation_uri = blessed = None
    for node, ex in mlmd.step_executions(store, run, pipeline_name):
        summary.states[node] = mlmd.state_name(ex)
        summary.durations[node] = (ex.last_update_time_since_epoch - ex.create_time_since_epoch) / 1000.0
        if summary.started_ms is None or ex.create_time_since_epoch < summary.started_ms:
            summary.started_ms = ex.create_time_since_epoch
        for type_name, a in mlmd.output_artifacts(store, ex.id):
            if type_name == "ModelEvaluation":
                evaluation_uri = a.uri
            elif type_name == "ModelBlessing":
                blessed = bool(mlmd.custom_property(a, "blessed"))
            elif type_name == "PushedModel" and mlmd.custom_property(a, "pushed"):
                summary.pushed_to = mlmd.custom_property(a, "pushed_destination")
                summary.pushed_version = str(mlmd.custom_property(a, "pushed_version"))
                summary.pushed_new = mlmd.custom_property(a, "new_version") != 0
            elif type_name == "Model" and node == "Trainer":
                summary.model_uri = a.uri
    if evaluation_uri is not None:
        summary.blessing = read_blessing(evaluation_uri, bool(blessed), _model_class_names(summary.model_uri))
    return summary


def _model_class_names(model_uri: Optional[str]) -> Optional[list[str]]:
    """The class names the Trainer exported beside the model (assets.extra/labels.txt),
    for the per-class rows of the blessing report; None when not there."""
    if not model_uri:
        return None
    import tensorflow as tf

    path = os.path.join(model_uri, "Format-Serving", "assets.extra", "labels.txt")
    try:
        with tf.io.gfile.GFile(path) as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except tf.errors.NotFoundError:
        return None


def format_summary(summary: RunSummary, ev, wall_seconds: Optional[float] = None) -> str:
    """The end-of-run summary; `ev` is the run's eval config (its thresholds)."""
    lines = [f"run {summary.run_id}"]
    width = max(len(c) for c in summary.states) if summary.states else 10
    for component, state in summary.states.items():
        if component.endswith("Resolver"):
            state = "resolved" if state == "executed" else state  # resolvers always run: no cache
        elif state == "executed":
            state = "ran"
        lines.append(f"  {component:<{width}}  {state}")
    b = summary.blessing
    if b is not None:
        if b.candidate is not None:
            lines.append(f"eval accuracy: {b.candidate:.4f}"
                         + (f" (baseline {b.baseline:.4f})" if b.baseline is not None else ""))
        lines.append(b.headline(ev))
        lines += b.report(ev)
    if summary.pushed_to and summary.pushed_new:
        lines.append(f"pushed to: {summary.pushed_to} (version {summary.pushed_version})")
    elif summary.pushed_to:
        lines.append(f"pushed: no new version; this model is already version "
                     f"{summary.pushed_version} at {summary.pushed_to}")
    else:
        lines.append("pushed: nothing")
    if wall_seconds is not None:
        lines.append(f"total time: {wall_seconds:.0f}s")
    return "\n".join(lines)


def save_report(root: str, run_id: str, text: str) -> str:
    """Keep a run's summary and blessing report beside its runs (root/reports/RUN/)."""
    import tensorflow as tf

    folder = os.path.join(root, "reports", run_id.replace(":", "-"))
    tf.io.gfile.makedirs(folder)
    path = os.path.join(folder, "blessing.txt")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text + "\n")
    return path


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def format_runs(metadata_path: str, pipeline_name: str, last: Optional[int] = None,
                root: Optional[str] = None) -> str:
    """Past runs, newest last. A run with steps left running is `running` only while a
    live process holds the root (pipeline/lock.py); otherwise it was `interrupted`."""
    from xfer.pipeline.lock import holder

    live = holder(root) if root else None
    store = mlmd.open_store(metadata_path)
    runs = mlmd.pipeline_runs(store, pipeline_name)
    if last:
        runs = runs[-last:]
    lines = []
    for run in runs:
        s = _summarize(store, run, pipeline_name)
        b = s.blessing
        acc = f"{b.candidate:.4f}" if b and b.candidate is not None else "-"
        states = set(s.states.values())
        if "failed" in states:
            status = "failed"
        elif "running" in states and live is not None and live.run_id == s.run_id:
            status = "running"
        elif states & {"running", "interrupted"}:
            status = "interrupted"
        else:
            status = "complete"
        lines.append(f"{s.run_id}  started {_when(s.started_ms) if s.started_ms else '-'}  "
                     f"{status}  accuracy {acc}  "
                     f"{'blessed' if b and b.blessed else 'not blessed' if b else 'not evaluated'}  "
                     f"pushed {s.pushed_version or '-'}")
        for component, state in s.states.items():
            seconds = s.durations.get(component)
            lines.append(f"    {component:<28} {state:<9} {seconds:7.1f}s" if seconds is not None
                         else f"    {component:<28} {state}")
    return "\n".join(lines) if lines else f"no runs of '{pipeline_name}' yet"

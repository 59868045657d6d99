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
    spans: list[int] = field(default_factory=list)        # the input spans the run read
    examples: dict[str, int] = field(default_factory=dict)  # split -> records kept by DataCheck
    bad_records: Optional[int] = None                     # skipped by DataCheck (None: did not run)
    bad_records_file: Optional[str] = None
    # Kinds over data.drift thresholds, each {kind, key, distance, limit} (None: not compared).
    drifted: Optional[list[dict]] = None
    model_card: Optional[str] = None  # the pushed version's MODEL_CARD.md
    baseline_note: Optional[str] = None  # served versions ServedBaseline passed over, or why no baseline


def summarize(metadata_path: str, pipeline_name: str, run_id: Optional[str] = None) -> RunSummary:
    """The summary of a run, by id; the newest without one."""
    store = mlmd.open_store(metadata_path)
    return _summarize(store, mlmd.find_run(store, pipeline_name, run_id), pipeline_name)


def _summarize(store, run, pipeline_name: str) -> RunSummary:
    summary = RunSummary(run_id=run.name, states={})
    evaluation_uri = blessed = None
    for node, ex in mlmd.step_executions(store, run, pipeline_name):
        summary.states[node] = mlmd.state_name(ex)
        if node == "DataCheck" and summary.states[node] in ("executed", "cached", "failed"):
            summary.drifted = drifted_kinds(store, ex)
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
                summary.model_card = mlmd.custom_property(a, "model_card")
            elif type_name == "Model" and node == "Trainer":
                summary.model_uri = a.uri
            elif type_name == "Model" and node == "ServedBaseline":
                summary.baseline_note = mlmd.custom_property(a, "served_note")  # components/baseline.py
            elif type_name == "Examples" and node == "ImportExampleGen":
                span, window = mlmd.custom_property(a, "span"), mlmd.custom_property(a, "spans")
                summary.spans = ([int(x) for x in window.split(",")] if window else
                                 [int(span)] if span is not None else [])
            elif type_name == "Examples" and node == "DataCheck" and summary.states[node] in ("executed", "cached"):
                summary.bad_records = int(mlmd.custom_property(a, "bad_records") or 0)
                summary.examples = _kept(a.uri)
                if summary.bad_records:
                    summary.bad_records_file = os.path.join(a.uri, "bad_records.json")
    if evaluation_uri is not None:
        summary.blessing = read_blessing(evaluation_uri, bool(blessed), _model_class_names(summary.model_uri))
    return summary


def drifted_kinds(store, data_check) -> Optional[list[dict]]:
    """The kinds DataCheck's drift gate found over their data.drift threshold, as it
    computed them: its drift.json when it finished (data.on_anomaly: warn); when the gate
    stopped the run (fail), TFX removed that output, so the same comparison
    (data_check.compare_spans) of the span statistics DataCheck read, against the
    thresholds it was given. None: no spans were compared."""
    import json

    import tensorflow as tf

    from xfer.components.data_check import DRIFT, compare_spans
    from xfer.components.import_gen import read_span_stats

    compared = None
    try:
        for type_name, a in mlmd.output_artifacts(store, data_check.id):
            path = os.path.join(a.uri, DRIFT)
            if type_name == "Examples" and tf.io.gfile.exists(path):
                with tf.io.gfile.GFile(path) as f:
                    compared = json.load(f)
        if compared is None:
            thresholds = mlmd.custom_property(data_check, "drift")  # TFX keeps parameters on the execution
            stats = next((read_span_stats(a.uri) for a in _inputs(store, data_check.id, "Examples")), None)
            if thresholds is None or stats is None:
                return None
            compared = compare_spans(stats, json.loads(thresholds))
    except (OSError, ValueError, KeyError, tf.errors.OpError):
        return None  # an output from before drift was kept, or removed since: not known
    if compared["previous"] is None:
        return None
    return [{"kind": k["kind"], "key": k["key"], "distance": k["linf"], "limit": k["threshold"]}
            for k in compared["kinds"] if k["drifted"]]


def _inputs(store, execution_id: int, type_name: str) -> list:
    """The artifacts of a type an execution read."""
    from ml_metadata.proto import metadata_store_pb2

    events = store.get_events_by_execution_ids([execution_id])
    ids = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.INPUT]
    return [a for a in (store.get_artifacts_by_id(ids) if ids else [])
            if store.get_artifact_types_by_id([a.type_id])[0].name == type_name]


def _kept(checked_uri: str) -> dict[str, int]:
    from xfer.components.data_check import records_kept
    try:
        return records_kept(checked_uri)
    except Exception:  # noqa: BLE001 - a DataCheck output from before the counts were kept
        return {}


def status(summary: RunSummary, live_run_id: Optional[str] = None) -> str:
    """complete | failed | running (a live process holds the root for it) | interrupted."""
    states = set(summary.states.values())
    if "failed" in states:
        return "failed"
    if "running" in states and live_run_id == summary.run_id:
        return "running"
    if states & {"running", "interrupted"}:
        return "interrupted"
    return "complete"


def result(summary: RunSummary, ev, error: Optional[str] = None, live_run_id: Optional[str] = None) -> dict:
    """The run as a scheduler or an alerting hook reads it (result.json, `xfer runs --json`).
    `error`: the line that ended the run; with it the run is failed, unless its steps show
    it was interrupted (then `error` says how it was found)."""
    run_status = status(summary, live_run_id)
    if error and run_status != "interrupted":
        run_status = "failed"
    b = summary.blessing
    thresholds = []
    if b is not None:
        if ev.min_accuracy is not None:
            thresholds.append({"key": "eval.min_accuracy", "metric": "accuracy", "kind": "min",
                               "value": ev.min_accuracy, "candidate": b.candidate,
                               "result": "fail" if b.value_failed else "pass"})
        for key, kind in (("max_drop", "max_drop"), ("max_drop_relative", "max_drop_relative")):
            if getattr(ev, key) is not None:
                thresholds.append({"key": f"eval.{key}", "metric": "accuracy", "kind": kind,
                                   "value": getattr(ev, key), "candidate": b.candidate, "baseline": b.baseline,
                                   "result": ("not applied: no served model to compare with" if b.baseline is None
                                              else "fail" if b.change_failed else "pass")})
    if summary.pushed_to:
        pushed = {"version": summary.pushed_version, "destination": summary.pushed_to,
                  "new_version": summary.pushed_new, "model_card": summary.model_card}
        why_not = None
    else:
        pushed = None
        why_not = ("not blessed" if b is not None and not b.blessed else
                   "the run failed" if run_status == "failed" else
                   "the run was interrupted" if run_status == "interrupted" else
                   "not evaluated (the run stopped before the Evaluator)" if b is None else "not pushed")
    return {
        "run_id": summary.run_id,
        "started": _when(summary.started_ms) if summary.started_ms else None,
        "status": run_status,
        "error": error,
        "steps": summary.states,
        "seconds": {k: round(v, 1) for k, v in summary.durations.items()},
        "spans": summary.spans,
        "examples": summary.examples,
        "bad_records_skipped": summary.bad_records,
        "bad_records_file": summary.bad_records_file,
        "drifted_kinds": summary.drifted,
        "metrics": {"accuracy": b.candidate if b else None, "baseline_accuracy": b.baseline if b else None,
                    "recall_per_class": [{"class": b.class_name(c.label), "examples": c.examples,
                                          "candidate": c.candidate, "baseline": c.baseline}
                                         for c in b.per_class] if b else []},
        "blessed": None if b is None else b.blessed,
        "thresholds": thresholds,
        "pushed": pushed,
        "not_pushed_because": why_not,
        "baseline_note": summary.baseline_note,
        "model": summary.model_uri,
    }

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
    if summary.baseline_note:
        lines.append(f"baseline: {summary.baseline_note}")
    if summary.drifted:
        lines.append(f"drift: {len(summary.drifted)} kind(s) over the data.drift thresholds, trained anyway "
                     f"(data.on_anomaly: warn); `xfer show {summary.run_id} DataCheck` compares the spans")
    if summary.bad_records:
        lines.append(f"bad records skipped: {summary.bad_records} (data.on_bad_image: skip), listed in "
                     f"{summary.bad_records_file}")
    if summary.pushed_to and summary.pushed_new:
        lines.append(f"pushed to: {summary.pushed_to} (version {summary.pushed_version})")
        if summary.model_card:
            lines.append(f"model card: {summary.model_card} (and model_card.html)")
    elif summary.pushed_to:
        lines.append(f"pushed: no new version; this model is already version "
                     f"{summary.pushed_version} at {summary.pushed_to}")
    else:
        lines.append("pushed: nothing")
    if wall_seconds is not None:
        lines.append(f"total time: {wall_seconds:.0f}s")
    return "\n".join(lines)


def report_folder(root: str, run_id: str) -> str:
    return os.path.join(root, "reports", run_id.replace(":", "-"))


def save_report(root: str, run_id: str, text: str) -> str:
    """Keep a run's summary and blessing report beside its runs (root/reports/RUN/)."""
    import tensorflow as tf

    folder = report_folder(root, run_id)
    tf.io.gfile.makedirs(folder)
    path = os.path.join(folder, "blessing.txt")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text + "\n")
    return path


def save_result(root: str, run_result: dict) -> str:
    """root/reports/RUN/result.json, written whole (beside, then renamed) so a reader never
    sees half of it."""
    import json

    import tensorflow as tf

    folder = report_folder(root, run_result["run_id"])
    tf.io.gfile.makedirs(folder)
    path = os.path.join(folder, "result.json")
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(json.dumps(run_result, indent=1) + "\n")
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    return path


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def runs_results(metadata_path: str, pipeline_name: str, ev, last: Optional[int] = None,
                 root: Optional[str] = None) -> list[dict]:
    """`xfer runs --json`: each run's result (see `result`), newest last."""
    from xfer.pipeline.lock import holder

    live = holder(root) if root else None
    store = mlmd.open_store(metadata_path)
    runs = mlmd.pipeline_runs(store, pipeline_name)[-last:] if last else mlmd.pipeline_runs(store, pipeline_name)
    return [result(_summarize(store, run, pipeline_name), ev, live_run_id=live.run_id if live else None)
            for run in runs]


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
        data = ""
        if s.examples or s.bad_records is not None:
            data = ("  examples " + "/".join(f"{k} {v}" for k, v in s.examples.items())
                    + f"  bad records skipped {s.bad_records or 0}")
        lines.append(f"{s.run_id}  started {_when(s.started_ms) if s.started_ms else '-'}  "
                     f"{status(s, live.run_id if live else None)}  "
                     f"span {','.join(map(str, s.spans)) or '-'}{data}  accuracy {acc}  "
                     f"{'blessed' if b and b.blessed else 'not blessed' if b else 'not evaluated'}  "
                     f"pushed {s.pushed_version or '-'}")
        for component, state in s.states.items():
            seconds = s.durations.get(component)
            lines.append(f"    {component:<28} {state:<9} {seconds:7.1f}s" if seconds is not None
                         else f"    {component:<28} {state}")
    return "\n".join(lines) if lines else f"no runs of '{pipeline_name}' yet"

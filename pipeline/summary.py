"""What a run did, read back from the ML Metadata store: per component executed or
cached, eval accuracy, the blessing and why, where the model was pushed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

ACCURACY = "sparse_categorical_accuracy"
State = metadata_store_pb2.Execution


@dataclass
class Blessing:
    blessed: bool
    candidate: Optional[float]
    baseline: Optional[float]
    failures: list[str] = field(default_factory=list)

    def report(self, ev) -> list[str]:
        """The blessing report: each threshold of `ev` (the eval config), the candidate's
        and the baseline's values, pass or FAIL."""
        def fmt(v):
            return "-" if v is None else f"{v:.4f}"

        rows = [("threshold", "candidate", "baseline", "result")]
        if ev.min_accuracy is not None:
            ok = self.candidate is not None and self.candidate >= ev.min_accuracy
            rows.append((f"accuracy >= {ev.min_accuracy} (eval.min_accuracy)", fmt(self.candidate), "-",
                         "pass" if ok else "FAIL"))
        change_rules = []
        if ev.max_drop is not None:
            change_rules.append((f"accuracy drop <= {ev.max_drop} vs last blessed (eval.max_drop)",
                                 lambda change, base: change >= -ev.max_drop - 1e-9))
        if ev.max_drop_relative is not None:
            change_rules.append((f"relative drop <= {ev.max_drop_relative} vs last blessed "
                                 f"(eval.max_drop_relative)",
                                 lambda change, base: change >= -ev.max_drop_relative * base - 1e-9))
        for name, passes in change_rules:
            if self.baseline is None:
                rows.append((name, fmt(self.candidate), "none", "not applied: no blessed baseline yet"))
            else:
                change = (self.candidate or 0.0) - self.baseline
                rows.append((name, fmt(self.candidate), fmt(self.baseline),
                             f"{'pass' if passes(change, self.baseline) else 'FAIL'} (change {change:+.4f})"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  " + "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
        if self.failures:
            lines.append("  TFMA: " + "; ".join(self.failures))
        return lines

    def headline(self, ev) -> str:
        if self.blessed:
            text = "BLESSED: every threshold passed"
        else:
            text = "NOT BLESSED: " + ("; ".join(self.failures) or "a threshold failed")
        if self.baseline is None and (ev.max_drop is not None or ev.max_drop_relative is not None):
            text += " (first run: no blessed baseline, judged on value thresholds alone)"
        return text


@dataclass
class RunSummary:
    run_id: str
    states: dict[str, str]  # component id -> executed | cached | failed | ...
    blessing: Optional[Blessing] = None
    pushed_to: Optional[str] = None
    model_uri: Optional[str] = None
    seconds: Optional[float] = None
    durations: dict[str, float] = field(default_factory=dict)  # component -> seconds
    started_ms: Optional[int] = None
    pushed_version: Optional[str] = None
    pushed_new: bool = True  # False: the blessed model was already the latest version

    def cached(self) -> list[str]:
        return [c for c, s in self.states.items() if s == "cached"]

    def executed(self) -> list[str]:
        return [c for c, s in self.states.items() if s == "executed"]


_STATE_NAMES = {State.COMPLETE: "executed", State.CACHED: "cached", State.FAILED: "failed",
                State.RUNNING: "running", State.NEW: "new", State.CANCELED: "canceled"}


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(cfg)


def pipeline_runs(store, pipeline_name: str) -> list:
    """The pipeline_run contexts of this pipeline, oldest first."""
    runs = store.get_contexts_by_type("pipeline_run")
    owned = []
    for run in runs:
        parents = store.get_parent_contexts_by_context(run.id)
        if any(p.name == pipeline_name for p in parents) or not parents:
            owned.append(run)
    return sorted(owned, key=lambda c: (c.create_time_since_epoch, c.id))


def _node_of(store, execution_id: int, pipeline_name: str) -> Optional[str]:
    for ctx in store.get_contexts_by_execution(execution_id):
        if store.get_context_types_by_id([ctx.type_id])[0].name == "node":
            return ctx.name.removeprefix(f"{pipeline_name}.")
    return None


def _outputs(store, execution_id: int) -> list:
    events = store.get_events_by_execution_ids([execution_id])
    ids = [e.artifact_id for e in events if e.type in (metadata_store_pb2.Event.OUTPUT,
                                                        metadata_store_pb2.Event.DECLARED_OUTPUT)]
    return store.get_artifacts_by_id(ids) if ids else []


def _prop(artifact, name):
    if name not in artifact.custom_properties:
        return None
    v = artifact.custom_properties[name]
    return v.int_value if v.HasField("int_value") else v.string_value


def read_blessing(evaluation_uri: str, blessed: bool) -> Blessing:
    import tensorflow_model_analysis as tfma

    candidate = baseline = None
    for slice_metrics in tfma.load_metrics(evaluation_uri):
        if slice_metrics.slice_key.single_slice_keys:
            continue  # overall slice only
        for kv in slice_metrics.metric_keys_and_values:
            if kv.key.name != ACCURACY or kv.key.is_diff:
                continue
            value = kv.value.double_value.value
            if kv.key.model_name == "baseline":
                baseline = value
            else:
                candidate = value
    failures = []
    validation = tfma.load_validation_result(evaluation_uri)
    for per_slice in validation.metric_validations_per_slice:
        for f in per_slice.failures:
            failures.append(f"{f.metric_key.name}{' change' if f.metric_key.is_diff else ''} = "
                            f"{f.metric_value.double_value.value:.4f} violates "
                            f"{_threshold_text(f.metric_threshold)}")
    return Blessing(blessed=blessed, candidate=candidate, baseline=baseline, failures=failures)


def _threshold_text(threshold) -> str:
    if threshold.HasField("value_threshold"):
        v = threshold.value_threshold
        parts = ([f"lower bound {v.lower_bound.value:g}"] if v.HasField("lower_bound") else []) + \
                ([f"upper bound {v.upper_bound.value:g}"] if v.HasField("upper_bound") else [])
        return "value threshold " + " and ".join(parts)
    c = threshold.change_threshold
    parts = ([f"absolute {c.absolute.value:+g}"] if c.HasField("absolute") else []) + \
            ([f"relative {c.relative.value:+g}"] if c.HasField("relative") else [])
    return "change threshold " + " and ".join(parts) + " (higher is better)"


def summarize(metadata_path: str, pipeline_name: str, run_id: Optional[str] = None) -> RunSummary:
    store = open_store(metadata_path)
    runs = pipeline_runs(store, pipeline_name)
    if not runs:
        raise LookupError(f"no runs of pipeline '{pipeline_name}' in {metadata_path}")
    run = next((r for r in runs if r.name == run_id), None) if run_id else runs[-1]
    if run is None:
        raise LookupError(f"no run '{run_id}' of pipeline '{pipeline_name}' in {metadata_path}")
    summary = RunSummary(run_id=run.name, states={})
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.id)
    evaluation_uri = blessed = None
    starts, ends = [], []
    for ex in executions:
        node = _node_of(store, ex.id, pipeline_name)
        if node is None:
            continue
        summary.states[node] = _STATE_NAMES.get(ex.last_known_state, str(ex.last_known_state))
        summary.durations[node] = (ex.last_update_time_since_epoch - ex.create_time_since_epoch) / 1000.0
        starts.append(ex.create_time_since_epoch)
        ends.append(ex.last_update_time_since_epoch)
        for a in _outputs(store, ex.id):
            type_name = store.get_artifact_types_by_id([a.type_id])[0].name
            if type_name == "ModelEvaluation":
                evaluation_uri = a.uri
            elif type_name == "ModelBlessing":
                blessed = bool(_prop(a, "blessed"))
            elif type_name == "PushedModel" and _prop(a, "pushed"):
                summary.pushed_to = _prop(a, "pushed_destination")
                summary.pushed_version = str(_prop(a, "pushed_version"))
                summary.pushed_new = _prop(a, "new_version") != 0
            elif type_name == "Model" and node == "Trainer":
                summary.model_uri = a.uri
    if evaluation_uri is not None:
        summary.blessing = read_blessing(evaluation_uri, bool(blessed))
    if starts:
        summary.started_ms = min(starts)
        summary.seconds = (max(ends) - min(starts)) / 1000.0
    return summary


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

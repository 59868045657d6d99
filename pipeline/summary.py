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

    def reason(self, min_accuracy: Optional[float], max_drop: Optional[float]) -> str:
        parts = []
        if min_accuracy is not None and self.candidate is not None:
            parts.append(f"accuracy {self.candidate:.4f} {'>=' if self.candidate >= min_accuracy else '<'} "
                         f"{min_accuracy} (eval.min_accuracy)")
        if max_drop is not None:
            if self.baseline is None:
                parts.append("no blessed baseline yet, so eval.max_drop was not applied")
            else:
                parts.append(f"baseline accuracy {self.baseline:.4f}, allowed drop {max_drop} (eval.max_drop)")
        text = "; ".join(parts)
        if self.failures:
            text += ". Failed: " + "; ".join(self.failures)
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
    from google.protobuf import json_format
    return json_format.MessageToJson(threshold, indent=None)


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
            elif type_name == "Model" and node == "Trainer":
                summary.model_uri = a.uri
    if evaluation_uri is not None:
        summary.blessing = read_blessing(evaluation_uri, bool(blessed))
    if starts:
        summary.started_ms = min(starts)
        summary.seconds = (max(ends) - min(starts)) / 1000.0
    return summary


def format_summary(summary: RunSummary, min_accuracy, max_drop, wall_seconds: Optional[float] = None) -> str:
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
        lines.append(f"{'BLESSED' if b.blessed else 'NOT BLESSED'}: {b.reason(min_accuracy, max_drop)}")
    lines.append(f"pushed to: {summary.pushed_to}" if summary.pushed_to else "pushed: nothing")
    if wall_seconds is not None:
        lines.append(f"total time: {wall_seconds:.0f}s")
    return "\n".join(lines)

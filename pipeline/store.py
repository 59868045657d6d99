"""Reads from a local run's ML Metadata store: the runs of a pipeline, each run's
executions by step, their output artifacts and properties. Opened read-only, so
`xfer runs` and `xfer show` never contend with a run that is writing."""
from __future__ import annotations

import os
from typing import Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from xfer.pipeline.config import ConfigError

State = metadata_store_pb2.Execution
STATE_NAMES = {State.COMPLETE: "executed", State.CACHED: "cached", State.FAILED: "failed",
               State.RUNNING: "running", State.NEW: "new", State.CANCELED: "interrupted"}
LATEST = ("latest", "last")


def existing_store(config) -> str:
    """The config's metadata store, which only a first `xfer run` creates."""
    if not os.path.exists(config.metadata_path):
        raise ConfigError(f"no runs yet: {config.metadata_path} does not exist; `xfer run` first")
    return config.metadata_path


def open_store(metadata_path: str, writable: bool = False) -> metadata_store.MetadataStore:
    """Read-only unless `writable` (only the next run marking an interrupted one writes)."""
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    mode = metadata_store_pb2.SqliteMetadataSourceConfig
    cfg.sqlite.connection_mode = mode.READWRITE if writable else mode.READONLY
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


def find_run(store, pipeline_name: str, run_id: Optional[str] = None):
    """A run by its id; None, 'latest' or 'last' mean the newest."""
    runs = pipeline_runs(store, pipeline_name)
    if run_id is None or run_id in LATEST:
        found = runs[-1] if runs else None
    else:
        found = next((r for r in runs if r.name == run_id), None)
    if found is None:
        raise LookupError(f"no run '{run_id or 'latest'}' of '{pipeline_name}'; `xfer runs` lists them")
    return found


def node_of(store, execution_id: int, pipeline_name: str) -> Optional[str]:
    """The step (node id) an execution belongs to; None for the orchestrator's own."""
    for ctx in store.get_contexts_by_execution(execution_id):
        if store.get_context_types_by_id([ctx.type_id])[0].name == "node":
            return ctx.name.removeprefix(f"{pipeline_name}.")
    return None


def step_executions(store, run, pipeline_name: str) -> list[tuple[str, object]]:
    """[(step, execution)] of a run, in the order they started."""
    out = []
    for ex in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
        node = node_of(store, ex.id, pipeline_name)
        if node is not None:
            out.append((node, ex))
    return out


def state_name(execution) -> str:
    return STATE_NAMES.get(execution.last_known_state, str(execution.last_known_state))


def output_artifacts(store, execution_id: int) -> list[tuple[str, object]]:
    """[(artifact type name, artifact)] an execution wrote or declared."""
    events = store.get_events_by_execution_ids([execution_id])
    ids = [e.artifact_id for e in events if e.type in (metadata_store_pb2.Event.OUTPUT,
                                                        metadata_store_pb2.Event.DECLARED_OUTPUT)]
    artifacts = store.get_artifacts_by_id(ids) if ids else []
    return [(store.get_artifact_types_by_id([a.type_id])[0].name, a) for a in artifacts]


def custom_property(artifact, name: str):
    """An int or string custom property; None when the artifact does not have it."""
    if name not in artifact.custom_properties:
        return None
    v = artifact.custom_properties[name]
    return v.int_value if v.HasField("int_value") else v.string_value

"""A root's runs as the browser and the notebook show them, read from its ML Metadata store.

Built for a store that a run is writing at the same moment: every read opens its own
read-only connection and retries while SQLite says the database is locked. The runs table
costs a fixed number of queries however many runs there are: the contexts through ML
Metadata's API; which execution belongs to which context, and each execution's state and
times, in two reads of the store's Association and Execution tables (the API has no bulk
call for the first, one call per run cost 4-5 ms, 2.5 s for 500 runs; and its
get_executions parses every property TFX stores, over a second for 5,000 executions,
here); the few failed executions' errors through the API. It reads a finished run's numbers
from the result.json its `xfer run` wrote, never from TFMA's output: 500 runs list in well
under a second (bench/ui.py).
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

from xfer.pipeline import store as mlmd
from xfer.pipeline.summary import RunSummary, report_folder, status

T = TypeVar("T")
LOCK_RETRIES = 20
EXECUTION_RESULT = "__execution_result__"  # TFX's custom property on a failed execution


def with_store(metadata_path: str, read: Callable[[object], T]) -> T:
    """`read(store)` on a fresh read-only connection, retried while a writer holds the lock."""
    for attempt in range(LOCK_RETRIES):
        try:
            return read(mlmd.open_store(metadata_path))
        except Exception as e:  # noqa: BLE001 - MLMD raises its own error types for a busy database
            if "locked" not in str(e).lower() and "busy" not in str(e).lower() or attempt == LOCK_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


@dataclass
class Step:
    name: str
    state: str = "not run"  # executed, cached, failed, running, interrupted, not run
    seconds: Optional[float] = None
    execution_id: Optional[int] = None
    error: Optional[str] = None
    artifacts: list = field(default_factory=list)  # [(type name, artifact)]


@dataclass
class Run:
    run_id: str
    started_ms: Optional[int]
    seconds: Optional[float]
    status: str
    steps: dict  # step name -> Step, in the order they started
    result: Optional[dict] = None  # the run's result.json, when its `xfer run` wrote one

    def get(self, key: str, default=None):
        return (self.result or {}).get(key, default)

    @property
    def accuracy(self) -> Optional[float]:
        return (self.get("metrics") or {}).get("accuracy")

    @property
    def baseline_accuracy(self) -> Optional[float]:
        return (self.get("metrics") or {}).get("baseline_accuracy")


def _execution_error(execution) -> Optional[str]:
    """The message TFX recorded when the step failed (its ExecutionResult, as JSON)."""
    text = mlmd.custom_property(execution, EXECUTION_RESULT)
    if not text:
        return None
    try:
        return json.loads(text).get("resultMessage") or text
    except ValueError:
        return text


def read_result(root: str, run_id: str) -> Optional[dict]:
    path = os.path.join(report_folder(root, run_id), "result.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _live_run_id(root: str) -> Optional[str]:
    from xfer.pipeline.lock import holder

    live = holder(root)
    return live.run_id if live else None


def _node_names(store, pipeline_name: str) -> dict[int, str]:
    """execution id -> step name, from the node contexts (one query per step of the DAG)."""
    names = {}
    for node in store.get_contexts_by_type("node"):
        if not node.name.startswith(f"{pipeline_name}."):
            continue
        for ex in store.get_executions_by_context(node.id):
            names[ex.id] = node.name.removeprefix(f"{pipeline_name}.")
    return names


def _owned_runs(store, pipeline_name: str) -> list:
    """The pipeline_run contexts of this pipeline, oldest first (store.pipeline_runs in
    two queries instead of one per run)."""
    runs = store.get_contexts_by_type("pipeline_run")
    pipeline = next((p for p in store.get_contexts_by_type("pipeline") if p.name == pipeline_name), None)
    children = {c.id for c in store.get_children_contexts_by_context(pipeline.id)} if pipeline else set()
    if pipeline is None or not children:
        return mlmd.pipeline_runs(store, pipeline_name)
    return sorted((r for r in runs if r.id in children), key=lambda c: (c.create_time_since_epoch, c.id))


def _bulk_read(metadata_path: str) -> tuple[dict[int, list[int]], dict[int, object]]:
    """(context id -> execution ids, execution id -> Execution with its state and times only),
    on one read-only connection."""
    from ml_metadata.proto import metadata_store_pb2

    db = sqlite3.connect(f"file:{metadata_path}?mode=ro", uri=True, timeout=5)
    try:
        by_context: dict[int, list[int]] = defaultdict(list)
        for context_id, execution_id in db.execute("SELECT context_id, execution_id FROM Association"):
            by_context[context_id].append(execution_id)
        executions = {row[0]: metadata_store_pb2.Execution(
            id=row[0], last_known_state=row[1] or 0, create_time_since_epoch=row[2] or 0,
            last_update_time_since_epoch=row[3] or 0) for row in db.execute(
            "SELECT id, last_known_state, create_time_since_epoch, last_update_time_since_epoch FROM Execution")}
        return by_context, executions
    finally:
        db.close()


def _run(store, run_ctx, names: dict, root: str, live: Optional[str], with_artifacts: bool,
         executions: Optional[list] = None) -> Run:
    steps: dict[str, Step] = {}
    first = last = None
    if executions is None:
        executions = store.get_executions_by_context(run_ctx.id)
    for ex in sorted(executions, key=lambda e: e.id):
        name = names.get(ex.id)
        if name is None:
            continue
        step = Step(name, mlmd.state_name(ex), execution_id=ex.id,
                    seconds=(ex.last_update_time_since_epoch - ex.create_time_since_epoch) / 1000.0)
        if step.state == "failed":
            step.error = _execution_error(ex)
        if with_artifacts:
            step.artifacts = mlmd.output_artifacts(store, ex.id)
        steps[name] = step
        first = ex.create_time_since_epoch if first is None else min(first, ex.create_time_since_epoch)
        last = ex.last_update_time_since_epoch if last is None else max(last, ex.last_update_time_since_epoch)
    summary = RunSummary(run_id=run_ctx.name, states={n: s.state for n, s in steps.items()})
    result = read_result(root, run_ctx.name)
    for step in steps.values():
        if step.state == "failed" and not step.error and result and result.get("error"):
            # The local runner records no message on the execution; `xfer run` wrote the
            # step's error (its root cause) to the run's result.json.
            step.error = result["error"]
    run_status = status(summary, live)
    if result and result.get("status") == "failed":
        run_status = "failed"
    end = time.time() * 1000 if run_status == "running" else last
    return Run(run_ctx.name, first, (end - first) / 1000.0 if first is not None else None, run_status,
               steps, result)


def list_runs(config) -> list[Run]:
    """Every run of the config's pipeline, newest first."""
    live = _live_run_id(config.root)

    path = mlmd.existing_store(config)

    def read(store):
        runs = _owned_runs(store, config.name)
        by_context, executions = _bulk_read(path)
        failed = [i for i, ex in executions.items() if ex.last_known_state == mlmd.State.FAILED]
        executions.update({ex.id: ex for ex in store.get_executions_by_id(failed)} if failed else {})
        names = {}
        for node in store.get_contexts_by_type("node"):
            if node.name.startswith(f"{config.name}."):
                names.update({i: node.name.removeprefix(f"{config.name}.") for i in by_context.get(node.id, [])})
        return [_run(store, r, names, config.root, live, with_artifacts=False,
                     executions=[executions[i] for i in by_context.get(r.id, []) if i in executions])
                for r in reversed(runs)]
    return with_store(path, read)


def get_run(config, run_id: str) -> Run:
    """One run with its steps' output artifacts; 'latest' is the newest. LookupError if unknown."""
    live = _live_run_id(config.root)

    def read(store):
        ctx = mlmd.find_run(store, config.name, run_id)
        return _run(store, ctx, _node_names(store, config.name), config.root, live, with_artifacts=True)
    return with_store(mlmd.existing_store(config), read)


def artifact_uri(config, artifact_id: int) -> Optional[str]:
    """The URI of one of the store's artifacts; None when there is no such artifact."""
    def read(store):
        found = store.get_artifacts_by_id([artifact_id])
        return found[0].uri if found else None
    return with_store(mlmd.existing_store(config), read)

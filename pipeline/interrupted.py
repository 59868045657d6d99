"""What a killed run leaves behind, cleared by the next run on the same root.

A run killed mid-step (SIGKILL, a lost machine) leaves its executions RUNNING in the
metadata store forever, a half-copied `.staging-*` version under the push destination,
and the half-written outputs of the step it was in. The next run holds the root's lock
(pipeline/lock.py), so nothing else is running: it marks those executions CANCELED
(`xfer runs` then says `interrupted`), removes the staging folders and the outputs no
finished execution published. The Trainer's resume backups live beside the model runs
(`model_run/_backup`), not in an execution's output, so a re-run still resumes.

A killed run never wrote its result.json (reports/RUN/): the next run writes it for it,
status interrupted, with what the store knows (the steps, their states and seconds, the
spans and counts of the steps that finished) and the step it was in.
"""
from __future__ import annotations

import glob
import os
import shutil

from ml_metadata.proto import metadata_store_pb2

from xfer.components.settings import Config
from xfer.pipeline import store as mlmd

Execution = metadata_store_pb2.Execution
Artifact = metadata_store_pb2.Artifact


def clean_up(config: Config) -> list[str]:
    """Clear what interrupted runs left; one line per thing done, for the user."""
    done = []
    dest = config.push.destination
    if "://" not in dest:
        for staging in sorted(glob.glob(os.path.join(dest, ".staging-*"))):
            shutil.rmtree(staging, ignore_errors=True)
            done.append(f"removed {staging}, a version an interrupted run was copying")
    if not os.path.exists(config.metadata_path):
        return done
    store = mlmd.open_store(config.metadata_path, writable=True)
    running = [e for e in store.get_executions() if e.last_known_state == Execution.RUNNING]
    for execution in running:
        events = store.get_events_by_execution_ids([execution.id])
        outputs = [ev.artifact_id for ev in events if ev.type in (
            metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.PENDING_OUTPUT)]
        for artifact in store.get_artifacts_by_id(outputs) if outputs else []:
            if artifact.state != Artifact.LIVE and "://" not in artifact.uri and os.path.isdir(artifact.uri):
                shutil.rmtree(artifact.uri, ignore_errors=True)
                done.append(f"removed {artifact.uri}, an output the interrupted step never finished")
        execution.last_known_state = Execution.CANCELED
    if running:
        store.put_executions(running)
        done.append(f"marked {len(running)} step execution(s) of interrupted runs as interrupted")
        done += _write_results(config, store, running)
    return done


def _write_results(config: Config, store, executions: list) -> list[str]:
    """result.json for each run the interrupted executions belong to."""
    from datetime import datetime

    from xfer.pipeline import summary as run_summary
    from xfer.pipeline.store import node_of, pipeline_runs

    runs = {run.id: run for run in pipeline_runs(store, config.name)}
    steps: dict[int, list[str]] = {}  # run context id -> the steps it was in
    for execution in executions:
        for ctx in store.get_contexts_by_execution(execution.id):
            if ctx.id in runs:
                steps.setdefault(ctx.id, []).append(node_of(store, execution.id, config.name) or "a step")
    found = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    done = []
    for run_id, in_steps in steps.items():
        run = runs[run_id]
        summary = run_summary._summarize(store, run, config.name)
        why = (f"interrupted in {', '.join(in_steps)}: the run's process ended before the step finished "
               f"(killed, or its machine lost); found by the next run on this root at {found}")
        path = run_summary.save_result(config.root, run_summary.result(summary, config.eval, error=why))
        done.append(f"wrote {path} for the interrupted run {run.name}")
    return done

"""What a killed run leaves behind, cleared by the next run on the same root.

A run killed mid-step (SIGKILL, a lost machine) leaves its executions RUNNING in the
metadata store forever, a half-copied `.staging-*` version under the push destination,
and the half-written outputs of the step it was in. The next run holds the root's lock
(pipeline/lock.py), so nothing else is running: it marks those executions CANCELED
(`xfer runs` then says `interrupted`), removes the staging folders and the outputs no
finished execution published. The Trainer's resume backups live beside the model runs
(`model_run/_backup`), not in an execution's output, so a re-run still resumes.
"""
from __future__ import annotations

import glob
import os
import shutil

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from xfer.components.settings import Config

Execution = metadata_store_pb2.Execution
Artifact = metadata_store_pb2.Artifact


def _writable_store(path: str) -> metadata_store.MetadataStore:
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
    return metadata_store.MetadataStore(cfg)


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
    store = _writable_store(config.metadata_path)
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
    return done

"""How long `xfer ui`'s runs page takes on a root with 500 runs.

usage: python bench/ui.py --root ROOT [--config demo] [--runs 500] [--work DIR]

ROOT holds at least one real run of the config's pipeline (after `make demo`: runs/demo).
Its metadata store is copied to DIR, and its newest run is written again through ML
Metadata's own API until the store holds --runs runs: each copy a new pipeline_run context
(child of the pipeline's context, as TFX makes it), its executions copied with their types,
states, properties and times shifted, each associated with the copy and attributed to the
node's context, with the original's INPUT/OUTPUT events to the same artifacts. So the store
has the rows and the shape of that many runs of TFX, without running the pipeline 500 times.
The result.json of the run is copied for each copy too, as `xfer run` writes one per run.
Then the real server (pipeline/ui.py) starts on a free port and the runs page is fetched
over HTTP, five times; prints the median and the slowest.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

from ml_metadata.proto import metadata_store_pb2

Event = metadata_store_pb2.Event


def copy_runs(store, pipeline_name: str, wanted: int) -> list[str]:
    """Copies of the newest run until the pipeline has `wanted` runs; their ids."""
    from xfer.pipeline.store import pipeline_runs

    runs = pipeline_runs(store, pipeline_name)
    source = runs[-1]
    pipeline = next(p for p in store.get_contexts_by_type("pipeline") if p.name == pipeline_name)
    executions = sorted(store.get_executions_by_context(source.id), key=lambda e: e.id)
    contexts = {ex.id: [c for c in store.get_contexts_by_execution(ex.id) if c.id != source.id]
                for ex in executions}
    events = {ex.id: store.get_events_by_execution_ids([ex.id]) for ex in executions}
    ids = []
    for i in range(wanted - len(runs)):
        shift = (i + 1) * 60_000
        run = metadata_store_pb2.Context()
        run.CopyFrom(source)
        run.ClearField("id")
        run.name = f"{source.name}-copy{i:04d}"
        for f in ("create_time_since_epoch", "last_update_time_since_epoch"):
            run.ClearField(f)
        [run_id] = store.put_contexts([run])
        store.put_parent_contexts([metadata_store_pb2.ParentContext(child_id=run_id, parent_id=pipeline.id)])
        for ex in executions:
            copy = metadata_store_pb2.Execution()
            copy.CopyFrom(ex)
            copy.ClearField("id")
            copy.ClearField("name")
            copy.create_time_since_epoch = ex.create_time_since_epoch + shift
            copy.last_update_time_since_epoch = ex.last_update_time_since_epoch + shift
            own = contexts[ex.id]
            pairs = []
            for ev in events[ex.id]:
                e = Event(artifact_id=ev.artifact_id, type=ev.type)
                e.path.CopyFrom(ev.path)
                pairs.append((metadata_store_pb2.Artifact(id=ev.artifact_id), e))
            existing = store.get_artifacts_by_id([a.id for a, _ in pairs]) if pairs else []
            by_id = {a.id: a for a in existing}
            pairs = [(by_id[a.id], e) for a, e in pairs if a.id in by_id]
            store.put_execution(copy, pairs, [*own, store.get_contexts_by_id([run_id])[0]])
        ids.append(run.name)
    return ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="a root with at least one real run")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--work", help="where the copy goes (default: a temporary folder, removed after)")
    args = ap.parse_args()

    from xfer.pipeline.config import load_config
    from xfer.pipeline.summary import report_folder

    work = args.work or tempfile.mkdtemp(prefix="xfer-bench-ui-")
    try:
        config = load_config(args.config, [f"root={work}"])
        source = load_config(args.config, [f"root={args.root}"])
        os.makedirs(work, exist_ok=True)
        shutil.copy(source.metadata_path, config.metadata_path)
        t0 = time.perf_counter()
        from xfer.pipeline.store import open_store, pipeline_runs
        store = open_store(config.metadata_path, writable=True)
        ids = copy_runs(store, config.name, args.runs)
        newest = pipeline_runs(store, config.name)[0].name
        result = os.path.join(report_folder(args.root, newest), "result.json")
        if not os.path.exists(result):
            newest = pipeline_runs(store, config.name)[-len(ids) - 1].name
            result = os.path.join(report_folder(args.root, newest), "result.json")
        if os.path.exists(result):
            doc = json.load(open(result))
            for run_id in ids:
                os.makedirs(report_folder(work, run_id), exist_ok=True)
                with open(os.path.join(report_folder(work, run_id), "result.json"), "w") as f:
                    json.dump({**doc, "run_id": run_id}, f)
        total = len(pipeline_runs(store, config.name))
        print(f"store with {total} runs of {config.name} written in {time.perf_counter() - t0:.1f}s "
              f"({os.path.getsize(config.metadata_path) / 1e6:.1f} MB)")

        from xfer.pipeline.ui import serve
        port = []
        threading.Thread(target=serve, args=(config,), kwargs={"port": 0, "ready": port.append},
                         daemon=True).start()
        while not port:
            time.sleep(0.05)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{port[0]}/") as r:
                page = r.read().decode()
            times.append(time.perf_counter() - t)
        rows = page.count('<tr class="run"')
        print(f"runs page: {rows} rows, {len(page) / 1e3:.0f} kB; median {statistics.median(times):.3f}s, "
              f"slowest {max(times):.3f}s of {len(times)} fetches")
        return 0 if rows == total else 1
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

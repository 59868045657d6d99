"""Where phase 2 leaves the cores idle: a TensorFlow profiler trace of one steady
fine-tune epoch of the real Trainer (run_fn with the pipeline's callbacks) on a finished
bench run's artifacts, read back and summed per thread and per op.

It reports, over the traced epoch: how much of the wall time 0, 1 and 2 or more threads
were running TensorFlow work; each thread pool's busy share; and the ops that ran while
only one thread was busy (the serial part that keeps a core idle).

usage: python profile_phase2.py PIPELINE_ROOT OUT_DIR CONFIG [KEY=VALUE ...]
"""
import collections
import glob
import os
import re
import sys

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2
from tfx.components.trainer.fn_args_utils import FnArgs

from xfer.components import trainer
from xfer.pipeline.config import load_config

# The fine-tune epoch traced: its first pays for tracing the step function.
PROFILED_EPOCH = 3


class ProfileOneEpoch(tf.keras.callbacks.Callback):
    def __init__(self, logdir: str, epoch: int):
        super().__init__()
        self.logdir, self.epoch, self.seconds = logdir, epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            tf.profiler.experimental.start(self.logdir)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            tf.profiler.experimental.stop()


def _union(intervals):
    out = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def _pool(thread_name: str) -> str:
    """A thread pool's name without its thread number."""
    return re.sub(r"[/_-]?\d+$", "", thread_name) or thread_name


def summarize(xplane_path: str) -> str:
    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    host = next(p for p in space.planes if p.name == "/host:CPU")
    names = {k: m.name for k, m in host.event_metadata.items()}
    # per thread: busy intervals (TraceMe events nest on a thread: their union) and the
    # innermost events (the op kernels) for attributing time
    busy, leaves = {}, []
    t_min, t_max = None, None
    for line in host.lines:
        evs = [(line.timestamp_ns * 1000 + e.offset_ps, line.timestamp_ns * 1000 + e.offset_ps + e.duration_ps,
                names.get(e.metadata_id, "?")) for e in line.events]
        evs = [e for e in evs if e[1] > e[0]]
        if not evs:
            continue
        thread = line.display_name or line.name
        busy[thread] = _union([(s, e) for s, e, _ in evs])
        # innermost: events that contain no other event of the same thread
        evs.sort(key=lambda e: (e[0], -e[1]))
        for i, (s, e, n) in enumerate(evs):
            nxt = evs[i + 1] if i + 1 < len(evs) else None
            if nxt is None or nxt[0] >= e:
                leaves.append((s, e, n, thread))
        t_min = min(t_min or evs[0][0], min(s for s, _, _ in evs))
        t_max = max(t_max or 0, max(e for _, e, _ in evs))
    wall = t_max - t_min
    # sweep: how many threads are busy at each moment
    points = []
    for ivs in busy.values():
        for s, e in ivs:
            points += [(s, 1), (e, -1)]
    points.sort()
    level, last, at_level = 0, t_min, collections.Counter()
    for t, d in points:
        at_level[min(level, 2)] += t - last
        level, last = level + d, t
    at_level[0] += t_max - last
    # the op kernels running while only one thread was busy
    single = [(s, e) for s, e in _single_intervals(points, t_min, t_max)]
    serial_ops = collections.Counter()
    for s, e, n, _ in leaves:
        for a, b in single:
            if b <= s:
                continue
            if a >= e:
                break
            serial_ops[_op_type(n)] += min(b, e) - max(a, s)
    pools = collections.Counter()
    for thread, ivs in busy.items():
        pools[_pool(thread)] += sum(e - s for s, e in ivs)
    lines = [f"traced {wall / 1e12:.2f} s of one steady fine-tune epoch ({len(busy)} threads with events)",
             "",
             "| threads running TensorFlow work | share of the wall time |", "| --- | --- |"]
    for k, label in ((0, "none"), (1, "one"), (2, "two or more")):
        lines.append(f"| {label} | {at_level[k] / wall:.0%} |")
    lines += ["", "| thread pool | busy thread-seconds / wall |", "| --- | --- |"]
    for pool, ps in pools.most_common(8):
        lines.append(f"| {pool} | {ps / wall:.2f} |")
    total_single = sum(serial_ops.values()) or 1
    lines += ["", "| op (innermost event) while only one thread was busy | share of that time |", "| --- | --- |"]
    for op, ps in serial_ops.most_common(10):
        lines.append(f"| {op} | {ps / total_single:.0%} |")
    return "\n".join(lines)


def _single_intervals(points, t_min, t_max):
    level, last = 0, t_min
    for t, d in points:
        if level == 1 and t > last:
            yield last, t
        level, last = level + d, t


def _op_type(name: str) -> str:
    # Executor events are "op_name:OpType"; keep the type, as the profiler's op stats do.
    return name.rsplit(":", 1)[-1] if ":" in name else name


if __name__ == "__main__":
    root, out, config = sys.argv[1:4]
    cfg = load_config(config, sys.argv[4:])
    examples = max(glob.glob(f"{root}/DataCheck/checked_examples/*"), key=lambda p: int(p.rsplit("/", 1)[1]))
    graph = max(glob.glob(f"{root}/Transform/transform_graph/*"), key=lambda p: int(p.rsplit("/", 1)[1]))
    logdir = os.path.join(out, "profile")
    first_fine_tune = cfg.train.transfer.epochs
    profiler = ProfileOneEpoch(logdir, first_fine_tune + PROFILED_EPOCH - 1)
    callbacks = trainer.Run.callbacks

    def with_profiler(self, phase, early_stopping, backup):
        cbs = callbacks(self, phase, early_stopping, backup)
        return cbs + [profiler] if phase == "fine_tune" else cbs

    trainer.Run.callbacks = with_profiler
    trainer.run_fn(FnArgs(train_files=[f"{examples}/Split-train/*"], eval_files=[f"{examples}/Split-eval/*"],
                          transform_graph_path=graph, serving_model_dir=f"{out}/serving",
                          model_run_dir=f"{out}/run",
                          custom_config=cfg.trainer_settings(code_fingerprint="bench").model_dump(mode="json")))
    traces = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    print("### Phase 2 profiled\n")
    print(summarize(max(traces, key=os.path.getmtime)))

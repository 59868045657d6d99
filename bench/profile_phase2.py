"""Where phase 2 leaves the cores idle: a TensorFlow profiler trace of one steady
fine-tune epoch of the real Trainer (run_fn with the pipeline's callbacks) on a finished
bench run's artifacts, read back and summed per thread and per op.

It reports, over that epoch: each thread's CPU time from the kernel's accounting (what
really ran: TensorFlow's trace does not see the shards a kernel hands to the other
compute thread), each thread pool's traced share, and the op types that took the
compute threads' time.

usage: python profile_phase2.py PIPELINE_ROOT OUT_DIR CONFIG [KEY=VALUE ...]
"""
import collections
import glob
import os
import sys
import time

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from trainer_alone import trainer_args  # this folder: `python bench/profile_phase2.py` puts it first on sys.path
from xfer.components import trainer
from xfer.pipeline.config import load_config

# The fine-tune epoch traced: its first pays for tracing the step function.
PROFILED_EPOCH = 3


def thread_cpu() -> dict:
    """{thread id: (name, CPU seconds)} of this process's threads, from the kernel's
    accounting (/proc/self/task/*/stat): what each thread really ran, traced or not."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in glob.glob("/proc/self/task/*"):
        try:
            with open(f"{task}/comm") as f:
                name = f.read().strip()
            with open(f"{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[task] = (name, (int(fields[11]) + int(fields[12])) / tick)  # utime + stime
    return out


class ProfileOneEpoch(tf.keras.callbacks.Callback):
    """Traces one epoch with TensorFlow's profiler and takes each thread's CPU time over it."""

    def __init__(self, logdir: str, epoch: int):
        super().__init__()
        self.logdir, self.epoch = logdir, epoch
        self.cpu: collections.Counter = collections.Counter()
        self.wall = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            tf.profiler.experimental.start(self.logdir)
            self._cpu, self._start = thread_cpu(), time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.wall = time.perf_counter() - self._start
            # TensorFlow does not name its threads for the kernel: they are told apart by id.
            for tid, (name, seconds) in thread_cpu().items():
                self.cpu[f"{name} {tid.rsplit('/', 1)[1]}"] += seconds - self._cpu.get(tid, (name, 0.0))[1]
            tf.profiler.experimental.stop()

    def cpu_table(self) -> str:
        cores = os.cpu_count()
        total = sum(self.cpu.values())
        rows = [f"CPU over the same epoch, from the kernel's per-thread accounting: {total:.1f} CPU s in "
                f"{self.wall:.1f} s wall, {total / self.wall / cores:.0%} of {cores} cores.", "",
                "| thread (name and id as the kernel has them), the 8 busiest | CPU s / wall s |", "| --- | --- |"]
        rows += [f"| {name} | {sec / self.wall:.2f} |" for name, sec in self.cpu.most_common(8)]
        return "\n".join(rows)


def _union(intervals):
    out = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def summarize(xplane_path: str) -> str:
    """The host plane of a TensorFlow profile: TensorFlow runs a graph's ops on its
    `tf_Compute` threads (one per core; a kernel's ParallelFor shards run there too), the
    input pipeline on `tf_data` threads, and the Python thread waits in the step function."""
    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    host = next(p for p in space.planes if p.name == "/host:CPU")
    names = {k: m.name for k, m in host.event_metadata.items()}
    threads = {}
    for line in host.lines:
        base = line.timestamp_ns * 1000
        evs = [(base + e.offset_ps, base + e.offset_ps + e.duration_ps, names.get(e.metadata_id, "?"))
               for e in line.events if e.duration_ps > 0]
        if evs:
            threads[line.name] = evs
    t0 = min(s for evs in threads.values() for s, _, _ in evs)
    t1 = max(e for evs in threads.values() for _, e, _ in evs)
    wall = t1 - t0
    compute = {t: evs for t, evs in threads.items() if t.startswith("tf_Compute")}
    busy = {t: _union([(s, e) for s, e, _ in evs]) for t, evs in threads.items()}
    # Op events are named "node:OpType"; the executor's own ("ExecutorState::Process")
    # hold them, and are left out. Nested op events (a function's ops) count once, as
    # the innermost.
    op_time = collections.Counter()
    for evs in compute.values():
        ops = sorted(((s, e, n) for s, e, n in evs if ":" in n and "::" not in n), key=lambda x: (x[0], -x[1]))
        for i, (s, e, n) in enumerate(ops):
            if i + 1 == len(ops) or ops[i + 1][0] >= e:
                op_time[n.rsplit(":", 1)[1]] += e - s
    pools = collections.Counter()
    for t, ivs in busy.items():
        pools[t.split("/")[0]] += sum(e - s for s, e in ivs)
    out = [f"TensorFlow's trace of one steady fine-tune epoch (validation included), {wall / 1e12:.2f} s. "
           "Threads with an event open (a thread waiting inside an event counts as busy: the Python "
           "thread waits in the step function):", "",
           "| threads | thread-seconds with an event open / wall second |", "| --- | --- |"]
    out += [f"| {pool} | {ps / wall:.2f} |" for pool, ps in pools.most_common()]
    total = sum(op_time.values()) or 1
    out += ["", f"| op type on the {len(compute)} compute threads | share of their op time |", "| --- | --- |"]
    out += [f"| {op} | {ps / total:.0%} |" for op, ps in op_time.most_common(10)]
    return "\n".join(out)


if __name__ == "__main__":
    root, out, config = sys.argv[1:4]
    cfg = load_config(config, sys.argv[4:])
    logdir = os.path.join(out, "profile")
    first_fine_tune = cfg.train.transfer.epochs
    profiler = ProfileOneEpoch(logdir, first_fine_tune + PROFILED_EPOCH - 1)
    callbacks = trainer.Run.callbacks

    def with_profiler(self, phase, early_stopping, backup):
        cbs = callbacks(self, phase, early_stopping, backup)
        return cbs + [profiler] if phase == "fine_tune" else cbs

    trainer.Run.callbacks = with_profiler
    trainer.run_fn(trainer_args(root, out, cfg))
    traces = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    print("### Phase 2 profiled\n")
    print(summarize(max(traces, key=os.path.getmtime)))
    print()
    print(profiler.cpu_table())

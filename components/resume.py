"""Surviving interruption: a Trainer killed mid-phase and re-run resumes from its last
completed epoch, not from zero.

The state lives in a backup folder keyed by the Trainer's inputs and config, beside
the model run folders: a re-run with the same inputs (a retried Kubeflow task, or a
local re-run after a kill, which gets a new execution and new output folders) finds
it, a run with other data or config never does. Phase 1 done is a weights checkpoint
plus its epoch log; a phase in progress is Keras' BackupAndRestore (model, optimizer
and epoch counter, every epoch); each epoch's logs are journalled so the history of a
resumed phase is whole. The folder is removed once the model is exported.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import tensorflow as tf


def backup_dir(fn_args) -> str:
    key = json.dumps({
        "config": fn_args.custom_config, "train": sorted(fn_args.train_files),
        "eval": sorted(fn_args.eval_files), "transform": fn_args.transform_graph_path,
    }, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(os.path.dirname(fn_args.model_run_dir.rstrip("/")), "_backup", digest)


class Journal(tf.keras.callbacks.Callback):
    """Appends each finished epoch's logs to a JSON-lines file."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        line = json.dumps({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
        # GFile has no append mode on every filesystem: rewrite the whole (small) file.
        lines = read_lines(self.path)
        with tf.io.gfile.GFile(self.path, "w") as f:
            f.write("".join(l + "\n" for l in lines + [line]))


def read_lines(path: str) -> list[str]:
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [l.strip() for l in f if l.strip()]


def history(path: str) -> dict:
    """Keras-style history {metric: [per epoch]} from a journal; a re-run epoch replaces
    the one logged before the kill."""
    by_epoch = {}
    for line in read_lines(path):
        entry = json.loads(line)
        by_epoch[entry.pop("epoch")] = entry
    out: dict = {}
    for epoch in sorted(by_epoch):
        for k, v in by_epoch[epoch].items():
            out.setdefault(k, []).append(v)
    return out


class Phase:
    """The backup of one training phase."""

    def __init__(self, root: Optional[str], name: str, task: Optional[str] = None, scratch: Optional[str] = None):
        """task, scratch: a non-chief worker's name and own folder (several workers share
        the backup folder): it journals its epochs to a file of its own, so that a
        restarted worker resumes its own history, and saves its phase-1 weights to its own
        folder; the chief alone marks a phase done. BackupAndRestore keeps its own
        per-worker temporary folders."""
        self.dir = os.path.join(root, name) if root else None
        self.task, self.scratch = task, scratch

    @property
    def journal(self) -> str:
        return os.path.join(self.dir, "epochs.jsonl" if self.task is None else f"epochs.{self.task}.jsonl")

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def callbacks(self) -> list:
        if not self.enabled:
            return []
        return [tf.keras.callbacks.BackupAndRestore(os.path.join(self.dir, "state")),
                Journal(self.journal)]

    def history(self, fallback: dict) -> dict:
        return history(self.journal) if self.enabled else fallback

    def done(self) -> bool:
        return self.enabled and tf.io.gfile.exists(os.path.join(self.dir, "done"))

    def mark_done(self, model: tf.keras.Model) -> None:
        if self.enabled and self.task is not None:
            # Every worker saves (a collective read), the chief's copy is the backup.
            model.save_weights(os.path.join(self.scratch, "backup", "weights", "ckpt"))
        elif self.enabled:
            model.save_weights(os.path.join(self.dir, "weights", "ckpt"))
            with tf.io.gfile.GFile(os.path.join(self.dir, "done"), "w") as f:
                f.write("done\n")

    def restore(self, model: tf.keras.Model) -> None:
        model.load_weights(os.path.join(self.dir, "weights", "ckpt")).expect_partial()


def clear(root: Optional[str]) -> None:
    if root and tf.io.gfile.exists(root):
        tf.io.gfile.rmtree(root)

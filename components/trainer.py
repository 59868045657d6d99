"""The Trainer's run_fn: two-phase transfer learning, then export.

Phase 1 (transfer): the base is frozen and called in inference mode; only the new
head learns. Phase 2 (fine-tune): the top of the base is unfrozen (BatchNorm stays
frozen) and training continues at a lower learning rate, its epochs numbered after
phase 1's so curves show one timeline.
"""
from __future__ import annotations

import json
import logging
import os
import time

import tensorflow as tf
import tensorflow_transform as tft

from components import augment, export, inputs, labels, model as model_lib

log = logging.getLogger("xfer.trainer")


class EpochLog(tf.keras.callbacks.Callback):
    """One line per epoch: phase, epoch, metrics, images/s."""

    def __init__(self, phase: str, batch_size: int):
        super().__init__()
        self.phase, self.batch_size = phase, batch_size

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        rate = self._steps * self.batch_size / seconds if seconds else 0.0
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
        print(f"[xfer] {self.phase} epoch {epoch + 1}: {metrics} {rate:.1f} images/s "
              f"({seconds:.1f}s)", flush=True)


def run_fn(fn_args):
    cfg = fn_args.custom_config
    train, data = cfg["train"], cfg["data"]
    tf.keras.utils.set_random_seed(train["seed"])
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    names = labels.class_names(tft_output, cfg.get("labels_file"), data["num_classes"])

    batch = train["batch_size"]
    steps = train["steps_per_epoch"]
    train_ds = inputs.make_dataset(
        fn_args.train_files, tft_output, batch_size=batch, training=True, seed=train["seed"],
        shuffle_buffer=train["shuffle_buffer"],
        augmenter=augment.build_augmenter(train["augment"], train["seed"]),
        repeat=steps is not None)
    eval_ds = inputs.make_dataset(
        fn_args.eval_files, tft_output, batch_size=batch, training=False, seed=train["seed"],
        drop_remainder=False)

    classifier, base = model_lib.build_model(cfg["model"], len(names))
    history = {}

    transfer = train["transfer"]
    model_lib.freeze_base(base)
    model_lib.compile_for(classifier, transfer["optimizer"], transfer["learning_rate"])
    epoch = 0
    if transfer["epochs"]:
        h = classifier.fit(train_ds, validation_data=eval_ds, epochs=transfer["epochs"],
                           steps_per_epoch=steps, verbose=0,
                           callbacks=[EpochLog("transfer", batch)])
        history["transfer"] = h.history
        epoch = transfer["epochs"]

    fine = train["fine_tune"]
    if fine["enabled"] and fine["epochs"]:
        unfrozen = model_lib.unfreeze_top(base, fine["from_layer"], fine["fraction"])
        print(f"[xfer] fine-tune: unfrozen {len(unfrozen)} base layers "
              f"({unfrozen[0]} .. {unfrozen[-1]})" if unfrozen else "[xfer] fine-tune: nothing unfrozen",
              flush=True)
        model_lib.compile_for(classifier, fine["optimizer"], fine["learning_rate"])
        h = classifier.fit(train_ds, validation_data=eval_ds, initial_epoch=epoch,
                           epochs=epoch + fine["epochs"], steps_per_epoch=steps, verbose=0,
                           callbacks=[EpochLog("fine-tune", batch)])
        history["fine_tune"] = h.history

    sigs = export.signatures(classifier, tft_output, data["image_key"], names)
    classifier.save(fn_args.serving_model_dir, save_format="tf", signatures=sigs)
    # Class names beside the model, for clients that show the top k (xfer predict, TFLite).
    extra = os.path.join(fn_args.serving_model_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, "labels.txt"), "w") as f:
        f.write("".join(f"{n}\n" for n in names))
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "history.json"), "w") as f:
        json.dump({"class_names": names, "history": _jsonable(history)}, f, indent=1)
    if cfg.get("tflite"):
        export.write_tflite(classifier, os.path.join(extra, export.TFLITE_FILE))
    summary_lines = []
    classifier.summary(print_fn=summary_lines.append)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "model_summary.txt"), "w") as f:
        f.write("\n".join(summary_lines) + "\n")


def _jsonable(history: dict) -> dict:
    return {phase: {k: [float(v) for v in vals] for k, vals in h.items()} for phase, h in history.items()}

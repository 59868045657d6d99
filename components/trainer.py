"""The Trainer's run_fn: two-phase transfer learning, then export.

Phase 1 (transfer): the base is frozen and called in inference mode; only the new
head learns, on cached base features when nothing random touches the images.
Phase 2 (fine-tune): the top of the base is unfrozen (BatchNorm stays frozen) and
training continues at a lower learning rate, its epochs numbered after phase 1's so
curves and TensorBoard show one timeline. Both phases back up every epoch and resume
after a kill (components/resume.py).
"""
from __future__ import annotations

import gc
import json
import os
import time

import tensorflow as tf
import tensorflow_transform as tft

from xfer.components import (augment, export, feature_cache, inputs, labels, model as model_lib,
                        reports, resume, strategy as strategy_lib)


class EpochLog(tf.keras.callbacks.Callback):
    """One line per epoch: phase, epoch, metrics, images/s."""

    def __init__(self, phase: str, batch_size: int):
        super().__init__()
        self.phase, self.batch_size = phase, batch_size

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution > 1 Keras calls this once per execution, with the
        # index of the execution's last step.
        self._steps = batch + 1

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        rate = self._steps * self.batch_size / seconds if seconds else 0.0
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
        print(f"[xfer] {self.phase} epoch {epoch + 1}: {metrics} {rate:.1f} images/s "
              f"({seconds:.1f}s)", flush=True)


def _early_stopping(cfg) -> list:
    if not cfg:
        return []
    return [tf.keras.callbacks.EarlyStopping(
        monitor=cfg["monitor"], patience=cfg["patience"], min_delta=cfg["min_delta"],
        restore_best_weights=cfg["restore_best_weights"])]


def _epochs_run(history: dict) -> int:
    return len(next(iter(history.values()), []))


def run_fn(fn_args):
    # A local run trains in the orchestrator's process, whose heap holds TFX, Beam and
    # the earlier steps' objects; freezing them keeps the collector from re-scanning
    # them during every epoch.
    gc.collect()
    gc.freeze()
    try:
        _train_and_export(fn_args)
    finally:
        gc.unfreeze()
        # A local run trains in the orchestrator's process: leave no global policy behind.
        tf.keras.mixed_precision.set_global_policy("float32")


def _train_and_export(fn_args):
    cfg = fn_args.custom_config
    train, data = cfg["train"], cfg["data"]
    tf.keras.utils.set_random_seed(train["seed"])

    chosen = strategy_lib.choose(train["strategy"], tpu=train["tpu"], devices=train["devices"])
    policy = strategy_lib.precision_policy(train["mixed_precision"], chosen.kind)
    tf.keras.mixed_precision.set_global_policy(policy)
    print(f"[xfer] strategy: {chosen.kind} ({chosen.why}), {chosen.replicas} replica(s), "
          f"precision {policy}", flush=True)

    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    names = labels.class_names(tft_output, cfg.get("labels_file"), data["num_classes"])
    with chosen.strategy.scope():
        classifier, base = model_lib.build_model(cfg["model"], len(names))

    batch, steps, seed = train["batch_size"], train["steps_per_epoch"], train["seed"]
    spe = train["steps_per_execution"]
    on_tpu = chosen.kind == "tpu"
    augmenter = augment.build_augmenter(train["augment"], seed)
    val_steps = None
    if spe > 1:
        # Keras runs `spe` steps per call and must know how many an epoch has, for eval
        # too; a TFRecord dataset does not say, so count the examples once.
        n_train, n_eval = inputs.count_records(fn_args.train_files), inputs.count_records(fn_args.eval_files)
        if steps is None:
            steps = max(1, n_train // batch)  # training drops the last partial batch
        val_steps = max(1, n_eval // batch if on_tpu else -(-n_eval // batch))
        print(f"[xfer] steps_per_execution {spe}: {n_train} train / {n_eval} eval examples, "
              f"{steps} steps an epoch, {val_steps} eval steps", flush=True)

    def images(files, training):
        # TPUs need static shapes everywhere, eval included.
        return inputs.make_dataset(
            files, tft_output, batch_size=batch, training=training, seed=seed,
            shuffle_buffer=train["shuffle_buffer"], augmenter=augmenter if training else None,
            repeat=training and steps is not None, drop_remainder=training or on_tpu)

    backup_root = resume.backup_dir(fn_args) if train["resume"] else None
    logs_dir = os.path.join(fn_args.model_run_dir, "logs")

    def callbacks(phase, backup):
        # Backup and journal first: when the epoch line shows, the epoch is saved.
        cbs = backup.callbacks() + _early_stopping(train[phase]["early_stopping"])
        if train["reports"]:
            cbs.append(tf.keras.callbacks.TensorBoard(logs_dir, profile_batch=0, write_graph=False))
        return cbs + [EpochLog(phase.replace("_", "-"), batch)]

    history = {}
    transfer = train["transfer"]
    phase1 = resume.Phase(backup_root, "transfer")
    if transfer["epochs"] and phase1.done():
        phase1.restore(classifier)
        history["transfer"] = phase1.history({})
        print(f"[xfer] transfer: resumed: phase 1 finished before the interruption "
              f"({_epochs_run(history['transfer'])} epochs), weights restored", flush=True)
    elif transfer["epochs"]:
        phase_start = time.perf_counter()
        model_lib.freeze_base(base)
        cached = feature_cache.wanted(transfer["cache_features"], augmenter is not None)
        fit_model, train_ds, eval_ds = classifier, None, None
        if cached:
            start = time.perf_counter()
            with chosen.strategy.scope():
                features_model, head = model_lib.split_at_pool(classifier)
            predict = feature_cache.extractor(features_model)
            train_x, train_y = feature_cache.extract(predict, images(fn_args.train_files, False))
            eval_x, eval_y = feature_cache.extract(predict, images(fn_args.eval_files, False))
            if feature_cache.fits(train_x, eval_x):
                common = dict(batch_size=batch, seed=seed, shuffle_buffer=train["shuffle_buffer"])
                train_ds = feature_cache.dataset(train_x, train_y, training=True, repeat=steps is not None,
                                                 drop_remainder=True, **common)
                eval_ds = feature_cache.dataset(eval_x, eval_y, training=False, repeat=False,
                                                drop_remainder=on_tpu, **common)
                fit_model = head
                print(f"[xfer] transfer: cached base features of {len(train_y)} train and "
                      f"{len(eval_y)} eval images ({train_x.shape[1:]}, "
                      f"{(train_x.nbytes + eval_x.nbytes) / 1e6:.1f} MB) in "
                      f"{time.perf_counter() - start:.1f}s", flush=True)
            else:
                print("[xfer] transfer: features too large to cache in memory; training on images",
                      flush=True)
        if train_ds is None:
            train_ds, eval_ds = images(fn_args.train_files, True), images(fn_args.eval_files, False)
        with chosen.strategy.scope():
            model_lib.compile_for(fit_model, transfer["optimizer"], transfer["learning_rate"], spe)
        h = fit_model.fit(train_ds, validation_data=eval_ds, epochs=transfer["epochs"],
                          steps_per_epoch=steps, validation_steps=val_steps, verbose=0,
                          callbacks=callbacks("transfer", phase1))
        history["transfer"] = phase1.history(h.history)
        phase1.mark_done(classifier)
        print(f"[xfer] transfer done: {_epochs_run(history['transfer'])} epochs in "
              f"{time.perf_counter() - phase_start:.1f}s "
              f"({'on cached features' if fit_model is not classifier else 'on images'})", flush=True)

    fine = train["fine_tune"]
    if fine["enabled"] and fine["epochs"]:
        phase_start = time.perf_counter()
        epoch = _epochs_run(history.get("transfer", {}))
        with chosen.strategy.scope():
            unfrozen = model_lib.unfreeze_top(base, fine["from_layer"], fine["fraction"])
            model_lib.compile_for(classifier, fine["optimizer"], fine["learning_rate"], spe)
        print(f"[xfer] fine-tune: unfrozen {len(unfrozen)} base layers "
              f"({unfrozen[0]} .. {unfrozen[-1]})" if unfrozen else "[xfer] fine-tune: nothing unfrozen",
              flush=True)
        phase2 = resume.Phase(backup_root, "fine_tune")
        h = classifier.fit(images(fn_args.train_files, True),
                           validation_data=images(fn_args.eval_files, False),
                           initial_epoch=epoch, epochs=epoch + fine["epochs"], steps_per_epoch=steps,
                           validation_steps=val_steps, verbose=0, callbacks=callbacks("fine_tune", phase2))
        history["fine_tune"] = phase2.history(h.history)
        print(f"[xfer] fine-tune done: {_epochs_run(history['fine_tune'])} epochs in "
              f"{time.perf_counter() - phase_start:.1f}s", flush=True)

    start = time.perf_counter()
    _export(fn_args, cfg, classifier, tft_output, names, history)
    print(f"[xfer] exported the SavedModel in {time.perf_counter() - start:.1f}s", flush=True)
    if train["reports"]:
        start = time.perf_counter()
        paths = reports.write_all(classifier, images(fn_args.eval_files, False), history, names,
                                  fn_args.model_run_dir)
        print(f"[xfer] reports in {time.perf_counter() - start:.1f}s: {', '.join(sorted(paths.values()))}; "
              f"TensorBoard: {logs_dir}", flush=True)
    resume.clear(backup_root)


def _export(fn_args, cfg, classifier, tft_output, names, history) -> None:
    sigs = export.signatures(classifier, tft_output, cfg["data"]["image_key"], names)
    # No traced layer functions: the signatures are what serving and TFMA call, and Keras
    # reloads from the layer configs; tracing every layer was 17 s of a 33 s Trainer.
    classifier.save(fn_args.serving_model_dir, save_format="tf", signatures=sigs, save_traces=False)
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

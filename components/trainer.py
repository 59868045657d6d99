"""The Trainer's run_fn: two-phase transfer learning, then export.

Phase 1 (transfer): the base is frozen and called in inference mode; only the new
head learns, on cached base features when nothing random touches the images.
Phase 2 (fine-tune): the top of the base is unfrozen (BatchNorm stays frozen) and
training continues at a lower learning rate, its epochs numbered after phase 1's so
curves and TensorBoard show one timeline. Both phases back up every epoch and resume
after a kill (components/resume.py).
"""
from __future__ import annotations

import copy
import gc
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import tensorflow as tf
import tensorflow_transform as tft

from xfer.components import (augment, class_weights, export, feature_cache, inputs, keras_setup,  # noqa: F401
                             labels, model as model_lib, recipe, reports, resume, strategy as strategy_lib)
from xfer.components.settings import (AUTO_STEPS_PER_EXECUTION, EarlyStoppingConfig, FineTuneConfig, TrainConfig,
                                      TrainerSettings, TransferConfig)


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


def run_fn(fn_args):
    s = TrainerSettings.model_validate(fn_args.custom_config)
    # A local run trains in the orchestrator's process, whose heap holds TFX, Beam and
    # the earlier steps' objects; freezing them keeps the collector from re-scanning
    # them during every epoch.
    gc.collect()
    gc.freeze()
    try:
        _train_and_export(fn_args, s)
    finally:
        gc.unfreeze()
        # A local run trains in the orchestrator's process: leave no global policy behind.
        tf.keras.mixed_precision.set_global_policy("float32")


def _train_and_export(fn_args, s: TrainerSettings) -> None:
    t = s.train
    tf.keras.utils.set_random_seed(t.seed)
    chosen = _choose_strategy(t)
    if strategy_lib.is_chief(chosen):
        _train_and_export_as(fn_args, fn_args, s, chosen)
        return
    # TF's multi-worker saving rules: every worker saves the model, the reports' passes and
    # the logs (saving reads distributed variables through collectives, which need every
    # worker), but a non-chief writes them to a folder of its own, removed at the end;
    # only the chief's copy is the run's output. The folder's name is fixed by the run's
    # output and the task, so a worker killed midway and restarted (as Vertex restarts a
    # job) removes what its killed self left before it writes again.
    key = hashlib.blake2b(fn_args.model_run_dir.encode(), digest_size=6).hexdigest()
    scratch = os.path.join(tempfile.gettempdir(), f"xfer-{strategy_lib.task_name(chosen)}-{key}")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    print(f"[xfer] {strategy_lib.task_name(chosen)}: the chief writes the model, reports and logs; this "
          f"worker writes its copies to {scratch}, removed at the end", flush=True)
    own = copy.copy(fn_args)
    own.serving_model_dir = os.path.join(scratch, "serving")
    own.model_run_dir = os.path.join(scratch, "model_run")
    try:
        _train_and_export_as(fn_args, own, s, chosen, scratch=scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"[xfer] {strategy_lib.task_name(chosen)}: removed {scratch}", flush=True)


def _train_and_export_as(fn_args, outputs, s: TrainerSettings, chosen: strategy_lib.Chosen,
                         scratch: Optional[str] = None) -> None:
    """Trains and exports to `outputs`' folders; epoch backups beside `fn_args`' model run
    folder, which every worker shares."""
    t = s.train
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    names = labels.class_names(tft_output, s.labels_file, s.num_classes)
    weights = class_weights.for_training(t.class_weight, fn_args.train_files, names,
                                         labels.vocabulary(tft_output))
    if weights is not None:
        print(f"[xfer] class weights (train.class_weight: {t.class_weight}): "
              f"{class_weights.describe(weights, names)}", flush=True)
    with chosen.strategy.scope():
        classifier, base = model_lib.build_model(s.model, len(names))
    started_from = f"model.weights ({s.model.weights})"
    if t.warm_start == "served":
        from xfer.components.warm_start import warm_start
        started_from = warm_start(classifier, fn_args.base_model, names, started_from)[1]
        print(started_from, flush=True)
    run = Run.prepare(outputs, t, chosen, tft_output, weights, num_classes=len(names), backup_of=fn_args)
    history = {}
    fn_args = outputs

    # Phase 1, transfer: the base frozen, only the head learns.
    phase1 = resume.Phase(run.backup_root, "transfer", task=None if scratch is None else strategy_lib.task_name(chosen),
                          scratch=scratch)
    if t.transfer.epochs and phase1.done():
        phase1.restore(classifier)
        history["transfer"] = phase1.history({})
        print(f"[xfer] transfer: resumed: phase 1 finished before the interruption "
              f"({_epochs_run(history['transfer'])} epochs), weights restored", flush=True)
    elif t.transfer.epochs:
        start = time.perf_counter()
        model_lib.freeze_base(base)
        fit_model, train_ds, eval_ds = _phase1_inputs(run, classifier)
        history["transfer"] = run_phase(run, "transfer", t.transfer, phase1, fit_model, train_ds, eval_ds)
        phase1.mark_done(classifier)
        print(f"[xfer] transfer done: {_epochs_run(history['transfer'])} epochs in "
              f"{time.perf_counter() - start:.1f}s "
              f"({'on cached features' if fit_model is not classifier else 'on images'})", flush=True)

    # Phase 2, fine-tune: the top of the base unfrozen, its epochs numbered after phase 1's.
    if t.fine_tune.enabled and t.fine_tune.epochs:
        start = time.perf_counter()
        with chosen.strategy.scope():
            unfrozen = model_lib.unfreeze_top(base, t.fine_tune.from_layer, t.fine_tune.fraction)
        print(f"[xfer] fine-tune: unfrozen {len(unfrozen)} base layers "
              f"({unfrozen[0]} .. {unfrozen[-1]})" if unfrozen else "[xfer] fine-tune: nothing unfrozen",
              flush=True)
        history["fine_tune"] = run_phase(
            run, "fine_tune", t.fine_tune, resume.Phase(run.backup_root, "fine_tune", task=phase1.task,
                                                        scratch=scratch), classifier,
            run.images("train", training=True), run.images("eval", training=False),
            initial_epoch=_epochs_run(history.get("transfer", {})), base_variables=base.trainable_variables)
        print(f"[xfer] fine-tune done: {_epochs_run(history['fine_tune'])} epochs in "
              f"{time.perf_counter() - start:.1f}s", flush=True)

    if recipe.compiled_with_recipe(classifier):
        # The exported model must load anywhere with compile=True (TFMA loads it so, in
        # processes that never import xfer): its training config is the plain one of the
        # last phase's optimizer, sparse cross-entropy and accuracy, as without a recipe.
        last = t.fine_tune if t.fine_tune.enabled and t.fine_tune.epochs else t.transfer
        with chosen.strategy.scope():
            model_lib.compile_for(classifier, last.optimizer, last.learning_rate, run.steps_per_execution)
    if chosen.kind == "multi_worker":
        classifier = _single_worker_copy(classifier, t, run)
    if scratch is None:
        _export(fn_args, s, classifier, tft_output, names, history, started_from)
        if t.reports:
            _reports(run, classifier, history, names)
    # Every worker waits for the chief's export: the cluster ends together (a worker
    # gone early shows in the chief's log as a heartbeat timeout), and no worker still
    # reads the backups when the chief removes them.
    strategy_lib.barrier(chosen)
    if scratch is None:
        resume.clear(run.backup_root)


def _single_worker_copy(classifier: tf.keras.Model, t: TrainConfig, run: "Run") -> tf.keras.Model:
    """The trained classifier as a plain model, its variables outside the multi-worker
    strategy, for the export and the reports.

    Under MultiWorkerMirroredStrategy BatchNorm's statistics are read through a
    collective across the workers; a function traced on the trained model (the serving
    signatures, the reports' passes) would carry those collectives into the SavedModel
    ("Tried to export a function which references an 'untracked' resource": the
    collective's ordering token) and block on the chief alone. Every worker reads the
    weights here, in step; then only the chief exports, from the copy. The copy is
    compiled with the last phase's plain training config (as with a recipe) and carries
    no optimizer state."""
    copy_ = tf.keras.models.clone_model(classifier)
    copy_.set_weights(classifier.get_weights())
    last = t.fine_tune if t.fine_tune.enabled and t.fine_tune.epochs else t.transfer
    model_lib.compile_for(copy_, last.optimizer, last.learning_rate, run.steps_per_execution)
    return copy_


@dataclass
class Run:
    """What both phases share: the strategy, how batches are cut and counted, backups."""
    fn_args: object
    train: TrainConfig
    chosen: strategy_lib.Chosen
    tft_output: tft.TFTransformOutput
    augmenter: Optional[tf.keras.Sequential]
    steps: Optional[int]
    val_steps: Optional[int]
    backup_root: Optional[str]
    # train.class_weight: {class index: loss weight} for fit() in both phases, or None.
    class_weight: Optional[dict] = None
    # MixUp/CutMix on training batches (recipe.mixer), or None.
    mixer: Optional[Callable] = None
    # Batches per compiled call: train.steps_per_execution with `auto` resolved.
    steps_per_execution: int = 1
    _epoch_steps: Optional[int] = field(default=None, repr=False)
    _n_train: Optional[int] = field(default=None, repr=False)

    @classmethod
    def prepare(cls, fn_args, t: TrainConfig, chosen, tft_output,
                class_weight: Optional[dict] = None, num_classes: Optional[int] = None,
                backup_of=None) -> "Run":
        """backup_of: the FnArgs whose backup folder to use (resume.backup_dir), when
        fn_args' output folders are a non-chief worker's own; default fn_args."""
        augmenter = augment.build_augmenter(t.augment, t.seed)
        mixer = recipe.mixer(t.augment, num_classes, t.seed) if num_classes else None
        steps, val_steps = t.steps_per_epoch, None
        spe, on_tpu = t.steps_per_execution, chosen.kind == "tpu"
        # Keras runs `spe` steps per call and must know how many an epoch has, for eval
        # too; a TFRecord dataset does not say. DataCheck counted the records it kept.
        counted = None
        if spe == "auto":
            counted, source = examples_per_split(fn_args, count=False)
            if counted is None:
                spe = 1
                print(f"[xfer] steps_per_execution auto: 1 ({source}; a number in "
                      "train.steps_per_execution counts the records in one read)", flush=True)
            else:
                spe = min(AUTO_STEPS_PER_EXECUTION, steps or batches(counted[0], t.batch_size, on_tpu))
        if spe > 1:
            if counted is None:
                counted, source = examples_per_split(fn_args)
            n_train, n_eval = counted
            if steps is None:
                steps = batches(n_train, t.batch_size, on_tpu)
            val_steps = batches(n_eval, t.batch_size, on_tpu)
            how = " (auto)" if t.steps_per_execution == "auto" else ""
            print(f"[xfer] steps_per_execution {spe}{how}: {n_train} train / {n_eval} eval examples ({source}), "
                  f"{steps} steps an epoch, {val_steps} eval steps", flush=True)
        return cls(fn_args, t, chosen, tft_output, augmenter, steps, val_steps,
                   resume.backup_dir(backup_of or fn_args) if t.resume else None, class_weight, mixer, spe)

    def epoch_steps(self) -> int:
        """Optimizer steps in an epoch, for a learning-rate schedule: train.steps_per_epoch,
        else the train examples (examples_per_split) over the batch size."""
        if self.steps is not None:
            return self.steps
        if self._epoch_steps is None:
            self._epoch_steps = batches(self._train_examples(), self.train.batch_size, self.on_tpu)
        return self._epoch_steps

    def _train_examples(self) -> int:
        if self._n_train is None:
            self._n_train = examples_in(self.fn_args.train_files)[0]
        return self._n_train

    @property
    def on_tpu(self) -> bool:
        return self.chosen.kind == "tpu"

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.fn_args.model_run_dir, "logs")

    def images(self, split: str, *, training: bool, batch_size: Optional[int] = None) -> tf.data.Dataset:
        """(image, label) batches of train.batch_size, or of `batch_size` (feature extraction)."""
        files = self.fn_args.train_files if split == "train" else self.fn_args.eval_files
        # TPUs need static shapes everywhere, eval included. Elsewhere the last partial
        # batch is trained on: a split smaller than one batch still trains.
        return inputs.make_dataset(
            files, self.tft_output, batch_size=batch_size or self.train.batch_size, training=training,
            seed=self.train.seed,
            shuffle_buffer=self.train.shuffle_buffer, augmenter=self.augmenter if training else None,
            repeat=training and self.steps is not None, drop_remainder=self.on_tpu,
            mixer=self.mixer if training else None)

    def callbacks(self, phase: str, early_stopping: Optional[EarlyStoppingConfig], backup: resume.Phase) -> list:
        # Backup and journal first: when the epoch line shows, the epoch is saved.
        cbs = backup.callbacks() + early_stopping_callbacks(early_stopping)
        if self.train.reports:
            cbs.append(tf.keras.callbacks.TensorBoard(self.logs_dir, profile_batch=0, write_graph=False))
        return cbs + [EpochLog(phase.replace("_", "-"), self.train.batch_size)]


def batches(n: int, batch_size: int, on_tpu: bool) -> int:
    """Steps to go over n examples once (at least 1). Only a TPU drops the last partial
    batch (static shapes)."""
    return max(1, n // batch_size if on_tpu else -(-n // batch_size))


def examples_in(files: list[str], count: bool = True) -> tuple[Optional[int], str]:
    """(examples, where the figure comes from) of one split: DataCheck's count of the
    records it kept (components/data_check.py, label_counts.json beside the examples),
    so sizing an epoch reads nothing; examples from elsewhere (no counts) are counted by
    one read of the records, or with count=False are (None, why)."""
    from xfer.components.data_check import read_label_counts

    split_dir = os.path.dirname(files[0])  # <examples uri>/Split-<name>
    try:
        counts = read_label_counts(os.path.dirname(split_dir))
        n = sum(int(v) for v in counts[os.path.basename(split_dir)[len("Split-"):]].values())
        if n > 0:
            return n, "DataCheck's counts"
    except (OSError, KeyError, ValueError, tf.errors.OpError):
        pass  # examples not from DataCheck: count them
    if not count:
        return None, f"no DataCheck counts beside {split_dir}"
    return inputs.count_records(files), "counted"


def examples_per_split(fn_args, count: bool = True) -> tuple[Optional[tuple[int, int]], str]:
    """((train, eval) examples, where the figures come from): examples_in for each split;
    with count=False, (None, why) when either split has no DataCheck counts."""
    (n_train, train_source), (n_eval, eval_source) = (examples_in(fn_args.train_files, count),
                                                      examples_in(fn_args.eval_files, count))
    if n_train is None or n_eval is None:
        return None, train_source if n_train is None else eval_source
    source = train_source if train_source == eval_source else f"train: {train_source}, eval: {eval_source}"
    return (n_train, n_eval), source


def run_phase(run: Run, name: str, phase: Union[TransferConfig, FineTuneConfig], backup: resume.Phase,
              model: tf.keras.Model, train_ds, eval_ds, initial_epoch: int = 0, base_variables=()) -> dict:
    """Compile `model` at the phase's optimizer and learning rate (schedule) and fit it for
    the phase's epochs; returns the phase's history, whole even when it resumed.

    The schedule steps on the optimizer's iterations: a fresh optimizer per phase counts
    this phase's steps from 0 (whatever `initial_epoch`), and BackupAndRestore restores
    them with the model, so a resumed phase continues its schedule where it stopped."""
    t = run.train
    steps = run.epoch_steps() if recipe.needs_schedule(phase) else None
    print(recipe.describe(name, phase, t.label_smoothing, t.augment, steps), flush=True)
    with run.chosen.strategy.scope():
        model_lib.compile_for(model, phase.optimizer, recipe.learning_rate(phase, steps), run.steps_per_execution,
                              label_smoothing=t.label_smoothing, soft_targets=run.mixer is not None,
                              base_variables=base_variables, base_lr_factor=getattr(phase, "base_lr_factor", 1.0))
    # class_weight weights the training loss only (on images or on cached features alike:
    # both datasets yield (x, sparse label)); validation loss and metrics stay unweighted.
    h = model.fit(train_ds, validation_data=eval_ds, initial_epoch=initial_epoch,
                  epochs=initial_epoch + phase.epochs, steps_per_epoch=run.steps,
                  validation_steps=run.val_steps, verbose=0, class_weight=run.class_weight,
                  callbacks=run.callbacks(name, phase.early_stopping, backup))
    return backup.history(h.history)


def _phase1_inputs(run: Run, classifier: tf.keras.Model):
    """(model to fit, train batches, eval batches): the head on cached base features
    when nothing random touches the images and they fit in memory, else the classifier
    on images."""
    if feature_cache.wanted(run.train.transfer.cache_features, run.augmenter is not None or run.mixer is not None):
        cached = _cached_features(run, classifier)
        if cached is not None:
            return cached
    return classifier, run.images("train", training=True), run.images("eval", training=False)


def _cached_features(run: Run, classifier: tf.keras.Model):
    start = time.perf_counter()
    with run.chosen.strategy.scope():
        features_model, head = model_lib.split_at_pool(classifier)
    # A TPU keeps its batches and variables as they are; elsewhere the weights are frozen
    # into the graph and the batches are larger (feature_cache.extractor, EXTRACT_BATCH).
    # With several workers the frozen BatchNorm statistics are variables synchronized on
    # read: reading one is a collective across the workers, which graph freezing cannot
    # turn into a constant ("missing required arguments ... CollectiveReduceV2"). There
    # every worker extracts every batch with the plain function, in step with the others.
    predict = feature_cache.extractor(features_model, freeze=not run.on_tpu and run.chosen.kind != "multi_worker")
    size = None if run.on_tpu else max(feature_cache.EXTRACT_BATCH, run.train.batch_size)
    train_x, train_y = feature_cache.extract(predict, run.images("train", training=False, batch_size=size))
    eval_x, eval_y = feature_cache.extract(predict, run.images("eval", training=False, batch_size=size))
    if not feature_cache.fits(train_x, eval_x):
        print("[xfer] transfer: features too large to cache in memory; training on images", flush=True)
        return None
    t = run.train
    common = dict(batch_size=t.batch_size, seed=t.seed, shuffle_buffer=t.shuffle_buffer)
    train_ds = feature_cache.dataset(train_x, train_y, training=True, repeat=run.steps is not None,
                                     drop_remainder=run.on_tpu, **common)
    eval_ds = feature_cache.dataset(eval_x, eval_y, training=False, repeat=False,
                                    drop_remainder=run.on_tpu, **common)
    print(f"[xfer] transfer: cached base features of {len(train_y)} train and "
          f"{len(eval_y)} eval images ({train_x.shape[1:]}, "
          f"{(train_x.nbytes + eval_x.nbytes) / 1e6:.1f} MB) in "
          f"{time.perf_counter() - start:.1f}s", flush=True)
    return head, train_ds, eval_ds


def _choose_strategy(t: TrainConfig) -> strategy_lib.Chosen:
    chosen = strategy_lib.choose(t.strategy, tpu=t.tpu, devices=t.devices)
    policy = strategy_lib.precision_policy(t.mixed_precision, chosen.kind)
    tf.keras.mixed_precision.set_global_policy(policy)
    print(f"[xfer] strategy: {chosen.kind} ({chosen.why}), {chosen.replicas} replica(s), "
          f"precision {policy}", flush=True)
    return chosen


def early_stopping_callbacks(es: Optional[EarlyStoppingConfig]) -> list:
    if es is None:
        return []
    return [tf.keras.callbacks.EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta,
                                             restore_best_weights=es.restore_best_weights)]


def _epochs_run(history: dict) -> int:
    return len(next(iter(history.values()), []))


def _export(fn_args, s: TrainerSettings, classifier, tft_output, names, history, started_from: str) -> None:
    start = time.perf_counter()
    # eval.calibrate and serving.abstain_below are measured on the eval split here, with
    # the very signatures exported (components/calibration.py).
    from xfer.components import calibration
    sigs, temperature = calibration.for_export(
        lambda t: export.signatures(classifier, tft_output, s.image_key, names, s.serving, temperature=t),
        fn_args.eval_files, s, fn_args.model_run_dir)
    # No traced layer functions: the signatures are what serving and TFMA call, and Keras
    # reloads from the layer configs; tracing every layer was 17 s of a 33 s Trainer.
    classifier.save(fn_args.serving_model_dir, save_format="tf", signatures=sigs, save_traces=False)
    # Class names beside the model, for clients that show the top k (xfer predict, TFLite).
    extra = os.path.join(fn_args.serving_model_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    labels.write_labels_file(os.path.join(extra, "labels.txt"), names)
    export.write_serving_json(fn_args.serving_model_dir, classifier.input_shape[1], s.serving, temperature)
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "history.json"), "w") as f:
        # The settings it trained with and where its weights started: the model card's recipe.
        json.dump({"class_names": names, "history": _jsonable(history),
                   "settings": s.model_dump(mode="json"), "started_from": started_from}, f, indent=1)
    summary_lines = []
    classifier.summary(print_fn=summary_lines.append)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "model_summary.txt"), "w") as f:
        f.write("\n".join(summary_lines) + "\n")
    print(f"[xfer] exported the SavedModel in {time.perf_counter() - start:.1f}s", flush=True)


def _reports(run: Run, classifier, history, names) -> None:
    start = time.perf_counter()
    paths = reports.write_all(classifier, run.images("eval", training=False), history, names,
                              run.fn_args.model_run_dir)
    print(f"[xfer] reports in {time.perf_counter() - start:.1f}s: {', '.join(sorted(paths.values()))}; "
          f"TensorBoard: {run.logs_dir}", flush=True)


def _jsonable(history: dict) -> dict:
    return {phase: {k: [float(v) for v in vals] for k, vals in h.items()} for phase, h in history.items()}

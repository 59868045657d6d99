"""The learning-rate range test (Leslie Smith, 2015; fastai's `lr_find`), on a throwaway
copy of the Trainer's model.

The rate grows exponentially from START_RATE to END_RATE, one step per batch of the
train split, through the Trainer's own input pipeline, model, loss and optimizer
(components/trainer.py `Run`, `run_phase`; components/model.py). The test stops early
once the smoothed loss exceeds DIVERGED x its minimum, or is not finite. Nothing is
saved: the model lives in this process only, with no backups and no TensorBoard logs,
so nothing of it reaches a later `xfer run`.

The suggestion is the point where the smoothed loss falls fastest per decade of rate
(the steepest descent), searched before the loss's minimum. minimum/10 is reported beside
it. Why steepest: it is where a rate change buys the most progress, the definition of a
good rate in Smith's test. minimum/10 is a guard against picking the rim of divergence,
but it depends on where the curve bottoms out, which on a short test moves with noise
and with the lag of any causal smoothing; the steepest point sits in the stable,
falling part of the curve. The suggestion is never above minimum/3, so a curve whose
steepest point lies close to divergence does not suggest an unsafe rate.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

START_RATE, END_RATE = 1e-7, 10.0
MAX_STEPS = 100     # fastai's num_it (the default of --steps)
MIN_STEPS = 20      # fewer points than this do not make a curve
STEPS_LIMIT = 1000  # the most --steps takes
MAX_PASSES = 3      # at most this many passes over the train split (a small split repeats)
DIVERGED = 4.0      # stop once the smoothed loss exceeds this x its minimum (fastai's rule)
SMOOTHING = 0.8     # exponential smoothing of the per-step loss (forward and back: about ±4 steps)
SKIP_START = 3      # the first steps' smoothed values rest on very few points
SAFETY = 3.0        # the suggestion stays at or below the rate at the minimum / SAFETY


class LrFindError(ValueError):
    """A range test that cannot be run or cannot suggest a rate; the message names the fix."""


def min_train_examples(batch_size: int) -> int:
    """The train examples a meaningful test needs: MIN_STEPS batches within MAX_PASSES passes."""
    return batch_size * math.ceil(MIN_STEPS / MAX_PASSES)


def plan_steps(steps_per_pass: int, steps: int = MAX_STEPS) -> int:
    """Steps of the test: `steps` (--steps), or fewer on a small split (at most MAX_PASSES passes)."""
    return min(steps, MAX_PASSES * steps_per_pass)


def rates(steps: int, start: float = START_RATE, end: float = END_RATE) -> np.ndarray:
    """Exponentially spaced rates, start and end included."""
    return start * (end / start) ** (np.arange(steps) / max(1, steps - 1))


def causal_smooth(losses, beta: float = SMOOTHING) -> np.ndarray:
    """Debiased exponential moving average (what the test watches while it runs)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(loss)
        out.append(avg / (1 - beta ** (i + 1)))
    return np.asarray(out)


def smooth(losses, beta: float = SMOOTHING) -> np.ndarray:
    """The same average run forwards then backwards: no lag, so the suggestion is not
    shifted towards higher rates as a causal average would shift it."""
    return causal_smooth(causal_smooth(losses, beta)[::-1], beta)[::-1]


def usable(losses) -> np.ndarray:
    """The losses a suggestion and a plot rest on: up to the first that is not finite and up
    to where the test stops (the causal average past DIVERGED x its minimum), each clipped at
    that level, so the forward-backward average does not drag a divergence backwards."""
    losses = np.asarray(losses, dtype=float)
    finite = np.isfinite(losses)
    n = int(np.argmin(finite)) if not finite.all() else len(losses)
    losses = losses[:n]
    causal = causal_smooth(losses)
    best = np.minimum.accumulate(causal)
    over = np.nonzero((np.arange(n) >= SKIP_START) & (causal > DIVERGED * best))[0]
    if len(over):
        losses, best = losses[:over[0] + 1], best[:over[0] + 1]
    return np.minimum(losses, DIVERGED * best[-1]) if len(losses) else losses


@dataclass
class Suggestion:
    rate: float              # the suggested rate (see the module's docstring)
    steepest: float          # the rate where the smoothed loss falls fastest per decade
    minimum: float           # the rate at the smoothed loss's minimum
    rule: str                # how `rate` was chosen, for the user

    @property
    def minimum_over_10(self) -> float:
        return self.minimum / 10


def suggest(rate_values, losses) -> Suggestion:
    """The steepest descent of the smoothed loss against log10(rate), searched from
    SKIP_START up to the minimum; capped at minimum / SAFETY. Raises LrFindError when the
    loss never fell."""
    kept = usable(losses)
    n = len(kept)
    if n < MIN_STEPS // 2:
        raise LrFindError(f"the loss diverged after {n} steps (at rate {rate_values[n]:.2g}): the model "
                          f"diverges at any rate tested; check the data and the model")
    r, s = np.asarray(rate_values, dtype=float)[:n], smooth(kept)
    i_min = int(np.argmin(s))
    slopes = np.gradient(s, np.log10(r))
    lo = min(SKIP_START, i_min)
    if i_min <= lo or slopes[lo:i_min + 1].min() >= 0:
        raise LrFindError(
            f"the loss never fell over the rates tested ({r[0]:.0e} .. {r[-1]:.1g}): no rate trains "
            f"this model on these batches; check the labels and the model (or lower the starting weights' "
            f"damage: a higher phase 1 rate, more phase 1 epochs)")
    i_steep = lo + int(np.argmin(slopes[lo:i_min + 1]))
    steepest, minimum = float(r[i_steep]), float(r[i_min])
    cap = minimum / SAFETY
    if steepest <= cap:
        return Suggestion(steepest, steepest, minimum, "steepest descent of the smoothed loss")
    return Suggestion(cap, steepest, minimum,
                      f"minimum/{SAFETY:g} (the steepest descent, {steepest:.2g}, is too close to the minimum)")


@dataclass
class Curve:
    rates: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    stopped: str = ""        # why the test ended
    seconds: float = 0.0


def range_test(model, batches, steps: int, class_weight: Optional[dict] = None,
               start: float = START_RATE, end: float = END_RATE,
               log: Callable[[str], None] = print) -> Curve:
    """One optimizer step per batch at exponentially growing rates on a compiled `model`;
    each step's own loss (Keras' batch logs are running means, so train_on_batch)."""
    curve, best = Curve(), math.inf
    began = time.perf_counter()
    schedule = rates(steps, start, end)
    it = iter(batches)
    for i, lr in enumerate(schedule):
        x, y = next(it)
        model.optimizer.learning_rate = float(lr)
        loss = float(model.train_on_batch(x, y, class_weight=class_weight, reset_metrics=True,
                                          return_dict=True)["loss"])
        curve.rates.append(float(lr))
        curve.losses.append(loss)
        if not math.isfinite(loss):
            curve.stopped = f"the loss was not finite at rate {lr:.2g} (step {i + 1})"
            break
        smoothed = causal_smooth(curve.losses)[-1]
        best = min(best, smoothed)
        if i >= SKIP_START and smoothed > DIVERGED * best:
            curve.stopped = (f"the smoothed loss {smoothed:.3g} exceeded {DIVERGED:g}x its minimum "
                             f"{best:.3g} at rate {lr:.2g} (step {i + 1} of {steps})")
            break
        if (i + 1) % 20 == 0:
            log(f"[xfer] lr-find: step {i + 1}/{steps}: rate {lr:.2g}, loss {loss:.4f}")
    else:
        curve.stopped = f"all {steps} steps run (up to rate {schedule[-1]:.2g})"
    curve.seconds = time.perf_counter() - began
    return curve


def plot(curve: Curve, s: Suggestion, title: str, path: str) -> None:
    """Loss against rate on a log axis: each step's loss faint, the smoothed loss, the
    suggestion and the minimum marked."""
    from xfer.components.reports import _pyplot, _save

    plt = _pyplot()
    losses = np.asarray(curve.losses)
    ok = np.isfinite(losses)
    r = np.asarray(curve.rates)
    kept = usable(losses)
    sm = smooth(kept)
    rs = r[:len(kept)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(r[ok], losses[ok], color="tab:blue", alpha=0.25, linewidth=1, label="loss per step")
    ax.plot(rs, sm, color="tab:blue", linewidth=2, label="smoothed loss")
    ax.set_xscale("log")
    at = lambda rate: float(np.interp(np.log10(rate), np.log10(rs), sm))  # noqa: E731
    ax.axvline(s.rate, color="tab:red", linestyle="--")
    ax.plot([s.rate], [at(s.rate)], "o", color="tab:red", label=f"suggested {s.rate:.2g} ({s.rule})")
    ax.plot([s.minimum], [at(s.minimum)], "s", color="grey", label=f"minimum at {s.minimum:.2g}")
    top, low = min(float(sm[0]) * 1.5, float(np.max(losses[ok]))), float(np.min(losses[ok]))
    ax.set_ylim(max(0.0, low - 0.05 * (top - low)), top)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


@dataclass
class Result:
    phase: str
    curve: Curve
    suggestion: Suggestion
    weights: str             # what the weights were when the test began
    train_examples: int
    steps_per_pass: int


PHASES = ("transfer", "fine_tune")


def check_phase(t, phase: str) -> None:
    """A phase lr-find can test in this TrainConfig, else LrFindError naming the fix."""
    if phase not in PHASES:
        raise LrFindError(f"--phase: unknown phase '{phase}'; phases: {', '.join(PHASES)}")
    if phase == "fine_tune" and not (t.fine_tune.enabled and t.fine_tune.epochs):
        raise LrFindError(
            "--phase fine_tune: phase 2 is off in this config (train.fine_tune.enabled is "
            f"{str(t.fine_tune.enabled).lower()}, train.fine_tune.epochs is {t.fine_tune.epochs}), so it has no "
            "rate to find; use --phase transfer, or turn phase 2 on with --set train.fine_tune.enabled=true "
            "(and train.fine_tune.epochs above 0)")


def check_one_process() -> None:
    """LrFindError when TF_CONFIG names several workers: lr-find is one process, and
    MultiWorkerMirroredStrategy would wait for peers that never come."""
    from xfer.components import strategy as strategy_lib
    workers = strategy_lib.workers_named()
    if workers > 1:
        raise LrFindError(f"lr-find runs in one process, but TF_CONFIG names {workers} workers; run it "
                          "without TF_CONFIG (unset TF_CONFIG): the rate it finds for train.batch_size "
                          "holds for the same global batch on several workers")


def find(s, fn_args, phase: str, log: Callable[[str], None] = print, steps: int = MAX_STEPS) -> Result:
    """The range test for `phase` of the Trainer configured by `s` (TrainerSettings), on
    fn_args.train_files with the transform graph at fn_args.transform_graph_path.

    transfer: the base frozen, only the head learns, on cached base features when the
    Trainer would cache them. fine_tune: phase 1 first, for its configured epochs, as the
    Trainer runs it; then the top of the base unfrozen as the Trainer does, and the test."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from xfer.components import class_weights, keras_setup, labels, model as model_lib, resume  # noqa: F401
    from xfer.components import trainer

    check_phase(s.train, phase)
    check_one_process()
    # A throwaway copy: no epoch backups, no reports or TensorBoard logs, nothing exported.
    t = s.train.model_copy(update={"resume": False, "reports": False})
    tf.keras.utils.set_random_seed(t.seed)
    chosen = trainer._choose_strategy(t)
    try:
        tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
        names = labels.class_names(tft_output, s.labels_file, s.num_classes)
        weights = class_weights.for_training(t.class_weight, fn_args.train_files, names,
                                             labels.vocabulary(tft_output))
        run = trainer.Run.prepare(fn_args, t, chosen, tft_output, weights, num_classes=len(names))
        n_train, steps_per_pass = run._train_examples(), run.epoch_steps()
        needed = min_train_examples(t.batch_size)
        if n_train < needed:
            raise LrFindError(
                f"lr-find: the train split has {n_train} examples; a meaningful range test needs at "
                f"least {needed} ({math.ceil(MIN_STEPS / MAX_PASSES)} batches of train.batch_size "
                f"{t.batch_size}: at least {MIN_STEPS} steps, each on a batch, within {MAX_PASSES} passes "
                f"over the data). Add train examples, or test at a smaller batch with --set "
                f"train.batch_size={max(1, n_train // math.ceil(MIN_STEPS / MAX_PASSES))} (the rate found "
                f"then suits that batch size)")
        with chosen.strategy.scope():
            classifier, base = model_lib.build_model(s.model, len(names))
        source = f"model.weights ({s.model.weights})"
        if t.warm_start == "served":
            source += "; train.warm_start: served is not applied by lr-find"
        model_lib.freeze_base(base)
        base_variables, factor, cfg = (), 1.0, t.transfer
        if phase == "transfer":
            fit_model, train_ds, _ = trainer._phase1_inputs(run, classifier)
            weights_note = f"base frozen at {source}; the head as initialised"
        else:
            if t.transfer.epochs:
                fit_model, train_ds, eval_ds = trainer._phase1_inputs(run, classifier)
                h = trainer.run_phase(run, "transfer", t.transfer, resume.Phase(None, "transfer"),
                                      fit_model, train_ds, eval_ds)
                ran = len(next(iter(h.values()), []))
                head = (f"the head trained first as phase 1 ({ran} epoch(s) at train.transfer.learning_rate "
                        f"{t.transfer.learning_rate:g})")
            else:
                head = "the head as initialised (train.transfer.epochs is 0)"
            with chosen.strategy.scope():
                unfrozen = model_lib.unfreeze_top(base, t.fine_tune.from_layer, t.fine_tune.fraction)
            fit_model, train_ds = classifier, run.images("train", training=True)
            base_variables, factor, cfg = base.trainable_variables, t.fine_tune.base_lr_factor, t.fine_tune
            span = f"{unfrozen[0]} .. {unfrozen[-1]}" if unfrozen else "none"
            weights_note = f"base at {source}, {head}; then {len(unfrozen)} base layers unfrozen ({span})"
        log(f"[xfer] lr-find {phase}: {weights_note}")
        with chosen.strategy.scope():
            model_lib.compile_for(fit_model, cfg.optimizer, START_RATE, 1, label_smoothing=t.label_smoothing,
                                  soft_targets=run.mixer is not None, base_variables=base_variables,
                                  base_lr_factor=factor)
        steps = plan_steps(steps_per_pass, steps)
        log(f"[xfer] lr-find {phase}: {steps} steps of batch {t.batch_size} ({n_train} train examples), "
            f"{cfg.optimizer}, rate {START_RATE:g} .. {END_RATE:g}")
        curve = range_test(fit_model, train_ds.repeat(), steps, weights, log=log)
        log(f"[xfer] lr-find {phase}: {len(curve.rates)} steps in {curve.seconds:.1f}s; {curve.stopped}")
        return Result(phase, curve, suggest(curve.rates, curve.losses), weights_note, n_train, steps_per_pass)
    finally:
        # In-process: leave no global policy behind (as run_fn does).
        tf.keras.mixed_precision.set_global_policy("float32")

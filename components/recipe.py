"""The training recipe fastai and timm users expect (train.transfer/fine_tune.schedule and
warmup_epochs, fine_tune.base_lr_factor, train.label_smoothing, train.augment.mixup/cutmix).

- PhaseSchedule: a phase's learning rate per optimizer step (constant, cosine or one_cycle,
  after an optional linear warm-up). It reads the optimizer's `iterations`, which a fresh
  optimizer starts at 0 for each phase (phase 2 counts its own steps whatever its epoch
  numbers), and which BackupAndRestore saves and restores with the model, so a resumed
  phase continues its schedule where it stopped.
- Discriminative rates: the optimizer classes below use learning_rate x base_lr_factor for
  the base's variables and learning_rate for the head's, inside one optimizer (one set of
  slots, one `iterations`, mixed-precision loss scaling and strategies unchanged). The
  rate itself is scaled, not the gradient: Adam and RMSprop divide the gradient's scale
  away, so scaling gradients would change nothing for them.
- SoftTargetCrossentropy: cross-entropy on integer labels or soft (mixed) targets, with
  label smoothing; an accuracy that takes both.
- MixUp / CutMix on batches in the tf.data pipeline (timm's: the batch mixed with itself
  reversed; with both on, one of the two per batch at random).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import tensorflow as tf

from xfer.components.settings import AugmentConfig, FineTuneConfig, TransferConfig

ONE_CYCLE_DIV = 25.0         # fastai fit_one_cycle: starts at lr_max / div
ONE_CYCLE_DIV_FINAL = 1e5    # ... and ends at lr_max / div_final
ONE_CYCLE_PCT_START = 0.25   # ... rising over this part of the phase


# --- learning-rate schedule ------------------------------------------------------------

@tf.keras.utils.register_keras_serializable(package="xfer")
class PhaseSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of optimizer step `step` (0-based) of a phase of `total_steps`.

    constant / cosine: a linear warm-up lr * (step + 1) / warmup_steps over the first
    `warmup_steps` steps, then lr (constant) or lr * (1 + cos(pi * p)) / 2 with
    p = (step - warmup_steps) / (total_steps - warmup_steps) (cosine, from lr to ~0).
    one_cycle (fastai): cosine from lr/25 up to lr over `warmup_steps`, then cosine from lr
    down to lr/1e5 over the rest. Past the end the rate stays at its last value.
    """

    def __init__(self, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                 kind: str = "constant", name: Optional[str] = None):
        super().__init__()
        if kind not in ("constant", "cosine", "one_cycle"):
            raise ValueError(f"unknown schedule '{kind}'")
        self.learning_rate, self.total_steps = float(learning_rate), int(total_steps)
        self.warmup_steps, self.kind, self.name = int(warmup_steps), kind, name

    def __call__(self, step):
        lr = tf.constant(self.learning_rate, tf.float32)
        step = tf.cast(step, tf.float32)
        warm, total = float(self.warmup_steps), float(max(self.total_steps, 1))
        rest = max(total - warm, 1.0)
        p = tf.clip_by_value((step - warm) / rest, 0.0, 1.0)
        if self.kind == "one_cycle":
            start, end = lr / ONE_CYCLE_DIV, lr / ONE_CYCLE_DIV_FINAL
            up = tf.clip_by_value(step / max(warm, 1.0), 0.0, 1.0)
            rising = start + (lr - start) * (1.0 - tf.cos(math.pi * up)) / 2.0
            falling = end + (lr - end) * (1.0 + tf.cos(math.pi * p)) / 2.0
            return tf.where(step < warm, rising, falling)
        after = lr if self.kind == "constant" else lr * (1.0 + tf.cos(math.pi * p)) / 2.0
        if not self.warmup_steps:
            return after
        return tf.where(step < warm, lr * (step + 1.0) / warm, after)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "kind": self.kind, "name": self.name}


def warmup_steps(phase: Union[TransferConfig, FineTuneConfig], steps_per_epoch: int) -> int:
    """The phase's warm-up in optimizer steps (one_cycle without warmup_epochs: 25% of it)."""
    epochs = phase.warmup_epochs
    if phase.schedule == "one_cycle" and not epochs:
        epochs = ONE_CYCLE_PCT_START * phase.epochs
    return max(1, round(epochs * steps_per_epoch)) if epochs else 0


def needs_schedule(phase: Union[TransferConfig, FineTuneConfig]) -> bool:
    """False for the default (constant, no warm-up): the optimizer then takes the float rate."""
    return phase.schedule != "constant" or phase.warmup_epochs > 0


def learning_rate(phase: Union[TransferConfig, FineTuneConfig],
                  steps_per_epoch: Optional[int]) -> Union[float, PhaseSchedule]:
    if not needs_schedule(phase):
        return phase.learning_rate
    return PhaseSchedule(phase.learning_rate, phase.epochs * steps_per_epoch,
                         warmup_steps(phase, steps_per_epoch), phase.schedule)


# --- discriminative learning rates -----------------------------------------------------

class _BaseRate:
    """Mixed into a Keras optimizer: the variables set by `set_base_variables` are updated
    at learning_rate x base_lr_factor. The optimizer's own update_step reads
    `self.learning_rate` once per variable while it is traced, so the scale set around it
    is part of that variable's update: the same update as an optimizer of rate lr x factor
    (its slots do not depend on the rate for Adam and RMSprop, and scale with it for SGD
    momentum)."""

    def __init__(self, *args, base_lr_factor: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_lr_factor = float(base_lr_factor)
        self._base_keys = frozenset()

    def set_base_variables(self, variables) -> None:
        self._base_keys = frozenset(self._var_key(v) for v in variables)

    @property
    def learning_rate(self):
        lr = tf.keras.optimizers.Optimizer.learning_rate.fget(self)
        scale = getattr(self, "_lr_scale", None)
        return lr if scale is None else lr * tf.cast(scale, lr.dtype)

    @learning_rate.setter
    def learning_rate(self, value):
        tf.keras.optimizers.Optimizer.learning_rate.fset(self, value)

    def update_step(self, gradient, variable):
        if self._var_key(variable) not in self._base_keys:
            return super().update_step(gradient, variable)
        self._lr_scale = self.base_lr_factor
        try:
            return super().update_step(gradient, variable)
        finally:
            self._lr_scale = None

    def get_config(self):
        return {**super().get_config(), "base_lr_factor": self.base_lr_factor}


@tf.keras.utils.register_keras_serializable(package="xfer")
class DiscriminativeAdam(_BaseRate, tf.keras.optimizers.Adam):
    pass


@tf.keras.utils.register_keras_serializable(package="xfer")
class DiscriminativeRMSprop(_BaseRate, tf.keras.optimizers.RMSprop):
    pass


@tf.keras.utils.register_keras_serializable(package="xfer")
class DiscriminativeSGD(_BaseRate, tf.keras.optimizers.SGD):
    pass


DISCRIMINATIVE = {"adam": DiscriminativeAdam, "rmsprop": DiscriminativeRMSprop, "sgd": DiscriminativeSGD}


def discriminative_optimizer(name: str, learning_rate, base_variables, base_lr_factor: float):
    opt = DISCRIMINATIVE[name](learning_rate=learning_rate, base_lr_factor=base_lr_factor)
    opt.set_base_variables(base_variables)
    return opt


# --- soft targets -------------------------------------------------------------------------

@tf.keras.utils.register_keras_serializable(package="xfer")
class SoftTargetCrossentropy(tf.keras.losses.Loss):
    """Cross-entropy of predicted probabilities against integer labels (one-hot inside) or
    soft targets of shape [batch, K] (MixUp/CutMix), smoothed: t * (1 - e) + e / K."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0,
                 name: str = "soft_target_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.label_smoothing = int(num_classes), float(label_smoothing)

    def call(self, y_true, y_pred):
        target = soft_targets(y_true, self.num_classes, y_pred.dtype)
        if self.label_smoothing:
            target = target * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        return tf.keras.backend.categorical_crossentropy(target, y_pred)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "label_smoothing": self.label_smoothing}


def soft_targets(y_true, num_classes: int, dtype=tf.float32):
    """[batch, K] targets from integer labels ([batch] or [batch, 1]) or soft targets."""
    if y_true.dtype.is_integer:
        return tf.one_hot(tf.reshape(y_true, [-1]), num_classes, dtype=dtype)
    return tf.cast(y_true, dtype)


@tf.keras.utils.register_keras_serializable(package="xfer")
class SoftTargetAccuracy(tf.keras.metrics.SparseCategoricalAccuracy):
    """Sparse accuracy; a soft (mixed) target counts as its largest class."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        if y_true.dtype.is_floating and y_true.shape.rank == 2 and y_true.shape[-1] != 1:
            y_true = tf.argmax(y_true, axis=-1)
        return super().update_state(y_true, y_pred, sample_weight)


# --- MixUp and CutMix ---------------------------------------------------------------------

def sample_beta(alpha: float, seed) -> tf.Tensor:
    """Beta(alpha, alpha) from two stateless gammas."""
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    g1 = tf.random.stateless_gamma([], s1, alpha)
    g2 = tf.random.stateless_gamma([], s2, alpha)
    return tf.where(g1 + g2 > 0, g1 / tf.maximum(g1 + g2, 1e-12), 0.5)


def mixup(images, targets, lam):
    """timm's MixUp: each example blended with the batch reversed, targets likewise."""
    lam = tf.cast(lam, images.dtype)
    return (lam * images + (1.0 - lam) * tf.reverse(images, [0]),
            lam * targets + (1.0 - lam) * tf.reverse(targets, [0]))


def cut_box(height: int, width: int, lam, cy, cx):
    """timm's rand_bbox: a box of sides size * sqrt(1 - lam) centred at (cy, cx), clipped
    to the image: (y0, y1, x0, x1)."""
    ratio = tf.sqrt(1.0 - tf.cast(lam, tf.float32))
    ch = tf.cast(height * ratio, tf.int32)
    cw = tf.cast(width * ratio, tf.int32)
    y0, y1 = tf.clip_by_value(cy - ch // 2, 0, height), tf.clip_by_value(cy + ch // 2, 0, height)
    x0, x1 = tf.clip_by_value(cx - cw // 2, 0, width), tf.clip_by_value(cx + cw // 2, 0, width)
    return y0, y1, x0, x1


def cutmix(images, targets, lam, cy, cx):
    """timm's CutMix: the box of the reversed batch pasted into each image; the targets
    mixed by the box's actual area (lam corrected for clipping). Returns (images,
    targets, lam used)."""
    height, width = images.shape[1], images.shape[2]
    y0, y1, x0, x1 = cut_box(height, width, lam, cy, cx)
    rows, cols = tf.range(height), tf.range(width)
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    mask = tf.cast(inside, images.dtype)[None, :, :, None]
    mixed = images * (1.0 - mask) + tf.reverse(images, [0]) * mask
    area = tf.cast((y1 - y0) * (x1 - x0), tf.float32)
    lam_used = 1.0 - area / float(height * width)
    t = tf.cast(lam_used, targets.dtype)
    return mixed, t * targets + (1.0 - t) * tf.reverse(targets, [0]), lam_used


def mix_batch(images, labels, seed, aug: AugmentConfig, num_classes: int):
    """One batch of (images, integer labels) -> (mixed images, soft targets [batch, K])."""
    targets = tf.one_hot(tf.reshape(labels, [-1]), num_classes, dtype=tf.float32)
    s_switch, s_lam, s_y, s_x = tf.unstack(tf.random.experimental.stateless_split(seed, 4))

    def do_mixup():
        return mixup(images, targets, sample_beta(aug.mixup, s_lam))

    def do_cutmix():
        height, width = images.shape[1], images.shape[2]
        cy = tf.random.stateless_uniform([], s_y, 0, height, dtype=tf.int32)
        cx = tf.random.stateless_uniform([], s_x, 0, width, dtype=tf.int32)
        x, y, _ = cutmix(images, targets, sample_beta(aug.cutmix, s_lam), cy, cx)
        return x, y

    if aug.mixup and aug.cutmix:
        use_cutmix = tf.random.stateless_uniform([], s_switch) < 0.5
        return tf.cond(use_cutmix, do_cutmix, do_mixup)
    return do_cutmix() if aug.cutmix else do_mixup()


def mixer(aug: AugmentConfig, num_classes: int, seed: int) -> Optional[Callable[[tf.data.Dataset], tf.data.Dataset]]:
    """A dataset transformation mixing each batch, or None with mixup and cutmix off. Its
    random draws are seeded and differ every epoch (a new iteration of the dataset)."""
    if not aug.mixes():
        return None

    def apply(ds: tf.data.Dataset) -> tf.data.Dataset:
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        paired = tf.data.Dataset.zip((ds, draws))
        return paired.map(
            lambda xy, r: mix_batch(xy[0], xy[1], tf.stack([r, tf.constant(seed, tf.int64)]), aug, num_classes),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return apply


# --- export -------------------------------------------------------------------------------

def compiled_with_recipe(model: tf.keras.Model) -> bool:
    """Whether `model` is compiled with any of this module's classes (optimizer, schedule,
    loss): a SavedModel holding them loads with compile=True (as TFMA loads the candidate)
    only where this module was imported."""
    opt = getattr(model, "optimizer", None)
    opt = getattr(opt, "inner_optimizer", opt)  # mixed precision's LossScaleOptimizer
    return (isinstance(opt, _BaseRate) or isinstance(getattr(opt, "_learning_rate", None), PhaseSchedule)
            or isinstance(getattr(model, "loss", None), SoftTargetCrossentropy))


# --- the recipe line ----------------------------------------------------------------------

def _rate(lr: float) -> str:
    if lr >= 1e-3:
        return f"{lr:g}"
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def describe(name: str, phase: Union[TransferConfig, FineTuneConfig], label_smoothing: float,
             aug: AugmentConfig, steps_per_epoch: Optional[int] = None) -> str:
    """`fine_tune: adam 1e-4, cosine with 1 warm-up epoch, base layers x0.1, ...`"""
    sched = phase.schedule
    if phase.warmup_epochs:
        n = phase.warmup_epochs
        sched += f" with {n:g} warm-up epoch{'' if n == 1 else 's'}"
    elif phase.schedule == "one_cycle":
        sched += f" with {ONE_CYCLE_PCT_START:.0%} of the phase rising"
    if steps_per_epoch and needs_schedule(phase):
        sched += f" ({phase.epochs * steps_per_epoch} steps)"
    parts = [f"{phase.optimizer} {_rate(phase.learning_rate)}", sched]
    factor = getattr(phase, "base_lr_factor", 1.0)
    if factor != 1.0:
        parts.append(f"base layers x{factor:g}")
    if label_smoothing:
        parts.append(f"label smoothing {label_smoothing:g}")
    if aug.mixup:
        parts.append(f"mixup {aug.mixup:g}")
    if aug.cutmix:
        parts.append(f"cutmix {aug.cutmix:g}")
    if aug.shear:  # the unit said: ImageDataGenerator recipes of 2017 meant radians
        parts.append(f"shear up to {aug.shear:g} degrees")
    return f"[xfer] {name}: " + ", ".join(parts)

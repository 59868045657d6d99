"""The training recipe: learning-rate schedules per optimizer step, discriminative
rates in phase 2, label smoothing, MixUp and CutMix, their config errors, and one real
Trainer run with all of them."""
import json
import math
import os

import numpy as np
import pytest

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from xfer.components import keras_setup  # noqa: F401  (models are fit here, as in the Trainer)

from settings_helpers import small_model
from xfer.components import recipe
from xfer.components.model import compile_for, unfreeze_top
from xfer.components.settings import AugmentConfig, FineTuneConfig, TransferConfig
from xfer.pipeline.config import ConfigError, validate

# The Trainer run below uses the digits TFRecords and transform graph of the Trainer tests.
from test_trainer_run import data, fn_args, trainer_config  # noqa: F401  (data: a fixture)


def _tiny(classes=3, features=4, seed=0):
    tf.keras.utils.set_random_seed(seed)
    inp = tf.keras.Input((features,))
    out = tf.keras.layers.Dense(classes, activation="softmax", name="probabilities")(inp)
    return tf.keras.Model(inp, out)


class LearningRates(tf.keras.callbacks.Callback):
    """(optimizer step, learning rate the step used), read back from the optimizer."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        self.seen.append((int(opt.iterations.numpy()) - 1, float(opt.learning_rate.numpy())))


def _fit_steps(schedule, steps, epochs=1, callbacks=(), model=None, initial_epoch=0):
    model = model or _tiny()
    compile_for(model, "sgd", schedule)
    x = np.random.default_rng(1).normal(size=(steps * 2, 4)).astype(np.float32)
    y = np.arange(steps * 2) % 3
    rates = LearningRates()
    model.fit(x, y, batch_size=2, epochs=initial_epoch + epochs, initial_epoch=initial_epoch, verbose=0,
              shuffle=False, callbacks=[rates, *callbacks])
    return model, rates.seen


# --- schedules ---------------------------------------------------------------------------

def test_cosine_with_warmup_read_back_from_the_optimizer_after_real_steps():
    lr, total, warm = 0.1, 20, 4
    _, seen = _fit_steps(recipe.PhaseSchedule(lr, total, warm, "cosine"), steps=10, epochs=2)
    assert [s for s, _ in seen] == list(range(20))
    rate = dict(seen)
    # the linear ramp: lr * (step + 1) / warm, reaching lr on the warm-up's last step
    for step in range(warm):
        assert rate[step] == pytest.approx(lr * (step + 1) / warm, rel=1e-6)
    assert rate[warm] == pytest.approx(lr, rel=1e-6)
    # cosine midpoint: half-way through the steps after the warm-up, lr / 2
    assert rate[warm + (total - warm) // 2] == pytest.approx(lr / 2, rel=1e-5)
    # the end: lr * (1 + cos(pi * 15/16)) / 2, ~1% of lr
    assert rate[total - 1] == pytest.approx(lr * (1 + math.cos(math.pi * 15 / 16)) / 2, rel=1e-4)
    assert rate[total - 1] < 0.01 * lr
    assert all(a >= b for a, b in zip([rate[s] for s in range(warm, total)], [rate[s] for s in range(warm + 1, total)]))


def test_one_cycle_peaks_at_the_end_of_its_rise_25_percent_by_default():
    phase = FineTuneConfig(schedule="one_cycle", epochs=4, learning_rate=1e-3)
    schedule = recipe.learning_rate(phase, steps_per_epoch=10)
    assert (schedule.total_steps, schedule.warmup_steps, schedule.kind) == (40, 10, "one_cycle")
    rates = np.array([float(schedule(s)) for s in range(40)])
    assert int(np.argmax(rates)) == 10 and rates[10] == pytest.approx(1e-3, rel=1e-6)
    assert rates[0] == pytest.approx(1e-3 / 25, rel=1e-6)                         # fastai's div
    assert rates[5] == pytest.approx(1e-3 / 25 + (1e-3 - 1e-3 / 25) / 2, rel=1e-5)  # cosine rise midpoint
    assert rates[25] == pytest.approx((1e-3 + 1e-8) / 2, rel=1e-5)                 # cosine fall midpoint
    assert float(schedule(40)) == pytest.approx(1e-3 / 1e5, rel=1e-4)              # to lr / div_final
    assert np.all(np.diff(rates[:11]) > 0) and np.all(np.diff(rates[10:]) < 0)
    # warmup_epochs sets the rise instead of 25%; fractions of an epoch are steps
    assert recipe.learning_rate(phase.model_copy(update={"warmup_epochs": 0.5}), 10).warmup_steps == 5


def test_the_optimizer_takes_the_fit_steps_of_a_one_cycle_and_the_schedule_serializes():
    schedule = recipe.PhaseSchedule(0.05, 12, 3, "one_cycle")
    _, seen = _fit_steps(schedule, steps=12)
    for step, rate in seen:
        assert rate == pytest.approx(float(schedule(step)), rel=1e-6)
    assert max(seen, key=lambda s: s[1])[0] == 3
    again = tf.keras.optimizers.schedules.deserialize(tf.keras.optimizers.schedules.serialize(schedule))
    assert isinstance(again, recipe.PhaseSchedule) and again.get_config() == schedule.get_config()


def test_defaults_keep_a_float_rate_and_plain_sparse_training():
    assert recipe.learning_rate(TransferConfig(), 10) == 1e-3
    assert recipe.learning_rate(FineTuneConfig(), None) == 1e-5
    model = _tiny()
    compile_for(model, "adam", 1e-3)
    assert type(model.optimizer) is tf.keras.optimizers.Adam
    assert type(model.loss) is tf.keras.losses.SparseCategoricalCrossentropy
    assert type(model.compiled_metrics._user_metrics[0]) is tf.keras.metrics.SparseCategoricalAccuracy


def test_a_resumed_phase_continues_its_schedule_and_phase_2_counts_its_own_steps(tmp_path):
    """BackupAndRestore saves the optimizer's iterations with the model: a phase killed
    after 2 of 3 epochs resumes at step 2 x steps, at the rate the schedule has there;
    the phase's epochs are numbered after phase 1's (initial_epoch 5), its steps from 0."""
    steps, lr = 4, 0.1

    def schedule():
        return recipe.PhaseSchedule(lr, 3 * steps, 2, "cosine")

    class Killed(Exception):
        pass

    class KillAfter(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 6:  # the phase's 2nd epoch, after the backup of it
                raise Killed()

    backup = str(tmp_path / "state")
    with pytest.raises(Killed):
        _fit_steps(schedule(), steps, epochs=3, initial_epoch=5,
                   callbacks=[tf.keras.callbacks.BackupAndRestore(backup), KillAfter()])
    # the re-run: a new model and a new optimizer, as a re-run Trainer builds them
    model, seen = _fit_steps(schedule(), steps, epochs=3, initial_epoch=5,
                             callbacks=[tf.keras.callbacks.BackupAndRestore(backup)])
    assert [s for s, _ in seen] == list(range(2 * steps, 3 * steps)), seen
    for step, rate in seen:  # float32 in the fit graph vs eagerly here; neighbouring steps differ by >10%
        assert rate == pytest.approx(float(schedule()(step)), rel=1e-5)
    assert int(model.optimizer.iterations.numpy()) == 3 * steps
    # without a backup, phase 2 starts at its own step 0 whatever its epoch numbers
    _, fresh = _fit_steps(schedule(), steps, epochs=1, initial_epoch=5)
    assert fresh[0] == (0, pytest.approx(lr / 2, rel=1e-6))


# --- discriminative rates ----------------------------------------------------------------

def _phase2_model():
    """A small base (its top two layers unfrozen, as unfreeze_top does) under a head. A
    random-init backbone's gradients vanish (~1e-10) before they reach its top layers, too
    small to measure a step by; these are of order 1e-2."""
    tf.keras.utils.set_random_seed(7)
    inp = tf.keras.Input((8, 8, 3))
    base_out = tf.keras.layers.Conv2D(4, 3, activation="relu", name="b1")(inp)
    base_out = tf.keras.layers.Conv2D(6, 3, activation="relu", name="b2")(base_out)
    base_out = tf.keras.layers.Conv2D(6, 3, activation="tanh", name="b3")(base_out)
    base = tf.keras.Model(inp, base_out, name="base")
    x_in = tf.keras.Input((8, 8, 3))
    h = tf.keras.layers.GlobalAveragePooling2D(name="pool")(base(x_in, training=False))
    h = tf.keras.layers.Dense(8, activation="relu", name="head_dense_0")(h)
    model = tf.keras.Model(x_in, tf.keras.layers.Dense(3, activation="softmax", name="probabilities")(h))
    unfrozen = unfreeze_top(base, "b2", 1.0)
    assert unfrozen == ["b2", "b3"]
    x = np.random.default_rng(2).normal(size=(8, 8, 8, 3)).astype(np.float32)
    y = np.arange(8) % 3
    return model, base, x, y


def _one_step(optimizer, lr, factor):
    model, base, x, y = _phase2_model()
    base_ids = {id(v) for v in base.trainable_variables}
    assert base_ids and len(base_ids) < len(model.trainable_variables)
    compile_for(model, optimizer, lr, base_variables=base.trainable_variables, base_lr_factor=factor)
    with tf.GradientTape() as tape:
        loss = tf.keras.losses.SparseCategoricalCrossentropy()(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.train_on_batch(x, y)
    out = {"base": [], "head": []}
    for v, g, b in zip(model.trainable_variables, grads, before):
        out["base" if id(v) in base_ids else "head"].append((v.numpy() - b, g.numpy()))
    return out


def _flat(pairs):
    return np.concatenate([d.ravel() for d, _ in pairs]), np.concatenate([g.ravel() for _, g in pairs])


def test_sgd_base_layers_move_at_factor_times_the_rate_the_head_at_the_rate():
    lr, factor = 0.05, 0.1
    moved = _one_step("sgd", lr, factor)
    for part, rate in (("base", factor * lr), ("head", lr)):
        delta, grad = _flat(moved[part])
        assert np.linalg.norm(grad) > 0, part
        assert np.linalg.norm(delta) / np.linalg.norm(grad) == pytest.approx(rate, rel=1e-2), part
        np.testing.assert_allclose(delta, -rate * grad, atol=1e-3 * rate * np.abs(grad).max(), err_msg=part)


def _first_step(optimizer, rate, g):
    """Keras' first update of a weight with gradient g (slots at 0): Adam moves it by
    rate x sqrt(1 - b2) g / (sqrt(1 - b2) |g| + eps), i.e. ~rate x sign(g) whatever g's
    scale; RMSprop by rate x g / sqrt((1 - rho) g^2 + eps)."""
    if optimizer == "adam":
        return -rate * math.sqrt(1 - 0.999) * g / (math.sqrt(1 - 0.999) * np.abs(g) + 1e-7)
    return -rate * g / np.sqrt((1 - 0.9) * g**2 + 1e-7)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_adaptive_optimizers_scale_the_rate_not_the_gradient(optimizer):
    """Scaling the base's gradients would not slow Adam or RMSprop (they divide the scale
    away); the base's rate is scaled instead: each base weight moves by factor x lr x
    ~sign(g), each head weight by lr x ~sign(g)."""
    lr, factor = 1e-3, 0.1
    moved = _one_step(optimizer, lr, factor)
    for part, rate in (("base", factor * lr), ("head", lr)):
        delta, grad = _flat(moved[part])
        assert (np.abs(grad) > 1e-2).sum() > 10, part
        np.testing.assert_allclose(delta, _first_step(optimizer, rate, grad), rtol=2e-3, atol=1e-3 * rate,
                                   err_msg=part)
        if optimizer == "adam":  # where epsilon is negligible, the step is the rate itself
            clear = np.abs(grad) > 1e-2
            np.testing.assert_allclose(np.abs(delta[clear]), rate, rtol=2e-3, err_msg=part)


def test_factor_one_is_the_plain_optimizer():
    model, base, _, _ = _phase2_model()
    compile_for(model, "adam", 1e-4, base_variables=base.trainable_variables, base_lr_factor=1.0)
    assert type(model.optimizer) is tf.keras.optimizers.Adam


# --- label smoothing, MixUp, CutMix ------------------------------------------------------

def _ce(targets, probs):
    p = np.clip(probs / probs.sum(-1, keepdims=True), 1e-7, 1 - 1e-7)
    return -(targets * np.log(p)).sum(-1)


def test_label_smoothing_changes_the_loss_as_the_formula_says():
    model = _tiny(classes=3)
    x = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32) * 3
    y = np.array([0, 1, 2, 2, 1, 0])
    probs = model.predict(x, verbose=0)
    onehot = np.eye(3)[y]
    eps = 0.1
    compile_for(model, "adam", 1e-3, label_smoothing=eps)
    smoothed = model.evaluate(x, y, verbose=0, return_dict=True)
    expected = _ce(onehot * (1 - eps) + eps / 3, probs).mean()
    assert smoothed["loss"] == pytest.approx(expected, rel=1e-5)
    compile_for(model, "adam", 1e-3)
    plain = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert plain == pytest.approx(_ce(onehot, probs).mean(), rel=1e-5)
    assert abs(smoothed["loss"] - plain) > 1e-3
    assert smoothed["accuracy"] == pytest.approx((probs.argmax(-1) == y).mean())


def test_mixup_blends_the_batch_with_itself_reversed_and_the_loss_follows():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 4)).astype(np.float32) * 3
    y = np.array([0, 1, 2, 0, 0, 1])
    xm, tm = recipe.mix_batch(tf.constant(x), tf.constant(y, tf.int64), tf.constant([5, 6], tf.int64),
                              AugmentConfig(mixup=0.4), 3)
    xm, tm = xm.numpy(), tm.numpy()
    lam = tm[0, 0]  # y[0] = 0 and its partner y[5] = 1
    assert 0 < lam < 1 and not math.isclose(lam, 0.5)
    np.testing.assert_allclose(xm, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tm, lam * np.eye(3)[y] + (1 - lam) * np.eye(3)[y[::-1]], rtol=1e-5, atol=1e-6)
    # the loss on the mixed batch, smoothed: lam x CE(y) + (1 - lam) x CE(y reversed)
    model, eps = _tiny(classes=3), 0.1
    probs = model.predict(xm, verbose=0)
    compile_for(model, "adam", 1e-3, label_smoothing=eps, soft_targets=True)
    loss = model.evaluate(xm, tm, verbose=0, return_dict=True)["loss"]

    def smooth(t):
        return t * (1 - eps) + eps / 3

    expected = (lam * _ce(smooth(np.eye(3)[y]), probs) + (1 - lam) * _ce(smooth(np.eye(3)[y[::-1]]), probs)).mean()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_cutmix_box_area_matches_its_lambda():
    b, size = 4, 32
    x = np.stack([np.full((size, size, 3), i, np.float32) for i in range(b)])
    targets = tf.one_hot([0, 1, 2, 3], 4)
    # centred, not clipped: sides 32 x sqrt(1 - 0.75) = 16, area 1/4 = 1 - lam
    mixed, t, lam_used = recipe.cutmix(tf.constant(x), targets, 0.75, tf.constant(16), tf.constant(16))
    mixed = mixed.numpy()
    assert float(lam_used) == pytest.approx(0.75)
    pasted = mixed[0, :, :, 0] == 3  # image 0 took image 3's pixels inside the box
    assert pasted.sum() == 16 * 16 and pasted[8:24, 8:24].all()
    np.testing.assert_allclose(t.numpy()[0], [0.75, 0, 0, 0.25])
    # clipped at a corner: lam is corrected to the box's actual area
    mixed, t, lam_used = recipe.cutmix(tf.constant(x), targets, 0.75, tf.constant(0), tf.constant(0))
    area = (mixed.numpy()[1, :, :, 0] == 2).mean()
    assert area == pytest.approx(8 * 8 / size**2) and float(lam_used) == pytest.approx(1 - area)
    np.testing.assert_allclose(t.numpy()[1], [0, 1 - area, area, 0], rtol=1e-6)


def test_the_mixer_mixes_training_batches_differently_every_epoch_with_both_on():
    x = np.random.default_rng(5).normal(size=(32, 8, 8, 3)).astype(np.float32)
    y = np.arange(32) % 4
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int64))).batch(8)
    mixed = recipe.mixer(AugmentConfig(mixup=0.2, cutmix=1.0), 4, seed=3)(ds)
    epochs = [[t.numpy() for _, t in mixed] for _ in range(2)]
    for t in epochs[0]:
        assert t.shape == (8, 4) and np.allclose(t.sum(-1), 1)
    assert not all(np.allclose(a, b) for a, b in zip(*epochs))
    assert recipe.mixer(AugmentConfig(), 4, seed=3) is None


# --- config errors and the recipe line ---------------------------------------------------

@pytest.mark.parametrize("train, message", [
    ({"transfer": {"cache_features": "on"}, "augment": {"mixup": 0.2}},
     "transfer.cache_features is 'on' but train.augment.mixup is set"),
    ({"transfer": {"cache_features": True}, "augment": {"cutmix": 1.0}},
     "transfer.cache_features is 'on' but train.augment.cutmix is set"),
    ({"label_smoothing": 0.6}, "'train.label_smoothing': 0.6"),
    ({"fine_tune": {"base_lr_factor": 0}}, "'train.fine_tune.base_lr_factor': 0"),
    ({"fine_tune": {"base_lr_factor": 1.5}}, "'train.fine_tune.base_lr_factor': 1.5"),
    ({"transfer": {"schedule": "step"}}, "'train.transfer.schedule'"),
    ({"transfer": {"warmup_epochs": -1}}, "'train.transfer.warmup_epochs'"),
    ({"fine_tune": {"epochs": 2, "warmup_epochs": 3}}, "train.fine_tune: warmup_epochs \\(3\\) is longer"),
    ({"augment": {"mixup": -0.1}}, "'train.augment.mixup'"),
])
def test_bad_recipe_values_are_one_config_error_naming_the_key(train, message):
    with pytest.raises(ConfigError, match=message):
        validate({"data": {"builtin": "digits"}, "train": train})


def test_mixup_with_cache_auto_is_fine_and_trains_phase1_on_images():
    c = validate({"data": {"builtin": "digits"}, "train": {"augment": {"mixup": 0.2}}})
    assert c.train.transfer.cache_features == "auto" and not c.train.augment.any() and c.train.augment.mixes()
    assert c.trainer_settings("x").train.augment.mixup == 0.2  # reaches the Trainer (its cache key)


def test_the_recipe_line():
    phase = FineTuneConfig(optimizer="adam", learning_rate=1e-4, schedule="cosine", warmup_epochs=1,
                           base_lr_factor=0.1)
    assert recipe.describe("fine_tune", phase, 0.1, AugmentConfig(mixup=0.2)) == (
        "[xfer] fine_tune: adam 1e-4, cosine with 1 warm-up epoch, base layers x0.1, label smoothing 0.1, "
        "mixup 0.2")
    assert recipe.describe("transfer", TransferConfig(), 0.0, AugmentConfig()) == "[xfer] transfer: adam 0.001, constant"


# --- a real Trainer run ------------------------------------------------------------------

@pytest.mark.integration
def test_trainer_run_with_the_whole_recipe(data, tmp_path, capsys):  # noqa: F811
    from xfer.components.trainer import run_fn
    args = fn_args(data, tmp_path, trainer_config(
        data, label_smoothing=0.1, augment={"mixup": 0.2, "cutmix": 1.0},
        transfer={"epochs": 2, "learning_rate": 0.01, "schedule": "cosine", "warmup_epochs": 0.5},
        fine_tune={"enabled": True, "epochs": 1, "learning_rate": 1e-3, "fraction": 0.1,
                   "schedule": "one_cycle", "base_lr_factor": 0.1}))
    run_fn(args)
    out = capsys.readouterr().out
    # 96 train examples / batch 16 = 6 steps an epoch, counted from the records
    assert ("[xfer] transfer: adam 0.01, cosine with 0.5 warm-up epochs (12 steps), label smoothing 0.1, "
            "mixup 0.2, cutmix 1") in out, out
    assert ("[xfer] fine_tune: adam 0.001, one_cycle with 25% of the phase rising (6 steps), base layers x0.1, "
            "label smoothing 0.1, mixup 0.2, cutmix 1") in out, out
    assert "cached base features" not in out and "transfer done: 2 epochs" in out and "(on images)" in out, out
    assert "fine-tune epoch 3:" in out, out
    assert os.path.exists(os.path.join(args.serving_model_dir, "saved_model.pb"))
    history = json.load(open(os.path.join(args.model_run_dir, "history.json")))["history"]
    for phase in ("transfer", "fine_tune"):
        assert all(np.isfinite(history[phase]["loss"])) and all(np.isfinite(history[phase]["val_loss"]))
    model = tf.saved_model.load(args.serving_model_dir)
    png = data["splits"]["eval"][0][1]
    probs = model.signatures["serving_default"](images=tf.constant([png]))["probabilities"].numpy()
    assert probs.shape == (1, 10) and abs(probs.sum() - 1) < 1e-4
    # TFMA loads the candidate with compile=True in processes that never import xfer: the
    # exported training config names only Keras' own classes
    metadata = open(os.path.join(args.serving_model_dir, "keras_metadata.pb"), "rb").read()
    assert b"xfer>" not in metadata and b"SparseCategoricalCrossentropy" in metadata


def test_discriminative_rates_and_a_schedule_under_mixed_float16_loss_scaling():
    """On GPU the Trainer's policy is mixed_float16: Keras wraps the optimizer in a
    LossScaleOptimizer, which hands the unscaled gradients to ours. The same step at
    factor 0.1 and 1: the base moves a tenth as far, the head as far."""
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        moved = {}
        for factor in (0.1, 1.0):
            model, base, x, y = _phase2_model()
            compile_for(model, "sgd", recipe.PhaseSchedule(0.05, 4, 0, "cosine"), label_smoothing=0.1,
                        base_variables=base.trainable_variables, base_lr_factor=factor)
            assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
            assert recipe.compiled_with_recipe(model)
            base_ids = {id(v) for v in base.trainable_variables}
            before = {id(v): v.numpy().copy() for v in model.trainable_variables}
            model.fit(x, y, batch_size=8, epochs=1, verbose=0)
            assert int(model.optimizer.iterations.numpy()) == 1
            moved[factor] = {part: np.concatenate([(v.numpy() - before[id(v)]).ravel()
                                                   for v in model.trainable_variables
                                                   if (id(v) in base_ids) == (part == "base")])
                             for part in ("base", "head")}
        assert np.linalg.norm(moved[1.0]["base"]) > 0
        np.testing.assert_allclose(moved[0.1]["base"], 0.1 * moved[1.0]["base"], rtol=1e-3,
                                   atol=1e-3 * np.abs(moved[1.0]["base"]).max())
        np.testing.assert_allclose(moved[0.1]["head"], moved[1.0]["head"], rtol=1e-5, atol=1e-9)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")

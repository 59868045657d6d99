"""xfer lr-find: the suggestion rule on synthetic loss curves, the bad inputs, and the
proof that matters: the suggested rate, used on the digits with VGG16 from random init, trains
to at least the accuracy the demo reaches with its hand-picked rate."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import CONFIGS, xfer
from xfer.components import lr_find


NOISE = 0.05  # eval accuracy after one fine-tune epoch: run-to-run spread of one config, measured


def synthetic(rates, steep_at, bottom_at, seed=0, noise=0.03):
    """A range test's loss: flat at chance (2.3), a fall centred at `steep_at` (a logistic in
    log10(rate)), flat near 0.4, then divergence past `bottom_at`."""
    x = np.log10(rates)
    fall = 2.3 - 1.9 / (1 + np.exp(-(x - np.log10(steep_at)) * 4))
    blow = np.where(x > np.log10(bottom_at), 10 ** (2 * (x - np.log10(bottom_at))) - 1, 0.0)
    return fall + blow + np.random.default_rng(seed).normal(0, noise, len(rates))


def test_suggestion_is_the_steepest_descent_of_the_smoothed_loss():
    r = lr_find.rates(100)
    for steep in (1e-5, 3e-4, 1e-3):
        s = lr_find.suggest(r, synthetic(r, steep, bottom_at=steep * 300))
        assert abs(np.log10(s.steepest / steep)) < 0.25, (steep, s)
        assert s.rate == s.steepest and s.rule == "steepest descent of the smoothed loss"
        assert steep * 30 < s.minimum <= steep * 600, s  # the minimum is on the floor, before divergence
        assert s.minimum_over_10 == pytest.approx(s.minimum / 10)


def test_noise_alone_does_not_move_the_suggestion_far():
    r = lr_find.rates(100)
    found = [lr_find.suggest(r, synthetic(r, 1e-3, 1e-1, seed=k, noise=0.15)).rate for k in range(10)]
    assert all(abs(np.log10(f / 1e-3)) < 0.5 for f in found), found


def test_a_steep_point_close_to_divergence_is_capped_at_the_minimum_over_3():
    r = lr_find.rates(100)
    # falls until 1e-2, then diverges at once: the steepest point is near the minimum
    s = lr_find.suggest(r, synthetic(r, 1e-2, bottom_at=1.5e-2, noise=0.0))
    assert s.rate == pytest.approx(s.minimum / lr_find.SAFETY) and s.rate < s.steepest
    assert s.rule.startswith("minimum/3")


def test_a_loss_that_never_falls_gives_no_suggestion():
    r = lr_find.rates(60)
    rising = 2.3 + np.linspace(0, 3, 60) ** 2
    with pytest.raises(lr_find.LrFindError, match="the loss never fell"):
        lr_find.suggest(r, rising)


def test_points_after_a_nan_are_ignored():
    r = lr_find.rates(100)
    loss = synthetic(r, 1e-3, 1e-1)
    loss[80:] = np.nan
    assert abs(np.log10(lr_find.suggest(r, loss).rate / 1e-3)) < 0.25


def test_smoothing_has_no_lag():
    step = np.r_[np.full(50, 2.0), np.full(50, 1.0)]
    s = lr_find.smooth(step)
    assert s[49] - 1.5 == pytest.approx(-(s[50] - 1.5), abs=1e-4)  # symmetric about the step
    assert lr_find.causal_smooth(step)[50] > 1.7  # a causal average still lags


def test_steps_and_the_examples_needed():
    assert lr_find.plan_steps(45) == 100 and lr_find.plan_steps(10) == 30
    assert lr_find.plan_steps(45, 50) == 50 and lr_find.plan_steps(10, 50) == 30  # --steps 50
    assert lr_find.min_train_examples(32) == 224
    r = lr_find.rates(100)
    assert r[0] == pytest.approx(1e-7) and r[-1] == pytest.approx(10.0)
    assert np.allclose(np.diff(np.log10(r)), 8 / 99)


def test_unknown_phase_and_phase_2_off_are_one_clear_error_each(tmp_path):
    p = xfer("lr-find", "--config", "demo", "--set", f"root={tmp_path}", "--phase", "head", check=False)
    assert p.returncode == 2 and "argument --phase: invalid choice: 'head'" in p.stderr, p.stderr
    p = xfer("lr-find", "--config", "demo", "--set", f"root={tmp_path}", "--phase", "fine-tune",
             "--set", "train.fine_tune.enabled=false", check=False)
    assert p.returncode == 2, p.stderr
    assert ("--phase fine_tune: phase 2 is off in this config (train.fine_tune.enabled is false, "
            "train.fine_tune.epochs is 3), so it has no rate to find; use --phase transfer, or turn phase 2 "
            "on with --set train.fine_tune.enabled=true") in p.stderr, p.stderr
    assert not (tmp_path / "metadata.sqlite").exists()  # refused before any step
    for bad in ("5", "1001", "many", "-50"):
        p = xfer("lr-find", "--config", "demo", "--set", f"root={tmp_path}", "--steps", bad, check=False)
        assert p.returncode == 2, p.stderr
        assert (f"argument --steps: {bad!r}: give a whole number of steps from 20 (fewer points make no curve) "
                "to 1000, e.g. --steps 50") in p.stderr, p.stderr
    assert not (tmp_path / "metadata.sqlite").exists()


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_too_few_train_examples_names_how_many_are_needed(tmp_path, cifar):
    p = xfer("lr-find", "--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={tmp_path}",
             "--set", f"data.input_base={cifar}", "--set", f"data.labels_file={cifar / 'labels.txt'}",
             "--set", "train.batch_size=32", check=False)
    assert p.returncode == 2, p.stdout[-3000:] + p.stderr
    assert ("lr-find: the train split has 128 examples; a meaningful range test needs at least 224 "
            "(7 batches of train.batch_size 32") in p.stderr, p.stderr
    assert "--set train.batch_size=18" in p.stderr
    assert not (tmp_path / "reports" / "lr_find").exists()


def _train(root, found, overrides, out):
    """The Trainer's run_fn on the pipeline's own examples and transform graph; the last
    epoch's validation accuracy on the eval split."""
    from tfx.components.trainer.fn_args_utils import FnArgs

    from xfer.components.trainer import run_fn
    from xfer.pipeline.config import load_config

    cfg = load_config("demo", [f"root={root}", "train.reports=false", "train.resume=false", *overrides])
    uri = found["examples"]
    run_fn(FnArgs(train_files=[f"{uri}/Split-train/*"], eval_files=[f"{uri}/Split-eval/*"],
                  transform_graph_path=found["transform_graph"], serving_model_dir=str(out / "serving"),
                  model_run_dir=str(out / "run"), custom_config=cfg.trainer_settings("test").model_dump(mode="json")))
    return json.loads((out / "run" / "history.json").read_text())["history"]["fine_tune"]["val_accuracy"][-1]


@pytest.mark.integration
@pytest.mark.timeout(2400)
def test_the_suggested_rate_trains_vgg16_on_digits_at_least_as_well_as_the_demos(tmp_path):
    """The demo (digits, VGG16 from random init, 32 px; phase 1 one epoch, then the whole base
    fine-tuned at the hand-picked 1e-4), with fine-tuning cut to 1 epoch for time: lr-find's
    fine_tune suggestion must reach the hand-picked rate's eval accuracy, judged beyond the
    run-to-run spread of one epoch (NOISE), and clearly learn (above 0.5)."""
    from xfer.pipeline.lr_find import trainer_inputs
    from xfer.pipeline.store import find_run, open_store

    root = tmp_path / "root"
    small = ["--set", "train.fine_tune.epochs=1"]
    out = xfer("lr-find", "--config", "demo", "--set", f"root={root}", *small, "--phase", "fine_tune").stdout
    print(out[-1500:])
    rate = float(re.search(r"suggested train\.fine_tune\.learning_rate: ([0-9.e+-]+) \(", out).group(1))
    assert f"use it: xfer run --config demo --set train.fine_tune.learning_rate={rate:.2g}" in out
    assert "the head trained first as phase 1 (1 epoch(s)" in out and "13 base layers unfrozen" in out
    (folder,) = (root / "reports" / "lr_find").iterdir()
    points = json.loads((folder / "lr_find.json").read_text())
    assert points["suggestion"]["rate"] == pytest.approx(rate, rel=0.05)
    assert 20 <= len(points["rates"]) <= 100 and points["rates"][0] == pytest.approx(1e-7)
    assert "lr-find fine_tune: 100 steps of batch 32" in out, out
    with Image.open(folder / "lr_find.png") as img:
        assert img.format == "PNG" and img.size[0] > 300
    # A throwaway model: the steps up to Transform ran, nothing of a Trainer was left behind.
    steps = {p.name for p in (root / "pipeline_root").iterdir()}
    assert "Trainer" not in steps and "Transform" in steps, steps
    assert not (root / "serving").exists()

    metadata = str(root / "metadata.sqlite")
    found = trainer_inputs(metadata, "xfer-demo", find_run(open_store(metadata), "xfer-demo").name)
    hand = _train(root, found, ["train.fine_tune.epochs=1"], tmp_path / "hand")
    suggested = _train(root, found, ["train.fine_tune.epochs=1", f"train.fine_tune.learning_rate={rate}"],
                       tmp_path / "suggested")
    print(f"eval accuracy after 1 fine-tune epoch: hand-picked 1e-4 {hand:.4f}, suggested {rate:.2g} "
          f"{suggested:.4f}")
    # One epoch of the same config differs between runs here by up to 0.04 (CPU threads sum in
    # varying order): the hand-picked rate gave 0.798 and 0.836 on 2026-11-26/27. So "at least as
    # well" is judged beyond that noise, and the suggestion must clearly learn.
    assert suggested > 0.5 and suggested >= hand - NOISE, (rate, suggested, hand)

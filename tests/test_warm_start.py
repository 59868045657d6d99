"""train.warm_start: served, on real Keras models saved as the Trainer saves them."""
import numpy as np
import pytest

import xfer.components  # noqa: F401
import tensorflow as tf

from settings_helpers import small_model
from xfer.components.labels import write_labels_file
from xfer.components.model import build_model
from xfer.components.warm_start import warm_start

NAMES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tf.keras.utils.set_random_seed(3)
    model, _ = build_model(small_model(head={"dense": [16]}), len(NAMES))
    model.weights[-1].assign([0.5, -1.0, 2.0])  # a head bias no fresh model has
    folder = tmp_path_factory.mktemp("served") / "7"
    model.save(str(folder), save_format="tf")
    (folder / "assets.extra").mkdir()
    write_labels_file(str(folder / "assets.extra" / "labels.txt"), NAMES)
    return folder, model


def test_starts_from_every_served_weight_head_included(served):
    folder, model = served
    tf.keras.utils.set_random_seed(99)
    fresh, _ = build_model(small_model(head={"dense": [16]}), len(NAMES))
    assert not np.allclose(fresh.weights[-1].numpy(), model.weights[-1].numpy())
    started, line = warm_start(fresh, str(folder), NAMES, "model.weights (none)")
    assert started and line.startswith("[xfer] warm start (train.warm_start: served): starting from the "
                                       "served model's weights, head included"), line
    for a, b in zip(fresh.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = tf.random.uniform([2, 32, 32, 3], 0, 255)
    np.testing.assert_allclose(fresh(x).numpy(), model(x).numpy(), atol=1e-6)


def test_a_changed_class_list_falls_back_naming_both_lists(served):
    folder, _ = served
    other, _ = build_model(small_model(head={"dense": [16]}), 3)
    before = [w.numpy() for w in other.weights]
    started, line = warm_start(other, str(folder), ["cat", "dog", "eel"], "model.weights (imagenet)")
    assert not started
    assert line == ("[xfer] warm start (train.warm_start: served): the class list changed (served: cat, dog, "
                    "owl; this run: cat, dog, eel); starting from model.weights (imagenet)")
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, other.weights))


def test_a_changed_head_falls_back_naming_the_weight(served):
    folder, _ = served
    wider, _ = build_model(small_model(head={"dense": [32]}), len(NAMES))
    started, line = warm_start(wider, str(folder), NAMES, "model.weights (none)")
    assert not started and "the model changed (backbone, image size or head): weight '" in line, line
    assert "is (" in line and "starting from model.weights (none)" in line


def test_nothing_served_yet(tmp_path):
    model, _ = build_model(small_model(), len(NAMES))
    started, line = warm_start(model, str(tmp_path / "empty"), NAMES, "model.weights (none)")
    assert not started and line.endswith("no model served yet; starting from model.weights (none)")
    assert warm_start(model, None, NAMES, "x")[0] is False


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_run_two_warm_starts_where_run_one_ended(tmp_path):
    """The demo (digits, VGG16 from random init): run 1 (cold) trains and pushes; run 2
    with warm_start: served begins where run 1 ended: its first epoch's loss is well below
    run 1's first epoch on the same data. A changed head then falls back, with its reason
    (a changed class list: test_a_changed_class_list_falls_back_naming_both_lists)."""
    import re

    from conftest import xfer

    config = ["--config", "demo", "--set", f"root={tmp_path / 'root'}"]

    def first_epoch_loss(out):
        return float(re.search(r"\[xfer\] transfer epoch 1: .*?\bloss=([0-9.]+)", out).group(1))

    # One fine-tune epoch (the demo runs 3) leaves a model far from random init, which is all
    # this needs; eval.min_accuracy=0 so that model is pushed whatever it scores.
    cold = xfer("run", *config, "--set", "train.fine_tune.epochs=1", "--set", "eval.min_accuracy=0").stdout
    assert "pushed to:" in cold, cold
    # Phase 1 alone is enough to read its first epoch's loss.
    warm = xfer("run", *config, "--set", "train.warm_start=served", "--set", "train.fine_tune.enabled=false",
                "--to", "Trainer").stdout
    assert "warm start (train.warm_start: served): starting from the served model's weights" in warm, warm
    cold_loss, warm_loss = first_epoch_loss(cold), first_epoch_loss(warm)
    print(f"first-epoch train loss: cold {cold_loss:.4f}, warm {warm_loss:.4f}")
    assert warm_loss < 0.5 * cold_loss, (cold_loss, warm_loss)
    changed = xfer("run", *config, "--set", "train.warm_start=served", "--set", "model.head.dense=[128]",
                   "--set", "train.fine_tune.enabled=false", "--to", "Trainer").stdout
    assert "the model changed (backbone, image size or head): weight '" in changed, changed
    assert "starting from model.weights (none)" in changed

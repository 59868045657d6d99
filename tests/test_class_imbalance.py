"""train.class_weight on a deliberately imbalanced train split, end to end.

The embedded digits (real scans), with one class cut to ~5% of its train examples and
the eval split left whole. Two runs of the whole pipeline in one root, same seed, only
train.class_weight changed: `none`, then `balanced`. The second run's Evaluator judges
the balanced model against the served unweighted one, and the blessing report shows
both recalls per true class; the rare class's recall must be higher with `balanced`.
"""
import re

import pytest

import xfer.components  # noqa: F401
import tensorflow as tf

from conftest import CONFIGS, xfer
from xfer.pipeline.data.digits import _split_of, digits_pngs
from xfer.pipeline.data.records import image_example
from xfer.pipeline.store import find_run, open_store
from xfer.pipeline.summary import summarize

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]
NAME = "xfer-digits-test"
RARE = 0
KEEP = 7  # of about 145 train examples of the rare class (~5%)


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    data = tmp_path_factory.mktemp("imbalanced-digits")
    kept = {"train": {}, "eval": {}}
    writers = {}
    for split in ("train", "eval"):
        (data / split).mkdir()
        writers[split] = tf.io.TFRecordWriter(str(data / split / "digits.tfrecord"))
    for ident, png, label in digits_pngs():
        split = _split_of(ident)
        if split == "train" and label == RARE and kept["train"].get(label, 0) >= KEEP:
            continue
        kept[split][label] = kept[split].get(label, 0) + 1
        writers[split].write(image_example(png, label, id=ident))
    for w in writers.values():
        w.close()
    return data, kept


@pytest.fixture(scope="module")
def runs(imbalanced, tmp_path_factory):
    data, _ = imbalanced
    root = tmp_path_factory.mktemp("imbalanced-run")
    config = ["--config", str(CONFIGS / "digits_learn.yaml"), "--set", f"root={root}",
              "--set", "data.builtin=null", "--set", f"data.input_base={data}",
              "--set", "data.num_classes=10", "--set", "eval.max_drop=1.0",
              # Phase 1 on cached features of the frozen (random) VGG16, long enough for the
              # head to settle; one short phase 2 epoch on images.
              "--set", "train.transfer={epochs: 40, learning_rate: 0.001}",
              "--set", "train.fine_tune={epochs: 1, learning_rate: 0.00001, from_layer: block5_conv1}"]
    out, summaries = {}, {}
    for weighting in ("none", "balanced"):
        out[weighting] = xfer("run", *config, "--set", f"train.class_weight={weighting}").stdout
        store = str(root / "metadata.sqlite")
        summaries[weighting] = summarize(store, NAME, find_run(open_store(store), NAME).name)
    return out, summaries


def recall(summary, label):
    return next(c for c in summary.blessing.per_class if c.label == label)


def test_the_rare_class_is_recalled_better_with_balanced_weights(imbalanced, runs):
    _, kept = imbalanced
    out, summaries = runs
    assert kept["train"][RARE] == KEEP and min(n for c, n in kept["train"].items() if c != RARE) > 100
    n_train = sum(kept["train"].values())
    weight = n_train / (10 * KEEP)
    assert "[xfer] class weights" not in out["none"]
    assert f"(train.class_weight: balanced): {RARE}={weight:.2f}, " in out["balanced"], out["balanced"]
    # Only the Trainer and what follows it re-ran: the data steps came from the cache.
    assert summaries["balanced"].states["Transform"] == "cached"
    assert summaries["balanced"].states["Trainer"] == "executed"

    plain, weighted = recall(summaries["none"], RARE), recall(summaries["balanced"], RARE)
    assert plain.examples == weighted.examples == kept["eval"][RARE]
    # The second run's baseline is the first run's model (served as version 1).
    assert weighted.baseline == pytest.approx(plain.candidate)
    print(f"rare class {RARE} recall: none {plain.candidate:.4f}, balanced {weighted.candidate:.4f}; "
          f"overall accuracy: none {summaries['none'].blessing.candidate:.4f}, "
          f"balanced {summaries['balanced'].blessing.candidate:.4f}")
    assert summaries["none"].blessing.candidate > 0.5, "the model must really learn, or this is noise"
    assert weighted.candidate >= plain.candidate + 0.5, (plain, weighted)

    # The report the user reads: that class's row, balanced beside the served model's recall.
    row = next(line for line in out["balanced"].splitlines() if re.match(rf"^  {RARE}\s+\d+\s+\d\.\d{{4}}", line))
    assert row.split()[:4] == [str(RARE), str(kept["eval"][RARE]), f"{weighted.candidate:.4f}",
                               f"{plain.candidate:.4f}"], row

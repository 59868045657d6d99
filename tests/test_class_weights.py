"""train.class_weight: balanced weights from DataCheck's label counts (integer and string
labels), the refusal of a class the train split lacks, and the setting's way to the Trainer."""
import json

import numpy as np
import pytest

from settings_helpers import make_config
from xfer.components import class_weights
from xfer.components.class_weights import ClassWeightError, balanced
from xfer.pipeline.config import ConfigError, load_config
# The real digit scans and transform graph of the Trainer's own tests.
from test_trainer_run import _example, data, fn_args, head_weights, trainer_config  # noqa: F401


def test_integer_labels_get_scikit_learns_balanced_weights():
    from sklearn.utils.class_weight import compute_class_weight

    counts = {"0": 30, "1": 10, "2": 20}
    w = balanced(counts, ["cat", "dog", "bird"])
    assert w == pytest.approx({0: 60 / 90, 1: 60 / 30, 2: 60 / 60})
    y = np.repeat([0, 1, 2], [30, 10, 20])
    assert [w[i] for i in range(3)] == pytest.approx(list(compute_class_weight("balanced", classes=np.arange(3), y=y)))
    assert class_weights.describe(w, ["cat", "dog", "bird"]) == "cat=0.67, dog=2.00, bird=1.00"


def test_string_labels_map_through_transforms_vocabulary():
    # The vocabulary is in frequency order, not the order the counts are listed in.
    vocabulary = ["dog", "cat", "bird"]
    w = balanced({"bird": 5, "cat": 15, "dog": 40}, vocabulary, vocabulary)
    assert w == pytest.approx({0: 60 / (3 * 40), 1: 60 / (3 * 15), 2: 60 / (3 * 5)})
    assert class_weights.describe(w, vocabulary) == "dog=0.50, cat=1.33, bird=4.00"


def test_a_class_without_train_examples_is_refused_naming_it_and_the_fix():
    with pytest.raises(ClassWeightError) as e:
        balanced({"0": 12, "2": 7}, ["cat", "dog", "bird"])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("train.class_weight is balanced but class 1 'dog' has no example in the train "
                          "split: a model cannot learn a class it never sees."), msg
    assert "Add train examples of it, or drop it from the classes (data.labels_file" in msg
    with pytest.raises(ClassWeightError, match=r"classes 0, 3 have no example"):
        balanced({"1": 3, "2": 4}, ["0", "1", "2", "3"])


def test_counts_are_read_beside_the_train_split(tmp_path):
    uri = tmp_path / "DataCheck" / "checked_examples" / "7"
    (uri / "Split-train").mkdir(parents=True)
    (uri / "label_counts.json").write_text(json.dumps({"eval": {"0": 1, "1": 1}, "train": {"0": 6, "1": 2}}))
    files = [str(uri / "Split-train" / "*")]
    assert class_weights.for_training("none", files, ["a", "b"], None) is None
    assert class_weights.for_training("balanced", files, ["a", "b"], None) == pytest.approx({0: 8 / 12, 1: 8 / 4})
    with pytest.raises(ClassWeightError, match=r"DataCheck's label counts \(.*/other/label_counts.json\) "
                                               r"cannot be read .* or set train.class_weight: none"):
        class_weights.for_training("balanced", [str(tmp_path / "other" / "Split-train" / "*")], ["a", "b"], None)


def test_setting_defaults_to_none_reaches_the_trainer_and_its_cache_key():
    assert make_config().train.class_weight == "none"
    plain = make_config().trainer_settings("x").model_dump(mode="json")
    weighted = make_config(train={"class_weight": "balanced"}).trainer_settings("x").model_dump(mode="json")
    assert weighted["train"]["class_weight"] == "balanced" and plain != weighted
    assert load_config("demo", ["train.class_weight=balanced"]).train.class_weight == "balanced"


def test_bad_value_names_the_key_and_the_choices():
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["train.class_weight=inverse"])
    msg = str(e.value)
    assert "'train.class_weight'" in msg and "'inverse'" in msg and "'none' or 'balanced'" in msg, msg


@pytest.mark.integration
def test_balanced_weights_apply_to_phase1_on_cached_features_and_on_images(data, tmp_path, capsys):
    """The real run_fn on digit scans laid out as DataCheck writes them (Split-*, and
    label_counts.json beside them), class 0 cut to 2 train examples. Cached and uncached
    phase 1 fit different datasets (features vs images): both must weight the loss, so
    with the same weights they end at the same head, and without weights elsewhere."""
    import tensorflow as tf
    from xfer.components.trainer import run_fn

    checked = tmp_path / "checked"
    kept = [(png, label) for i, (_, png, label) in enumerate(data["splits"]["train"])
            if label != 0 or i < 20]
    kept_zeros = sum(1 for _, label in kept if label == 0)
    assert kept_zeros == 2, kept_zeros
    for split, items in (("train", kept), ("eval", [(p, lb) for _, p, lb in data["splits"]["eval"]])):
        (checked / f"Split-{split}").mkdir(parents=True)
        with tf.io.TFRecordWriter(str(checked / f"Split-{split}" / "data.gz"), options="GZIP") as w:
            for png, label in items:
                w.write(_example(png, label))
    counts = {split: {} for split in ("train", "eval")}
    for label in [lb for _, lb in kept]:
        counts["train"][str(label)] = counts["train"].get(str(label), 0) + 1
    (checked / "label_counts.json").write_text(json.dumps(counts))
    layout = {**data, "train": [str(checked / "Split-train" / "*")], "eval": [str(checked / "Split-eval" / "*")]}

    runs = {"on-balanced": ("on", "balanced"), "off-balanced": ("off", "balanced"), "on-none": ("on", "none")}
    for name, (cache, weighting) in runs.items():
        run_fn(fn_args(layout, tmp_path / name, trainer_config(
            layout, class_weight=weighting, transfer={"epochs": 3, "learning_rate": 0.05, "optimizer": "sgd",
                                                      "cache_features": cache})))
    out = capsys.readouterr().out
    expected = balanced(counts["train"], [str(i) for i in range(10)])
    assert expected[0] == pytest.approx(len(kept) / (10 * 2))
    line = "[xfer] class weights (train.class_weight: balanced): " + class_weights.describe(
        expected, [str(i) for i in range(10)])
    assert out.count(line) == 2 and f"0={len(kept) / 20:.2f}" in line, out
    assert out.count(f"transfer: cached base features of {len(kept)} train") == 2, out
    heads = {name: head_weights(str(tmp_path / name / "serving" / "1"))[0] for name in runs}
    for w in heads["on-balanced"]:
        np.testing.assert_allclose(heads["on-balanced"][w], heads["off-balanced"][w], atol=1e-5, err_msg=w)
    assert max(float(np.abs(heads["on-balanced"][w] - heads["on-none"][w]).max()) for w in heads["on-none"]) > 1e-3

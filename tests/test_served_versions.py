"""Served versions that are damaged or foreign, on real pushed exports: the ServedBaseline
and WarmStartModel executors pass a damaged newest version over to the newest one that
loads (naming it and why), stop on a foreign SavedModel (naming the version and the fix),
and ServedBaseline hands on no baseline of other classes; folders named with Unicode
digits are no versions, for the Pusher or anyone."""
import io
import os
import shutil

import numpy as np
import pytest

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from PIL import Image
from tfx.types import standard_artifacts

from settings_helpers import small_model, transform_graph
from xfer.components import export, pusher
from xfer.components.baseline import (SERVED_NOTE, SERVED_PATH, SERVED_VERSION, SERVING_DIR, ServedBaseline,
                                      WarmStartModel, has_baseline)
from xfer.components.labels import write_labels_file
from xfer.components.model import build_model
from xfer.components.served_versions import ForeignServedVersion
from xfer.components.warm_start import warm_start

SIZE = 32
NAMES = ["cat", "dog", "owl"]


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def model_config():
    return small_model("vgg16", image_size=SIZE, head={"dense": [8]})


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A Trainer-like output (Format-Serving exported as the Trainer exports it: the
    signatures with a real transform graph, labels.txt, serving.json), pushed twice by
    the real push_version as versions 1 and 2."""
    root = tmp_path_factory.mktemp("served-versions")
    tft_output = transform_graph(root, [{"image": png(i), "label": i % 3} for i in range(4)], SIZE)
    tf.keras.utils.set_random_seed(5)
    classifier, _ = build_model(model_config(), len(NAMES))
    serving = root / "candidate" / SERVING_DIR
    sigs = export.signatures(classifier, tft_output, "image", NAMES)
    classifier.save(str(serving), save_format="tf", signatures=sigs, save_traces=False)
    export.write_serving_json(str(serving), SIZE)  # makes assets.extra
    write_labels_file(str(serving / "assets.extra" / "labels.txt"), NAMES)
    base = root / "serving"
    for run in ("run-1", "run-2"):
        pusher.push_version(str(serving), f"uri://{run}", str(base), keep=None)
    assert pusher.complete_versions(str(base)) == [1, 2]
    return {"candidate": root / "candidate", "base": base}


@pytest.fixture
def dest(pushed, tmp_path):
    """A fresh copy of the push destination, to damage."""
    copy = tmp_path / "serving"
    shutil.copytree(pushed["base"], copy)
    return copy


def run_step(component, tmp_path, destination, candidate=None):
    """The step's executor as TFX runs it; returns its output Model artifact."""
    out = standard_artifacts.Model()
    out.uri = str(tmp_path / f"out-{component.__name__}")
    if component is ServedBaseline:
        model = standard_artifacts.Model()
        model.uri = str(candidate)
        inputs, outputs = {"candidate": [model]}, {"baseline": [out]}
    else:
        examples = standard_artifacts.Examples()
        examples.uri = str(tmp_path / "examples")
        inputs, outputs = {"examples": [examples]}, {"model": [out]}
    component.EXECUTOR_SPEC.executor_class().Do(
        inputs, outputs, {"push_destination": str(destination), "run_nonce": ""})
    return out


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def random_bytes(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def save_foreign_module(folder):
    """A SavedModel that is not a Keras classifier: a tf.Module with one tf.function,
    saved by tf.saved_model.save over the version's model (its labels.txt kept)."""
    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return 2.0 * x

    (folder / "saved_model.pb").unlink()
    shutil.rmtree(folder / "variables")
    tf.saved_model.save(Doubler(), str(folder))


@pytest.mark.parametrize("damage", [truncate, random_bytes])
def test_a_damaged_newest_version_is_passed_over_to_the_one_before_and_named(pushed, dest, tmp_path,
                                                                             capsys, damage):
    damage(dest / "2" / "saved_model.pb")
    baseline = run_step(ServedBaseline, tmp_path, dest, pushed["candidate"])
    log = capsys.readouterr().out
    assert baseline.get_int_custom_property(SERVED_VERSION) == 1
    assert baseline.get_string_custom_property(SERVED_PATH) == str(dest / "1")
    note = baseline.get_string_custom_property(SERVED_NOTE)
    assert note.startswith(f"passed over version 2 ({dest / '2'}): its saved_model.pb (")
    assert "does not parse as a SavedModel" in note or "holds no graph tagged 'serve'" in note, note
    assert "remove it, or push a good model (the next version replaces it)" in note
    assert note.endswith(f"the served model is version 1 ({dest / '1'})")
    assert f"[xfer] baseline: passed over version 2 ({dest / '2'}): its saved_model.pb" in log, log
    assert f"[xfer] baseline: the served model, version 1 ({dest / '1'})" in log
    # What the Evaluator gets is version 1, byte for byte, and it loads.
    copied = os.path.join(baseline.uri, SERVING_DIR)
    assert open(os.path.join(copied, "saved_model.pb"), "rb").read() == (dest / "1" / "saved_model.pb").read_bytes()
    assert "serving_examples" in tf.saved_model.load(copied).signatures

    warm = run_step(WarmStartModel, tmp_path, dest)
    assert warm.get_int_custom_property(SERVED_VERSION) == 1
    assert warm.get_string_custom_property(SERVED_NOTE) == note
    assert f"[xfer] warm start: passed over version 2 ({dest / '2'})" in capsys.readouterr().out


def test_variables_cut_short_fail_the_load_and_are_passed_over(pushed, dest, tmp_path):
    [data] = (dest / "2" / "variables").glob("variables.data-*")
    truncate(data)
    baseline = run_step(ServedBaseline, tmp_path, dest, pushed["candidate"])
    assert baseline.get_int_custom_property(SERVED_VERSION) == 1
    note = baseline.get_string_custom_property(SERVED_NOTE)
    assert note.startswith(f"passed over version 2 ({dest / '2'}): it does not load ("), note


def test_with_every_version_damaged_there_is_no_baseline_and_it_says_so(pushed, dest, tmp_path, capsys):
    for v in ("1", "2"):
        truncate(dest / v / "saved_model.pb")
    baseline = run_step(ServedBaseline, tmp_path, dest, pushed["candidate"])
    assert not has_baseline(baseline.uri) and baseline.get_int_custom_property(SERVED_VERSION) == 0
    assert baseline.get_string_custom_property(SERVED_NOTE).endswith("no version loads: nothing is served")
    assert (f"[xfer] baseline: no version under {dest} loads; the candidate is judged on value "
            f"thresholds alone") in capsys.readouterr().out


@pytest.mark.parametrize("component", [ServedBaseline, WarmStartModel])
def test_a_foreign_savedmodel_stops_the_step_naming_the_version_and_the_fix(pushed, dest, tmp_path, component):
    save_foreign_module(dest / "2")
    with pytest.raises(ForeignServedVersion) as raised:
        run_step(component, tmp_path, dest, pushed["candidate"])
    assert str(raised.value) == (
        f"push.destination: version 2 ({dest / '2'}) is not a classifier xfer exported: it lacks the "
        f"signature(s) xfer exports: 'serving_default' (images: string), 'serving_examples' (examples: "
        f"string), 'transform_features' (examples: string) (it has: serving_default). A model server loads "
        f"it, so it is the model being served: the candidate cannot be compared with it, and a push would "
        f"replace a model that is not this pipeline's. If it does not belong there, remove {dest / '2'}; "
        f"if {dest} is another model's folder, set push.destination to a folder of this pipeline's own")
    assert not os.path.exists(os.path.join(tmp_path, f"out-{component.__name__}", SERVING_DIR))


def test_a_served_model_of_other_classes_is_no_baseline(pushed, dest, tmp_path, capsys):
    write_labels_file(str(dest / "2" / "assets.extra" / "labels.txt"), ["cat", "dog", "eel"])
    baseline = run_step(ServedBaseline, tmp_path, dest, pushed["candidate"])
    assert not has_baseline(baseline.uri) and baseline.get_int_custom_property(SERVED_VERSION) == 0
    line = (f"version 2 ({dest / '2'}) classifies other classes (served: cat, dog, eel; this model: cat, "
            f"dog, owl): accuracy against it measures nothing, so the candidate is judged on value "
            f"thresholds alone")
    assert baseline.get_string_custom_property(SERVED_NOTE) == line
    assert f"[xfer] baseline: {line}\n" in capsys.readouterr().out
    # The warm start hands it on; the Trainer, which knows this run's classes, falls back.
    warm = run_step(WarmStartModel, tmp_path, dest)
    assert warm.get_int_custom_property(SERVED_VERSION) == 2
    classifier, _ = build_model(model_config(), len(NAMES))
    started, said = warm_start(classifier, os.path.join(warm.uri, SERVING_DIR), NAMES, "model.weights (none)")
    assert not started and "the class list changed (served: cat, dog, eel; this run: cat, dog, owl)" in said


def test_the_trainer_falls_back_in_one_line_on_a_foreign_or_damaged_base_model(pushed, dest):
    """base_model is an input like any other: the Trainer's own check does not crash."""
    classifier, _ = build_model(model_config(), len(NAMES))
    before = [w.numpy() for w in classifier.weights]
    save_foreign_module(dest / "2")
    started, said = warm_start(classifier, str(dest / "2"), NAMES, "model.weights (none)")
    # tf_keras' load_model fails inside on it (IndexError here); no AttributeError on 'weights'.
    assert not started and said.startswith(f"[xfer] warm start (train.warm_start: served): the served model at "
                                           f"{dest / '2'} does not load as a Keras model ("), said
    assert said.endswith("; starting from model.weights (none)")
    truncate(dest / "1" / "saved_model.pb")
    started, said = warm_start(classifier, str(dest / "1"), NAMES, "model.weights (none)")
    assert not started and f"the served model at {dest / '1'} is damaged: its saved_model.pb (" in said, said
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, classifier.weights))


def test_a_damaged_latest_version_of_the_same_model_is_pushed_again(pushed, dest):
    """Else a cached Trainer's model would be 'already version 2' for ever, and no model
    server could load what is served."""
    serving = str(pushed["candidate"] / SERVING_DIR)
    assert pusher.push_version(serving, "uri://run-2", str(dest), keep=None) == (str(dest / "2"), False)
    truncate(dest / "2" / "saved_model.pb")
    assert pusher.push_version(serving, "uri://run-2", str(dest), keep=None) == (str(dest / "3"), True)


def test_folders_named_with_unicode_digits_are_no_versions(pushed, dest, tmp_path):
    """'²'.isdigit() is True and int('²') fails; int('١') (Arabic-Indic one) is 1. Such
    folders, complete marker and all, count for nothing and are left untouched."""
    shutil.rmtree(dest / "2")
    for name in ("²", "1²", "١", "٣"):
        shutil.copytree(dest / "1", dest / name)
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert pusher.complete_versions(str(dest)) == [1] and pusher.highest_version(str(dest)) == 1
    assert [pusher.version_number(n) for n in ("²", "1²", "١", "12", "007", "-1", " 3", "3/")] == \
        [None, None, None, 12, 7, None, None, 3]
    serving = str(pushed["candidate"] / SERVING_DIR)
    assert pusher.push_version(serving, "uri://run-3", str(dest), keep=1) == (str(dest / "2"), True)
    assert pusher.complete_versions(str(dest)) == [2]  # keep=1 removed version 1 only
    assert sorted(os.listdir(dest)) == sorted(["2", "²", "1²", "١", "٣"])
    assert all(p.read_bytes() == data for p, data in before.items() if p.parts[len(dest.parts)] != "1")
    baseline = run_step(ServedBaseline, tmp_path, dest, pushed["candidate"])
    assert baseline.get_int_custom_property(SERVED_VERSION) == 2


@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_a_run_passes_over_a_damaged_newest_version_and_stops_on_a_foreign_one(tmp_path, cifar):
    """Whole runs (the CIFAR subset, one step per phase): run 1 pushes version 1. A
    damaged copy of it as version 2: a run from ServedBaseline judges against version 1,
    its summary says what was passed over, and the Pusher writes version 3 (version 2's
    source is the same model, but no server can load version 2). A foreign SavedModel as
    version 4: the next run stops in ServedBaseline, naming version 4 and the fix."""
    from conftest import CONFIGS, xfer

    root = tmp_path / "root"
    config = ["--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={root}",
              "--set", "train.steps_per_epoch=1", "--set", "train.fine_tune.enabled=false"]
    assert "(version 1)" in xfer("run", *config).stdout
    serving = root / "serving"
    shutil.copytree(serving / "1", serving / "2")
    truncate(serving / "2" / "saved_model.pb")
    out = xfer("run", *config, "--from", "ServedBaseline").stdout
    assert f"baseline: passed over version 2 ({serving / '2'}): its saved_model.pb (" in out, out
    assert f"the served model is version 1 ({serving / '1'})" in out
    assert "eval accuracy: " in out and "(baseline " in out  # judged against version 1
    assert f"pushed to: {serving / '3'} (version 3)" in out, out
    shutil.copytree(serving / "3", serving / "4")
    save_foreign_module(serving / "4")
    failed = xfer("run", *config, "--from", "ServedBaseline", check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert (f"xfer: error in ServedBaseline: push.destination: version 4 ({serving / '4'}) is not a "
            f"classifier xfer exported: it lacks the signature(s) xfer exports") in failed.stderr, failed.stderr
    assert pusher.complete_versions(str(serving)) == [1, 2, 3, 4]  # nothing pushed over it

"""eval.calibrate, serving.abstain_below and push.tflite kinds.

Units on crafted numbers, then one whole run on the digits (VGG16, weights none: a model
that learns) with temperature scaling, abstention and an int8 TFLite export, whose
figures are recomputed here from the exported model itself.
"""
import glob
import json
import os
import re
import shutil

import numpy as np
import pytest

from conftest import CONFIGS, xfer
from settings_helpers import make_config
from xfer.components import calibration
from xfer.pipeline.config import ConfigError, validate

ABSTAIN = 0.9
# The run's int8 file must be written to be inspected; int8 of this small random-init
# VGG16 agrees on about 0.77 of the eval split (docs/serving.md), far from the 0.98 default.
MIN_AGREEMENT = 0.5


# --- units ------------------------------------------------------------------------

def test_fitted_temperature_recovers_the_overconfidence_it_was_given():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2000, 5)) * 4
    true_t = 3.0  # labels drawn from softmax(logits / 3): the raw softmax is overconfident
    p_true = np.exp(logits / true_t) / np.exp(logits / true_t).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p_true])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    t = calibration.fit_temperature(probs, labels)
    assert 2.6 < t < 3.4, t
    assert calibration.nll(probs, labels, t) < calibration.nll(probs, labels, 1.0)
    assert calibration.ece(calibration.scale(probs, t), labels) < calibration.ece(probs, labels) / 2
    # Scaling never reorders the classes.
    assert (calibration.scale(probs, t).argmax(1) == probs.argmax(1)).all()


def test_ece_by_hand_and_coverage():
    # Two bins used: 0.95 (both right: |1 - 0.95|) and 0.55 (one of two right: |0.5 - 0.55|).
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [0.45, 0.55]])
    labels = np.array([0, 1, 0, 0])
    assert calibration.ece(probs, labels) == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)
    top, correct = probs.max(1), probs.argmax(1) == labels
    assert calibration.coverage(top, correct, 0.9) == (0.5, 1.0)
    assert calibration.coverage(top, correct, 0.99) == (0.0, None)


def test_the_halves_are_fixed_by_the_record_and_both_filled():
    records = [f"record {i}".encode() for i in range(200)]
    halves = [calibration.in_fit_half(r) for r in records]
    assert halves == [calibration.in_fit_half(r) for r in reversed(records)][::-1]
    assert 70 < sum(halves) < 130


def test_push_tflite_true_still_means_float32_and_bad_values_are_config_errors(tmp_path):
    assert make_config(push={"tflite": True}).push.tflite == "float32"
    assert make_config(push={"tflite": "int8"}).pusher_settings("f").tflite == "int8"
    raw = {"data": {"builtin": "digits"}}
    for bad, key in (({"push": {"tflite": "int4"}}, "push.tflite"),
                     ({"push": {"tflite_min_agreement": 1.01}}, "push.tflite_min_agreement"),
                     ({"serving": {"abstain_below": 1.0}}, "serving.abstain_below"),
                     ({"eval": {"calibrate": "platt"}}, "eval.calibrate")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            validate({**raw, **bad})
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {builtin: digits}\npush: {tflite: int4}\n")
    proc = xfer("run", "--config", str(bad), check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "push.tflite" in proc.stderr and str(bad) in proc.stderr


# --- one real run ------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrated")
    out = xfer("run", "--config", str(CONFIGS / "digits_learn.yaml"), "--set", f"root={root}",
               "--set", "eval.calibrate=temperature", "--set", f"serving.abstain_below={ABSTAIN}",
               "--set", "push.tflite=int8", "--set", f"push.tflite_min_agreement={MIN_AGREEMENT}").stdout
    pipeline_root = root / "pipeline_root"
    # The step outputs this run made (the ids in the paths are the store's).
    model_run, = (os.path.dirname(p) for p in glob.glob(
        str(pipeline_root / "Trainer" / "model_run" / "*" / calibration.CALIBRATION_JSON)))
    examples, = (os.path.dirname(p) for p in glob.glob(
        str(pipeline_root / "DataCheck" / "checked_examples" / "*" / "Split-eval")))
    yield {"root": root, "out": out, "version": root / "serving" / "1", "model_run": model_run,
           "examples": examples, "report": calibration.read(model_run)}
    shutil.rmtree(root, ignore_errors=True)


def served(version, examples):
    """(records, exported outputs of serving_examples, labels) over the eval split."""
    import tensorflow as tf

    from xfer.components import inputs
    model = tf.saved_model.load(str(version))
    records, outs, labels = [], [], []
    for batch in inputs.read_records([f"{examples}/Split-eval/*"]).batch(64):
        records += list(batch.numpy())
        outs.append({k: v.numpy() for k, v in model.signatures["serving_examples"](examples=batch).items()})
        labels.append(model.signatures["transform_features"](examples=batch)["label"].numpy().reshape(-1))
    return records, {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}, np.concatenate(labels), model


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_calibration_lowers_ece_on_the_held_out_half_as_the_card_says(run):
    r = run["report"]
    assert r["calibrate"] == "temperature" and r["temperature"] != 1.0
    records, out, labels, _ = served(run["version"], run["examples"])
    ok = out["error"] == b""
    measured = np.array([not calibration.in_fit_half(x) for x in records]) & ok
    assert measured.sum() == r["measured_examples"] and (ok.sum() - measured.sum()) == r["fit_examples"]
    after = out["probabilities"][measured]
    before = calibration.scale(after, 1.0 / r["temperature"])  # undo T: the model's own softmax
    ece_before, ece_after = (calibration.ece(p, labels[measured]) for p in (before, after))
    assert ece_after <= ece_before
    assert ece_before == pytest.approx(r["ece_before"], abs=1e-4)
    assert ece_after == pytest.approx(r["ece_after"], abs=1e-4)
    card = (run["version"] / "MODEL_CARD.md").read_text()
    assert f"| {r['ece_before']:.4f} | {r['ece_after']:.4f} |" in card, card
    assert "15 equal-width bins" in card and "Reliability diagram" in card
    assert (run["version"] / "model_card.html").read_text().count("data:image/png;base64,") >= 1
    assert (f"calibration: temperature {r['temperature']:.4f} fitted on {r['fit_examples']} eval examples; "
            f"ECE (15 bins) on the other {r['measured_examples']}: {r['ece_before']:.4f} before, "
            f"{r['ece_after']:.4f} after") in run["out"]


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_the_temperature_is_in_every_signature(run):
    import tensorflow as tf

    from xfer.components import backbones, keras_setup  # noqa: F401  (to revive the Keras model)
    t = run["report"]["temperature"]
    records, out, _, model = served(run["version"], run["examples"])
    keras_model = tf.keras.models.load_model(str(run["version"]), compile=False)
    batch = tf.constant(records[:16])
    pixels = model.signatures["transform_features"](examples=batch)["image"]
    raw = keras_model(pixels, training=False).numpy()
    want = calibration.scale(raw, t)
    np.testing.assert_allclose(out["probabilities"][:16], want, atol=1e-4)
    flips = model.signatures["serving_examples_flips"](examples=batch)["probabilities"].numpy()
    mirrored = keras_model(tf.image.flip_left_right(pixels), training=False).numpy()
    np.testing.assert_allclose(flips, (want + calibration.scale(mirrored, t)) / 2, atol=1e-4)
    images = [tf.train.Example.FromString(x).features.feature["image"].bytes_list.value[0] for x in records[:16]]
    served_default = model.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served_default["probabilities"].numpy(), want, atol=1e-4)
    assert json.loads((run["version"] / "assets.extra" / "serving.json").read_text())["temperature"] == \
        pytest.approx(t)


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_abstain_gives_the_coverage_the_card_states(run, tmp_path):
    r = run["report"]
    _, out, labels, _ = served(run["version"], run["examples"])
    ok = out["error"] == b""
    top = out["probabilities"].max(1)
    assert (out["abstained"] == (ok & (top < ABSTAIN))).all()
    assert (out["class_name"][out["abstained"]] == b"unknown").all()
    assert (out["class_name"][ok & ~out["abstained"]] != b"unknown").all()
    # The top class is still given for an abstained image.
    assert (out["class_id"][ok] == out["probabilities"][ok].argmax(1)).all()
    coverage = 1.0 - out["abstained"][ok].mean()
    assert 0.0 < coverage < 1.0, "the run must both answer and abstain, or the test says nothing"
    assert coverage == pytest.approx(r["served_coverage"], abs=1e-9)
    chosen, = [row for row in r["coverage"] if row[3]]
    assert chosen[0] == ABSTAIN and chosen[1] == pytest.approx(coverage, abs=1e-9)
    answered = ok & ~out["abstained"]
    assert chosen[2] == pytest.approx((out["class_id"][answered] == labels[answered]).mean(), abs=1e-9)
    card = (run["version"] / "MODEL_CARD.md").read_text()
    assert f"| {ABSTAIN:g} | {coverage:.4f} | {chosen[2]:.4f} | chosen |" in card, card
    assert f"answers {coverage:.4f} of these images" in card

    # xfer predict: text and JSON show the abstentions, the top classes still listed.
    import tensorflow as tf
    records, _, _, _ = served(run["version"], run["examples"])
    unsure = [i for i in np.flatnonzero(out["abstained"])[:2]]
    sure = int(np.flatnonzero(answered)[0])
    files = []
    for i in [*unsure, sure]:
        path = tmp_path / f"eval{i}.png"
        path.write_bytes(tf.train.Example.FromString(records[i]).features.feature["image"].bytes_list.value[0])
        files.append(str(path))
    lines = xfer("predict", str(run["root"] / "serving"), *files).stdout.splitlines()
    assert all(": unknown (abstained; top: " in line for line in lines[:-1]), lines
    assert "unknown" not in lines[-1], lines
    results = json.loads(xfer("predict", str(run["root"] / "serving"), *files, "--json").stdout)
    assert [x.get("abstained", False) for x in results] == [True] * len(unsure) + [False]
    assert all(len(x["top"]) == 3 for x in results)


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_int8_tflite_agreement_is_measured_and_a_higher_threshold_blocks_the_file(run, tmp_path):
    import tensorflow as tf

    from xfer.components import tflite_export
    version = run["version"]
    report = tflite_export.read_report(str(version))
    assert report["kind"] == "int8" and report["written"] and report["examples"] == run["report"]["examples"]
    assert MIN_AGREEMENT <= report["agreement"] <= 1.0 and report["min_agreement"] == MIN_AGREEMENT
    tflite = version / "assets.extra" / "model.tflite"
    assert tflite.stat().st_size == report["bytes"]
    interpreter = tf.lite.Interpreter(model_path=str(tflite))
    inp = interpreter.get_input_details()[0]
    assert inp["dtype"] == np.uint8 and inp["quantization"] == (1.0, 0)  # the pixel bytes as they are
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8
    card = (version / "MODEL_CARD.md").read_text()
    assert f"{report['agreement']:.4f} of {report['examples']} eval examples" in card, card

    # The same conversion against a threshold just above what it reached: not written, one line why.
    if report["agreement"] == 1.0:
        pytest.skip("int8 agreed on every eval example: no threshold <= 1 lies above it")
    above = report["agreement"] + 1e-6
    folder = tmp_path / "version"
    # The pushed version is the Trainer's SavedModel with its extras beside it.
    assert tflite_export.write(str(version), str(folder), "int8", run["examples"], above) is None
    assert not (folder / "assets.extra" / "model.tflite").exists()
    blocked = tflite_export.read_report(str(folder))
    assert blocked["agreement"] == report["agreement"] and not blocked["written"]
    assert f"on {report['agreement']:.4f} of {report['examples']} eval examples, below " \
           f"push.tflite_min_agreement {above:g}; the SavedModel is pushed without it" in blocked["why"]


def test_a_version_pushed_with_tflite_true_is_the_float32_one(tmp_path):
    """Versions pushed before the kinds recorded `"tflite": true`: the same model asking for
    float32 now is that version (no new one); asking for int8 is a new version."""
    import tensorflow as tf

    from xfer.components import pusher
    model = tmp_path / "model"
    tf.saved_model.save(tf.Module(), str(model))
    old = tmp_path / "serving" / "1"
    shutil.copytree(model, old)
    (old / pusher.SOURCE_FILE).write_text(json.dumps({"model_uri": "uri", "tflite": True}))
    (old / pusher.COMPLETE_MARKER).write_text("")
    assert pusher.push_version(str(model), "uri", str(tmp_path / "serving"), None, tflite="float32") == \
        (str(old), False)
    assert pusher._source_of(str(old)) != {"model_uri": "uri", "tflite": "int8"}

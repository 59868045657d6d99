"""Test-time augmentation: `eval.tta: flips` makes the Evaluator call
`serving_examples_flips`, the mean of the softmax on each image and on its horizontal
mirror; serving_default stays one pass unless `serving.tta: flips`; a served model
exported before TTA existed is evaluated in one pass alongside the candidate, and the
report says so.

The model is built to be the opposite of flip-invariant: it compares the brightness of
the image's left half with its right half (class "left" or "right"). The export path is
the Trainer's (export.signatures with a real transform graph, saved as the Trainer saves),
and the metrics come from a real TFMA run with the pipeline's own eval config."""
import io

import numpy as np
import pytest
from PIL import Image

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from settings_helpers import make_config, transform_graph
from xfer.components import export
from xfer.components.evaluator import CandidateLacksSignature, saved_signatures, tta_fallback
from xfer.components.settings import ServingConfig
from xfer.components.transform import decode_images
from xfer.pipeline.data.records import image_example

SIZE = 32
NAMES = ["left", "right"]
FLIPS = export.TTA_SIGNATURES["flips"]


def png(label: int, seed: int) -> bytes:
    """Noise, with the half named by the label brighter than the other."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 100, (SIZE, SIZE, 3), dtype=np.uint8)
    half = slice(0, SIZE // 2) if label == 0 else slice(SIZE // 2, SIZE)
    pixels[:, half] += 120
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def left_minus_right_model() -> tf.keras.Model:
    """logits = ±(sum of the left half - sum of the right half), scaled: not flip-invariant.
    A small bias towards class 0 decides the mirror's exact tie: sigmoid(b + a) + sigmoid(b - a)
    > 1 for b > 0, so the flip-averaged prediction is class 0 for every image."""
    inputs = tf.keras.Input(shape=(SIZE, SIZE, 3), name="image")
    dense = tf.keras.layers.Dense(2)
    outputs = tf.keras.layers.Softmax()(dense(tf.keras.layers.Flatten()(inputs)))
    model = tf.keras.Model(inputs, outputs)
    sign = np.where(np.arange(SIZE) < SIZE // 2, 1.0, -1.0)             # per column
    per_pixel = np.broadcast_to(sign[None, :, None], (SIZE, SIZE, 3)).reshape(-1)
    scale = 4.0 / (SIZE * SIZE // 2 * 3 * 120)                           # a 120 step -> logit 4
    dense.set_weights([np.stack([per_pixel, -per_pixel], axis=1).astype(np.float32) * scale,
                       np.array([0.1, 0.0], np.float32)])
    return model


def save(model, tft_output, path, serving=None, drop=()):
    sigs = export.signatures(model, tft_output, "image", NAMES, serving)
    sigs = {k: v for k, v in sigs.items() if k not in drop}
    model.save(str(path), save_format="tf", signatures=sigs, save_traces=False)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    raw = [{"image": png(i % 2, i), "label": i % 2} for i in range(4)]
    tft_output = transform_graph(root, raw, SIZE)

    model = left_minus_right_model()
    images = [png(i % 2, 100 + i) for i in range(16)]
    data = root / "eval.tfrecord"
    with tf.io.TFRecordWriter(str(data)) as w:
        for i, image in enumerate(images):
            w.write(image_example(image, i % 2))
    return {"root": root, "keras": model, "images": images, "labels": [i % 2 for i in range(16)],
            "data": str(data),
            "plain": save(model, tft_output, root / "plain"),
            "served_tta": save(model, tft_output, root / "served-tta", ServingConfig(tta="flips")),
            "before_tta": save(model, tft_output, root / "before-tta", drop=(FLIPS,))}


def test_flips_signature_is_the_mean_over_the_image_and_its_mirror_and_serving_stays_one_pass(models):
    loaded = tf.saved_model.load(models["plain"])
    images = models["images"][:6]
    pixels = decode_images(tf.constant(images), SIZE)
    one_pass = models["keras"](pixels).numpy()
    mirrored = models["keras"](tf.image.flip_left_right(pixels)).numpy()
    assert np.abs(one_pass - mirrored).max() > 0.9  # the model is far from flip-invariant
    examples = tf.constant([image_example(i) for i in images])
    np.testing.assert_allclose(loaded.signatures[FLIPS](examples=examples)["probabilities"].numpy(),
                               (one_pass + mirrored) / 2, atol=1e-5)
    np.testing.assert_allclose(loaded.signatures["serving_examples"](examples=examples)["probabilities"].numpy(),
                               one_pass, atol=1e-5)
    # eval.tta changes nothing a serving client calls: serving_default is one pass.
    served = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), one_pass, atol=1e-5)
    np.testing.assert_array_equal(served["class_id"].numpy(), [0, 1, 0, 1, 0, 1])
    # serving.tta: flips: serving_default averages too, and a bad image still gets its own error.
    tta = tf.saved_model.load(models["served_tta"]).signatures["serving_default"](
        images=tf.constant([images[0], b"", images[1]]))
    np.testing.assert_allclose(tta["probabilities"].numpy()[[0, 2]], ((one_pass + mirrored) / 2)[:2], atol=1e-5)
    assert tta["error"].numpy().tolist() == [b"", b"empty image", b""]


def _tfma(models, model_dir, tta, out):
    import tensorflow_model_analysis as tfma

    from xfer.pipeline.blessing import read_blessing
    from xfer.pipeline.pipeline import eval_config

    config = make_config(eval={"tta": tta, "min_accuracy": 0.0, "max_drop": None})
    cfg = eval_config(config)
    tfma.run_model_analysis(
        eval_shared_model=tfma.default_eval_shared_model(eval_saved_model_path=model_dir, eval_config=cfg),
        eval_config=cfg, data_location=models["data"], output_path=str(out))
    return read_blessing(str(out), True, NAMES), config.eval


@pytest.mark.timeout(600)
def test_tta_changes_the_eval_metric_of_a_model_that_is_not_flip_invariant(models):
    one_pass, ev = _tfma(models, models["plain"], False, models["root"] / "eval-one-pass")
    flips, ev_flips = _tfma(models, models["plain"], "flips", models["root"] / "eval-flips")
    # One pass: every image on its bright side. Averaged with its mirror, each image's two
    # views all but cancel (the bias tips them to class 0): half the images right.
    assert one_pass.candidate == pytest.approx(1.0)
    assert flips.candidate == pytest.approx(0.5)
    assert flips.metrics["candidate"]["loss"] == pytest.approx(np.log(2), abs=0.05)
    assert one_pass.metrics["candidate"]["loss"] < 0.05
    assert [c.candidate for c in flips.per_class] == [pytest.approx(1.0), pytest.approx(0.0)]
    # What TFMA called is read back from its own output, and the report says it.
    assert flips.signature == FLIPS and one_pass.signature == "serving_examples"
    assert "evaluated with test-time augmentation (serving_examples_flips" in "\n".join(flips.report(ev_flips))
    assert one_pass.tta_line(ev) is None


def test_a_served_model_from_before_tta_is_evaluated_in_one_pass_with_the_candidate_and_it_is_said(models):
    import json

    from xfer.pipeline.pipeline import eval_config
    from tfx.utils import proto_utils

    assert FLIPS in saved_signatures(models["plain"]) and FLIPS not in saved_signatures(models["before_tta"])
    wanted = proto_utils.proto_to_json(eval_config(make_config(eval={"tta": "flips"})))
    same, note = tta_fallback(wanted, models["plain"], models["plain"])
    assert same == wanted and note is None  # both have it: TTA for both
    assert tta_fallback(wanted, models["plain"], None) == (wanted, None)  # nothing served
    changed, note = tta_fallback(wanted, models["plain"], models["before_tta"], "the served model (version 3, /s/3)")
    assert [s["signature_name"] for s in json.loads(changed)["model_specs"]] == ["serving_examples"]
    assert note.startswith("eval.tta set aside for this run: the served model (version 3, /s/3) was exported "
                           "before eval.tta existed and has no 'serving_examples_flips' signature"), note
    with pytest.raises(CandidateLacksSignature, match="re-run the Trainer .xfer run --from Trainer. or set eval.tta: false"):
        tta_fallback(wanted, models["before_tta"], models["plain"])
    plain = proto_utils.proto_to_json(eval_config(make_config()))
    assert tta_fallback(plain, models["before_tta"], models["before_tta"]) == (plain, None)  # TTA off: no check

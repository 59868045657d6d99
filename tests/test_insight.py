"""The Trainer's insight reports (components/reports.py): Grad-CAM heatmaps and the
top-losses grid, on a real VGG16 (random init, as the offline demo) trained briefly on
scikit-learn's digits, through the same function the Trainer calls (reports.write_all)."""
import json

import numpy as np
import pytest
from PIL import Image

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from settings_helpers import small_model
from xfer.components import keras_setup, model as model_lib, reports  # noqa: F401  (keras_setup: as in the Trainer)
from xfer.components.transform import decode_image
from xfer.pipeline.data.digits import _split_of, digits_pngs

SIZE = 32
INK = 64  # of 255: a digit's pixel; the bilinear halo of the 8x8 scans stays fainter


@pytest.fixture(scope="module")
def digits():
    """The demo's digits, decoded by Transform's own decode_image, split as the demo splits them."""
    split = {"train": ([], []), "eval": ([], [])}
    for example_id, png, label in digits_pngs():
        images, labels = split[_split_of(example_id)]
        images.append(decode_image(tf.constant(png), SIZE).numpy())
        labels.append(label)
    return {k: (np.stack(v[0]), np.array(v[1], np.int64)) for k, v in split.items()}


@pytest.fixture(scope="module")
def trained(digits):
    """VGG16 from random init, the whole base trainable (the demo's phase 2), 2 epochs at 1e-4."""
    tf.keras.utils.set_random_seed(7)
    classifier, base = model_lib.build_model(small_model("vgg16", SIZE, head={"dense": [64]}), 10)
    model_lib.unfreeze_top(base, "block1_conv1", 1.0)
    model_lib.compile_for(classifier, "adam", 1e-4)
    x, y = digits["train"]
    classifier.fit(x, y, batch_size=32, epochs=2, shuffle=True, verbose=0)
    ex, ey = digits["eval"]
    accuracy = float((classifier.predict(ex, batch_size=64, verbose=0).argmax(-1) == ey).mean())
    print(f"eval accuracy after 2 epochs: {accuracy:.3f}")
    assert accuracy > 0.8, f"the model must have learned before its heatmaps mean anything ({accuracy:.3f})"
    return classifier, base


def test_cam_layer_is_the_deepest_convolution_with_a_usable_map():
    for backbone, size, expected in (("vgg16", 32, "block4_conv3"), ("vgg16", 64, "block5_conv3"),
                                     ("mobilenet_v2", 128, "out_relu")):
        _, base = model_lib.build_model(small_model(backbone, size), 3)
        assert reports.cam_layer(base) == expected, (backbone, size)


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_gradcam_peaks_inside_the_digit_not_on_the_blank_border(trained, digits):
    classifier, _ = trained
    images, labels = digits["eval"]
    heatmaps, predicted = reports.gradcam(classifier, images)
    assert heatmaps.shape == images.shape[:3] and heatmaps.min() >= 0 and heatmaps.max() <= 1
    inside, area = [], []
    for image, heat in zip(images, heatmaps):
        rows, cols = np.nonzero(image[..., 0] > INK)
        top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
        r, c = np.unravel_index(np.argmax(heat), heat.shape)
        inside.append(top <= r <= bottom and left <= c <= right)
        area.append((bottom - top + 1) * (right - left + 1) / heat.size)
    hit, chance = float(np.mean(inside)), float(np.mean(area))
    print(f"Grad-CAM peak inside the digit's box for {hit:.3f} of {len(images)} eval digits "
          f"(the boxes cover {chance:.3f} of the image on average)")
    assert hit >= 0.8, hit
    assert hit > chance + 0.1, (hit, chance)


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_write_all_grids_and_top_losses_are_the_highest_losses(trained, digits, tmp_path):
    classifier, _ = trained
    images, labels = digits["eval"]
    eval_ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
    paths = reports.write_all(classifier, eval_ds, {"transfer": {"loss": [2.0, 1.0], "accuracy": [0.3, 0.6]}},
                              [str(d) for d in range(10)],
                              str(tmp_path))
    assert set(paths) == set(reports.PNGS)
    for name in (reports.GRADCAM, reports.TOP_LOSSES):
        with Image.open(paths[name]) as img:
            assert img.format == "PNG" and img.size[0] > 200
    shown = json.loads((tmp_path / reports.TOP_LOSSES_JSON).read_text())["top_losses"]
    # Independently: every eval example's cross-entropy, highest first.
    probs = classifier.predict(images, batch_size=100, verbose=0)
    losses = tf.keras.losses.sparse_categorical_crossentropy(labels, probs).numpy()
    expected = np.argsort(-losses, kind="stable")[:reports.INSIGHT_IMAGES]
    assert [r["index"] for r in shown] == expected.tolist()
    np.testing.assert_allclose([r["loss"] for r in shown], losses[expected], rtol=1e-4)
    assert [r["actual"] for r in shown] == labels[expected].tolist()
    assert [r["predicted"] for r in shown] == probs[expected].argmax(-1).tolist()
    np.testing.assert_allclose([r["probability_actual"] for r in shown],
                               probs[expected, labels[expected]], rtol=1e-4)
    assert losses[expected].min() >= np.delete(losses, expected).max()


def test_gradcam_under_mixed_precision_is_float32_and_finite():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        classifier, _ = model_lib.build_model(small_model("mobilenet_v2", 32), 3)
        heat, predicted = reports.gradcam(classifier, np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert heat.dtype == np.float32 and np.isfinite(heat).all() and heat.shape == (3, 32, 32)
    assert predicted.shape == (3,)


def test_xfer_show_lists_the_insight_plots(tmp_path):
    from xfer.pipeline.views import view_model_run

    (tmp_path / "history.json").write_text(json.dumps({"class_names": ["a", "b"],
                                                       "history": {"transfer": {"loss": [1.0]}}}))
    for name in reports.PNGS:
        (tmp_path / name).write_bytes(b"png")
    lines = view_model_run(str(tmp_path))
    for name in (reports.GRADCAM, reports.TOP_LOSSES):
        assert f"  plot: {tmp_path / name}" in lines, lines


def test_gradcam_ignores_models_tracked_beside_the_graph():
    """The exported classifier tracks the transform layer as an attribute (components/export.py),
    and `model.layers` lists it; Grad-CAM walks the graph only."""
    classifier, _ = model_lib.build_model(small_model("mobilenet_v2", 32), 3)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    before, predicted = reports.gradcam(classifier, x)
    classifier.tft_layer = tf.keras.Sequential([tf.keras.layers.Dense(2)])
    after, again = reports.gradcam(classifier, x)
    np.testing.assert_allclose(before, after, atol=1e-6)
    assert predicted.tolist() == again.tolist()

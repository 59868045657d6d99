"""The two recipes of the source tutorials that needed new pieces: the Russian EfficientNetB0
head (Conv2D, BatchNormalization, GAP, Dropout, Dense 512, softmax: model.head.conv and
pool_dropout) and the Chinese tutorial's shear (train.augment.shear, in degrees as tf-keras'
ImageDataGenerator(shear_range=...)). The head's training is in tests/test_model.py."""
import math

import numpy as np
import pytest
import tensorflow as tf

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from settings_helpers import make_config
from xfer.components import recipe
from xfer.components.augment import RandomShear, apply_shear, build_augmenter
from xfer.components.settings import AugmentConfig, TransferConfig
from xfer.pipeline.config import ConfigError, load_config

SIDE = 65          # odd: the centre is a pixel, (32, 32)
LINE_COLUMN = 32


def _vertical_line(batch=1):
    img = np.zeros((batch, SIDE, SIDE, 3), np.float32)
    img[:, :, LINE_COLUMN, :] = 255.0
    return img


def _line_columns(img):
    """Per row, the brightness-weighted column of the line (rows away from the edges)."""
    gray = img[..., 0]
    cols = np.arange(gray.shape[1])
    rows = np.arange(8, gray.shape[0] - 8)
    return rows, np.array([(gray[r] * cols).sum() / gray[r].sum() for r in rows])


def _lean_degrees(img):
    """The line's angle from vertical, positive when its bottom is to the right."""
    rows, centre = _line_columns(img)
    slope = np.polyfit(rows, centre, 1)[0]
    return math.degrees(math.atan(slope))


def test_shear_zero_is_the_identity_and_a_vertical_line_leans_by_atan_sin_of_the_angle():
    img = _vertical_line()
    np.testing.assert_array_equal(apply_shear(tf.constant(img), tf.constant([0.0])).numpy(), img)
    for degrees in (5.0, 11.46, -20.0):
        out = apply_shear(tf.constant(img), tf.constant([math.radians(degrees)])).numpy()[0]
        # ImageDataGenerator's matrix samples x_in = x - sin(a) (y - cy): the line's column
        # moves by sin(a) per row, so it leans by atan(sin(a)), a little under a.
        expected = math.degrees(math.atan(math.sin(math.radians(degrees))))
        assert _lean_degrees(out) == pytest.approx(expected, abs=0.05), degrees
        rows, centre = _line_columns(out)
        assert centre[rows == 32][0] == pytest.approx(LINE_COLUMN, abs=0.01)  # about the centre
    # 0.2 (the recipe's shear_range, degrees in tf-keras): under a pixel over the whole image.
    out = apply_shear(tf.constant(img), tf.constant([math.radians(0.2)])).numpy()[0]
    rows, centre = _line_columns(out)
    assert np.ptp(centre) < 0.25


def test_shear_matches_tf_keras_image_data_generator_on_a_real_image(cifar):
    from tf_keras.preprocessing.image import ImageDataGenerator

    raw = next(tf.data.TFRecordDataset(str(cifar / "train" / "cifar10_train.tfrecord")).as_numpy_iterator())
    png = tf.train.Example.FromString(raw).features.feature["image"].bytes_list.value[0]
    image = tf.image.resize(tf.io.decode_png(png, channels=3), (64, 64), method="nearest").numpy().astype(np.float32)
    for degrees in (11.46, -8.0):
        keras = ImageDataGenerator().apply_transform(image, {"shear": degrees})  # bilinear, nearest fill
        ours = apply_shear(tf.constant(image[None]), tf.constant([math.radians(degrees)])).numpy()[0]
        assert np.abs(ours - keras).max() < 0.5, (degrees, np.abs(ours - keras).max())
        assert np.abs(ours - image).mean() > 5  # and it did move the pixels


def test_the_layer_draws_one_angle_per_image_within_the_range_and_only_when_training():
    layer = RandomShear(20.0, seed=7)
    batch = tf.constant(_vertical_line(16))
    leans = [_lean_degrees(img) for img in layer(batch, training=True).numpy()]
    limit = math.degrees(math.atan(math.sin(math.radians(20.0))))
    assert all(abs(lean) <= limit + 0.05 for lean in leans), leans
    assert max(leans) > 5 and min(leans) < -5 and len({round(l, 2) for l in leans}) == 16, leans
    np.testing.assert_array_equal(layer(batch, training=False).numpy(), batch.numpy())


def test_the_augmenter_runs_in_a_tf_function_with_static_shapes_and_no_python_ops():
    augmenter = build_augmenter(AugmentConfig(shear=11.46, horizontal_flip=True), seed=42)
    assert [type(l).__name__ for l in augmenter.layers] == ["RandomFlip", "RandomShear"]
    fn = tf.function(lambda x: augmenter(x, training=True))
    concrete = fn.get_concrete_function(tf.TensorSpec([8, 64, 64, 3], tf.float32))
    assert concrete.structured_outputs.shape == (8, 64, 64, 3)
    ops = {op.type for op in concrete.graph.get_operations()}
    assert "ImageProjectiveTransformV3" in ops
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}, ops
    # And inside tf.data, as the Trainer's input pipeline calls it (batches, training only).
    ds = tf.data.Dataset.from_tensor_slices(_vertical_line(8)).batch(4, drop_remainder=True)
    ds = ds.map(lambda x: augmenter(x, training=True))
    assert ds.element_spec.shape == (4, SIDE, SIDE, 3)
    assert [b.shape for b in ds] == [(4, SIDE, SIDE, 3)] * 2


def test_the_recipe_line_names_the_shear_and_its_unit():
    assert recipe.describe("transfer", TransferConfig(), 0.0, AugmentConfig(shear=0.2)) == (
        "[xfer] transfer: adam 0.001, constant, shear up to 0.2 degrees")


RUSSIAN = {
    "model": {"backbone": "efficientnet_b0", "weights": "imagenet", "image_size": 224,
              "head": {"conv": {"filters": 7, "kernel": 7}, "pooling": "avg", "pool_dropout": 0.2, "dense": [512]}},
    "train": {"augment": {"horizontal_flip": True},
              "transfer": {"epochs": 10, "learning_rate": 2e-5, "optimizer": "adam"},
              "fine_tune": {"enabled": True, "epochs": 50, "learning_rate": 1e-6, "fraction": 1.0}},
}
CHINESE_AUGMENT = {"rotation": 40 / 360, "translation": 0.2, "shear": 11.46, "zoom": 0.2, "horizontal_flip": True}


def test_the_russian_and_chinese_recipes_validate_and_reach_the_trainer():
    c = make_config(**RUSSIAN)
    head = c.trainer_settings("x").model.head
    assert (head.conv.filters, head.conv.kernel, head.conv.padding, head.conv.activation, head.conv.batch_norm) == (
        7, 7, "valid", None, True)
    assert head.pool_dropout == 0.2 and head.dense == [512]
    aug = make_config(train={"augment": CHINESE_AUGMENT}).trainer_settings("x").train.augment
    assert aug.shear == 11.46 and aug.any()
    # Heads without the new pieces dump as before (the model card's head line, the step settings).
    assert make_config().model.head.model_dump() == {"pooling": "avg", "dense": [], "activation": "relu",
                                                     "dropout": 0.0}


@pytest.mark.parametrize("override, key", [
    ("train.augment.shear=90", "train.augment.shear"),
    ("model.head.conv={kernel: 3}", "model.head.conv.filters"),
    ("model.head.conv={filters: 7, padding: full}", "model.head.conv.padding"),
    ("model.head.pool_dropout=1.0", "model.head.pool_dropout"),
])
def test_bad_recipe_pieces_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("demo", [override])

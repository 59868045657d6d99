"""The exported SavedModel and its signatures.

- serving_default: raw encoded image bytes [batch] (any format and size) -> probabilities,
  class_id, class_name, error. Clients send files as they are; the transform graph inside
  decodes and resizes exactly as in training. Each image is judged on its own (see
  components/image_guard.py): its dimensions are read from its header before anything is
  decoded, an image above `serving.max_pixels` is refused undecoded, and an image that is
  empty, too large or not decodable gets its reason in `error`, probabilities of zeros,
  class_id -1 and class_name "", while the others in the batch are still classified. An
  empty batch returns empty outputs; a batch above `serving.max_batch` fails the request.
  `abstained` is true where the top probability is below `serving.abstain_below` (then
  class_name is "unknown"; probabilities and class_id still give the top classes).
  With eval.calibrate: temperature, every model pass is temperature-scaled first
  (components/calibration.py).
- serving_examples: serialized tf.Example (raw features) -> the same outputs, by the same
  per-example rules (a record that does not parse is an error of its own).
- serving_examples_flips: serving_examples with test-time augmentation: each image's
  probabilities are the mean of the model's softmax on the image and on its horizontal
  (left-right) mirror. Always exported; the Evaluator calls it when `eval.tta: flips`
  (pipeline.eval_config), serving clients never need to. Horizontal only: a mirrored
  photo is still a photo of the same thing, while a vertical flip or a rotation makes
  scenes no camera takes (sky below), and the augmentation most recipes train with
  (train.augment.horizontal_flip) is this one.
- transform_features: serialized tf.Example -> transformed features, for TFMA.

serving_default is one pass unless `serving.tta: flips`, when it averages as above.

The limits are written beside the model in assets.extra/serving.json (write_serving_json).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow as tf
import tensorflow_transform as tft

from xfer.components import calibration, image_guard
from xfer.components.settings import ServingConfig
from xfer.components.transform import decode_image

SERVING_EXAMPLES = "serving_examples"
# eval.tta value -> the tf.Example signature the Evaluator calls for it.
TTA_SIGNATURES = {"flips": "serving_examples_flips"}
TRANSFORM_FEATURES = "transform_features"
PREDICTION_KEY = "probabilities"
ERROR_KEY = "error"
ABSTAINED_KEY = "abstained"
OUTPUTS = (PREDICTION_KEY, "class_id", "class_name", ERROR_KEY, ABSTAINED_KEY)
SERVING_JSON = os.path.join("assets.extra", "serving.json")
TFLITE_FILE = "model.tflite"


def _raw_image_feature(images: tf.Tensor, spec) -> tf.Tensor:
    """A [batch] vector of encoded images in the form the raw feature spec parses to."""
    if isinstance(spec, tf.io.VarLenFeature):
        n = tf.shape(images, out_type=tf.int64)[0]
        indices = tf.stack([tf.range(n), tf.zeros([n], tf.int64)], axis=1)
        return tf.SparseTensor(indices, images, dense_shape=tf.stack([n, tf.constant(1, tf.int64)]))
    if list(spec.shape) == [1]:
        return tf.expand_dims(images, -1)
    return images


def signatures(model: tf.keras.Model, tft_output: tft.TFTransformOutput, image_key: str,
               class_names: list[str], serving: Optional[ServingConfig] = None,
               temperature: float = 1.0) -> dict:
    """`temperature`: eval.calibrate's T (components/calibration.py), a constant in the
    graph applied to every model pass before anything else reads the probabilities."""
    serving = serving or ServingConfig()
    model.tft_layer = tft_output.transform_features_layer()  # tracked, so saved with the model
    raw_spec = tft_output.raw_feature_spec()
    names = tf.constant(class_names)
    size = model.input_shape[1]

    def decode_one(encoded):
        # The very function preprocessing_fn maps over the batch (components/transform.py),
        # so served pixels are the trained-on ones (tested equal to the transform graph's
        # output). Calling the TFT layer per image here works too, but halves throughput:
        # its map_fn is rebuilt for every image inside tf.data.
        return decode_image(encoded, size)

    def classify(images, errors_before=None, tta=False):
        guarded = image_guard.decode_batch(images, decode_one, size, serving.max_pixels,
                                           serving.max_batch)
        ok = tf.equal(guarded.error, "")
        if errors_before is not None:
            ok = tf.logical_and(ok, tf.equal(errors_before, ""))
        good = tf.where(ok)  # [k, 1]
        pixels = tf.gather_nd(guarded.images, good)

        def predict():
            if tta == "flips":
                # One call on [images; mirrored images] (BatchNorm is in inference mode, so
                # the batch's makeup does not matter), then the mean of the two softmax outputs.
                k = tf.shape(pixels)[0]
                both = calibration.scale_tf(
                    model(tf.concat([pixels, tf.image.flip_left_right(pixels)], axis=0), training=False), temperature)
                return (both[:k] + both[k:]) / 2.0
            # One image goes through as a batch of two (itself twice), by the same argument:
            # at a batch of one, oneDNN's CPU kernels take an im2col GEMM convolution
            # (ONEDNN_VERBOSE: x64:gemm:jit, 49 ms for MobileNetV2's block_1 1x1 expand
            # here, against 0.3 ms for brgconv_1x1 at a batch of two), and a one-image
            # request took 400 ms instead of about 20 (docs/speed.md).
            k = tf.shape(pixels)[0]
            at_least_two = tf.concat([pixels, pixels[:tf.maximum(2 - k, 0)]], axis=0)
            return calibration.scale_tf(model(at_least_two, training=False)[:k], temperature)

        # The model never sees an empty batch (an empty request, or every image refused):
        # oneDNN's CPU kernels, TensorFlow's default on recent x86 CPUs, fail on one
        # ("input depth must be evenly divisible by filter depth").
        probabilities = tf.cond(tf.size(good) > 0, predict,
                                lambda: tf.zeros([0, len(class_names)], tf.float32))
        n = tf.shape(images, out_type=tf.int64)[0]
        probabilities = tf.scatter_nd(good, probabilities,
                                      tf.stack([n, tf.constant(len(class_names), tf.int64)]))
        class_id = tf.where(ok, tf.argmax(probabilities, axis=-1), tf.constant(-1, tf.int64))
        class_name = tf.where(ok, tf.gather(names, tf.maximum(class_id, 0)), "")
        error = guarded.error if errors_before is None else tf.where(
            tf.equal(errors_before, ""), guarded.error, errors_before)
        # serving.abstain_below: a classified image whose top probability is under it is
        # answered "unknown"; class_id and probabilities still name the top classes.
        abstained = tf.zeros_like(ok)
        if serving.abstain_below is not None:
            abstained = tf.logical_and(ok, tf.reduce_max(probabilities, axis=-1) < serving.abstain_below)
            class_name = tf.where(abstained, calibration.UNKNOWN, class_name)
        return {PREDICTION_KEY: probabilities, "class_id": class_id, "class_name": class_name,
                ERROR_KEY: error, ABSTAINED_KEY: abstained}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(images):
        return classify(images, tta=serving.tta)

    def examples_signature(tta):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(examples):
            images, errors = image_guard.parse_images(examples, image_key, raw_spec[image_key],
                                                      serving.max_batch)
            return classify(images, errors, tta=tta)
        return serve_examples.get_concrete_function()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(examples):
        return model.tft_layer(tf.io.parse_example(examples, raw_spec))

    return {
        "serving_default": serve_images.get_concrete_function(),
        SERVING_EXAMPLES: examples_signature(False),
        **{name: examples_signature(tta) for tta, name in TTA_SIGNATURES.items()},
        TRANSFORM_FEATURES: transform_features.get_concrete_function(),
    }


def write_serving_json(model_dir: str, image_size: int, serving: Optional[ServingConfig] = None,
                       temperature: float = 1.0) -> str:
    """assets.extra/serving.json: the limits a client must respect, read by `xfer predict`."""
    serving = serving or ServingConfig()
    path = os.path.join(model_dir, SERVING_JSON)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump({"max_pixels": serving.max_pixels, "max_batch": serving.max_batch,
                   "image_size": image_size, "tta": serving.tta, "input": "images: encoded JPEG, PNG, GIF or BMP bytes [batch]",
                   "outputs": list(OUTPUTS), "temperature": temperature,
                   "abstain_below": serving.abstain_below,
                   "error": "empty when the image was classified; else why not (then probabilities are "
                            "zeros, class_id -1, class_name empty)"}, f, indent=1)
    return path

"""The exported SavedModel and its signatures.

- serving_default: raw encoded image bytes (any format and size) -> probabilities,
  class_id, class_name. Clients send files as they are; the transform graph inside
  decodes and resizes exactly as in training.
- serving_examples: serialized tf.Example (raw features) -> the same outputs.
- transform_features: serialized tf.Example -> transformed features, for TFMA.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from xfer.components.transform import IMAGE

SERVING_EXAMPLES = "serving_examples"
TRANSFORM_FEATURES = "transform_features"
PREDICTION_KEY = "probabilities"
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
               class_names: list[str]) -> dict:
    model.tft_layer = tft_output.transform_features_layer()  # tracked, so saved with the model
    raw_spec = tft_output.raw_feature_spec()
    # Clients send only the image; ids, file names and the label are not needed to predict.
    serving_spec = {image_key: raw_spec[image_key]}
    names = tf.constant(class_names)

    def predict(transformed):
        probabilities = model(transformed[IMAGE], training=False)
        class_id = tf.argmax(probabilities, axis=-1)
        return {PREDICTION_KEY: probabilities, "class_id": class_id,
                "class_name": tf.gather(names, class_id)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(images):
        raw = {image_key: _raw_image_feature(images, raw_spec[image_key])}
        return predict(model.tft_layer(raw))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        return predict(model.tft_layer(tf.io.parse_example(examples, serving_spec)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(examples):
        return model.tft_layer(tf.io.parse_example(examples, raw_spec))

    return {
        "serving_default": serve_images.get_concrete_function(),
        SERVING_EXAMPLES: serve_examples.get_concrete_function(),
        TRANSFORM_FEATURES: transform_features.get_concrete_function(),
    }


def write_tflite(model: tf.keras.Model, path: str) -> None:
    """The same classifier as TFLite, for devices: input float32 [1, size, size, 3] RGB in
    [0, 255] (decode and resize on the device), output class probabilities. Class names
    are in labels.txt beside it. The backbone's normalization is inside, as in serving."""
    size = model.input_shape[1]
    predict = tf.function(lambda image: model(image, training=False))
    concrete = predict.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32, name="image"))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(converter.convert())

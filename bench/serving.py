"""Serving throughput: the pushed SavedModel's serving_default on raw JPEG bytes against
Keras predict on the same images already decoded and resized to float tensors.

usage: python serving.py MODEL_DIR EVAL_TFRECORDS_GLOB   (prints images/s figures, each the
median of interleaved rounds, and the rounds)

Also the serving guard alone (components/image_guard.py: headers read, then each image
decoded in tf.data inside the signature), at the same batch and on one-image requests,
whose milliseconds are mostly the guard's fixed cost per request.
"""
import sys
import time

import xfer.components  # noqa: F401
import numpy as np
import tensorflow as tf

from xfer.components import image_guard
from xfer.components.settings import ServingConfig
from xfer.components.transform import decode_image, decode_images

BATCH, ROUNDS, SINGLE_REQUESTS = 32, 5, 200


def main(model_dir, pattern):
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    raw = [tf.io.parse_single_example(r, spec)["image"].numpy() for r in
           tf.data.TFRecordDataset(tf.io.gfile.glob(pattern), compression_type="GZIP")]
    n = len(raw) - len(raw) % BATCH
    raw = raw[:n]
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    keras_model = tf.keras.models.load_model(model_dir, compile=False)
    size = keras_model.input_shape[1]
    decoded = np.concatenate([decode_images(tf.constant(raw[i:i + BATCH]), size).numpy()
                              for i in range(0, n, BATCH)])

    limits = ServingConfig()
    guard = tf.function(lambda x: image_guard.decode_batch(x, lambda e: decode_image(e, size), size,
                                                           limits.max_pixels, limits.max_batch).images,
                        input_signature=[tf.TensorSpec([None], tf.string)])

    # Serving: a client sends batches of files as they are; Keras: one predict call over
    # the whole decoded array, its best case; Keras at other batch sizes: the best is the
    # bar for phase 1's feature extraction.
    passes = {
        "serving_raw_jpeg_images_per_s":
            lambda: [serve(images=tf.constant(raw[i:i + BATCH])) for i in range(0, n, BATCH)],
        "keras_predict_decoded_images_per_s":
            lambda: keras_model.predict(decoded, batch_size=BATCH, verbose=0),
        **{f"keras_predict_decoded_batch{b}_images_per_s":
           (lambda b=b: keras_model.predict(decoded, batch_size=b, verbose=0)) for b in (64, 128)},
        "guard_alone_images_per_s": lambda: [guard(tf.constant(raw[i:i + BATCH])) for i in range(0, n, BATCH)],
    }
    for one_pass in passes.values():
        one_pass()  # warm-up: tracing
    # Interleaved rounds, one pass of each per round, so that a slow spell of the machine
    # falls on all of them alike; each figure is its median over the rounds.
    rates = {name: [] for name in passes}
    for _ in range(ROUNDS):
        for name, one_pass in passes.items():
            start = time.perf_counter()
            one_pass()
            rates[name].append(n / (time.perf_counter() - start))
    for name, values in rates.items():
        print(f"{name} {float(np.median(values)):.1f}")
        print(f"{name}_rounds {' '.join(f'{v:.0f}' for v in values)}")
    one = [tf.constant(raw[i:i + 1]) for i in range(SINGLE_REQUESTS)]
    # The Keras model itself on one decoded image and on two: serving_default sends one
    # image as two (components/export.py), for what oneDNN does at a batch of one.
    keras_call = tf.function(lambda x: keras_model(x, training=False))
    for name, call, inputs in (
            ("guard_alone_one_image_request", guard, one),
            ("serving_one_image_request", lambda x: serve(images=x), one),
            ("keras_call_batch1", keras_call, [tf.constant(decoded[i:i + 1]) for i in range(SINGLE_REQUESTS // 4)]),
            ("keras_call_batch2", keras_call, [tf.constant(decoded[i:i + 2]) for i in range(SINGLE_REQUESTS // 4)])):
        call(inputs[0])
        start = time.perf_counter()
        for x in inputs:
            call(x)
        print(f"{name}_ms {1000 * (time.perf_counter() - start) / len(inputs):.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

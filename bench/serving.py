"""Serving throughput: the pushed SavedModel's serving_default on raw JPEG bytes against
Keras predict on the same images already decoded and resized to float tensors.

usage: python serving.py MODEL_DIR EVAL_TFRECORDS_GLOB   (prints two images/s figures)
"""
import sys
import time

import xfer.components  # noqa: F401
import numpy as np
import tensorflow as tf

from xfer.components.transform import decode_images

BATCH, PASSES = 32, 3


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

    def timed(one_pass):
        one_pass()  # warm-up: tracing
        start = time.perf_counter()
        for _ in range(PASSES):
            one_pass()
        return PASSES * n / (time.perf_counter() - start)

    # Serving: a client sends batches of files as they are; Keras: one predict call over
    # the whole decoded array, its best case.
    serving = timed(lambda: [serve(images=tf.constant(raw[i:i + BATCH])) for i in range(0, n, BATCH)])
    keras = timed(lambda: keras_model.predict(decoded, batch_size=BATCH, verbose=0))
    # Keras predict at other batch sizes: the best is the bar for phase 1's feature extraction.
    for batch in (64, 128):
        rate = timed(lambda: keras_model.predict(decoded, batch_size=batch, verbose=0))
        print(f"keras_predict_decoded_batch{batch}_images_per_s {rate:.1f}")
    print(f"serving_raw_jpeg_images_per_s {serving:.1f}")
    print(f"keras_predict_decoded_images_per_s {keras:.1f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

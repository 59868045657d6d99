"""The plain-Keras way, as the tutorials write it: one script that reads the TFRecords
with tf.data, decodes and resizes, trains MobileNetV2 in two phases (frozen base + new
head, then the top of the base unfrozen with BatchNorm frozen, at a lower learning
rate), evaluates and saves. The same model, data, sizes, batch and epochs as
bench/bench.yaml; written independently of components/ on purpose.

usage: python baseline_keras.py DATA_DIR OUT_DIR [TRANSFER_EPOCHS FINE_TUNE_EPOCHS]
(the epoch counts default to bench/bench.yaml's; bench/run.py changes them only for its
alternated phase-2 throughput runs)
"""
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf  # noqa: E402
from tensorflow.python.autograph.core import config as _autograph  # noqa: E402

# Same stack as the pipeline (TF 2.16 + tf_keras), and the same fix: AutoGraph skips
# `keras` but not `tf_keras`, which costs every first fit 30-47 s on 2 cores. Without
# it the baseline would be slower and flatter the pipeline.
_autograph.CONVERSION_RULES = (_autograph.DoNotConvert("tf_keras"),) + tuple(_autograph.CONVERSION_RULES)

SIZE, BATCH, ALPHA = 96, 32, 1.0
PHASE1_EPOCHS, PHASE2_EPOCHS, FRACTION = 3, 5, 0.3
LR1, LR2 = 1e-3, 1e-4


def dataset(pattern, training):
    ds = tf.data.TFRecordDataset(tf.io.gfile.glob(pattern), compression_type="GZIP")
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        image = tf.io.decode_image(ex["image"], channels=3, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32), [SIZE, SIZE])
        return image, ex["label"]

    if training:
        ds = ds.shuffle(1024, seed=1)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH, drop_remainder=training) \
             .prefetch(tf.data.AUTOTUNE)


class Speed(tf.keras.callbacks.Callback):
    def __init__(self, phase):
        super().__init__()
        self.phase = phase

    def on_epoch_begin(self, epoch, logs=None):
        self.t, self.n = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self.n += 1

    def on_epoch_end(self, epoch, logs=None):
        s = time.perf_counter() - self.t
        print(f"[baseline] {self.phase} epoch {epoch + 1}: loss={logs['loss']:.4f} "
              f"val_accuracy={logs['val_accuracy']:.4f} {self.n * BATCH / s:.1f} images/s ({s:.1f}s)",
              flush=True)


def main(data, out):
    start = time.perf_counter()
    train, val = dataset(f"{data}/train/*", True), dataset(f"{data}/eval/*", False)
    base = tf.keras.applications.MobileNetV2(include_top=False, weights=None,
                                             input_shape=(SIZE, SIZE, 3), alpha=ALPHA)
    base.trainable = False
    inputs = tf.keras.Input((SIZE, SIZE, 3))
    x = tf.keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = base(x, training=False)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(10, activation="softmax")(x)
    model = tf.keras.Model(inputs, outputs)
    model.compile(tf.keras.optimizers.Adam(LR1), "sparse_categorical_crossentropy", ["accuracy"])
    t = time.perf_counter()
    model.fit(train, validation_data=val, epochs=PHASE1_EPOCHS, verbose=0, callbacks=[Speed("transfer")])
    print(f"[baseline] transfer done: {PHASE1_EPOCHS} epochs in {time.perf_counter() - t:.1f}s", flush=True)

    base.trainable = True
    start_layer = len(base.layers) - max(1, round(FRACTION * len(base.layers)))
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start_layer and not isinstance(layer, tf.keras.layers.BatchNormalization)
    model.compile(tf.keras.optimizers.Adam(LR2), "sparse_categorical_crossentropy", ["accuracy"])
    t = time.perf_counter()
    model.fit(train, validation_data=val, initial_epoch=PHASE1_EPOCHS,
              epochs=PHASE1_EPOCHS + PHASE2_EPOCHS, verbose=0, callbacks=[Speed("fine-tune")])
    print(f"[baseline] fine-tune done: {PHASE2_EPOCHS} epochs in {time.perf_counter() - t:.1f}s", flush=True)
    loss, acc = model.evaluate(val, verbose=0)
    print(f"[baseline] eval accuracy {acc:.4f}", flush=True)
    model.save(out, save_format="tf")
    print(f"[baseline] total {time.perf_counter() - start:.1f}s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 5:
        PHASE1_EPOCHS, PHASE2_EPOCHS = int(sys.argv[3]), int(sys.argv[4])
    main(sys.argv[1], sys.argv[2])

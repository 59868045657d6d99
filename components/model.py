"""The classifier: backbone normalization, base, new head; and the two training phases."""
from __future__ import annotations

import tensorflow as tf

from components import backbones

OPTIMIZERS = {
    "adam": tf.keras.optimizers.Adam,
    "rmsprop": tf.keras.optimizers.RMSprop,
    "sgd": tf.keras.optimizers.SGD,
}


def build_model(model_cfg: dict, num_classes: int) -> tuple[tf.keras.Model, tf.keras.Model]:
    """(classifier, base). The base is always called with training=False, so its
    BatchNorm layers stay in inference mode in both phases."""
    size = model_cfg["image_size"]
    spec = backbones.get(model_cfg["backbone"])
    base = backbones.build_base(spec.name, size, model_cfg["weights"], model_cfg["alpha"])
    base.trainable = False

    head = model_cfg["head"]
    inputs = tf.keras.Input(shape=(size, size, 3), name="image", dtype=tf.float32)
    x = spec.normalization()(inputs)
    x = base(x, training=False)
    if head["pooling"] == "avg":
        x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    elif head["pooling"] == "max":
        x = tf.keras.layers.GlobalMaxPooling2D(name="pool")(x)
    else:
        x = tf.keras.layers.Flatten(name="pool")(x)
    for i, units in enumerate(head["dense"]):
        x = tf.keras.layers.Dense(units, activation=head["activation"], name=f"head_dense_{i}")(x)
        if head["dropout"]:
            x = tf.keras.layers.Dropout(head["dropout"], name=f"head_dropout_{i}")(x)
    if head["dropout"] and not head["dense"]:
        x = tf.keras.layers.Dropout(head["dropout"], name="head_dropout")(x)
    # float32 output, so a mixed-precision policy never yields float16 probabilities.
    outputs = tf.keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return tf.keras.Model(inputs, outputs, name=f"xfer_{spec.name}"), base


def compile_for(model: tf.keras.Model, optimizer: str, learning_rate: float) -> None:
    model.compile(
        optimizer=OPTIMIZERS[optimizer](learning_rate=learning_rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def freeze_base(base: tf.keras.Model) -> None:
    """Phase 1, transfer: nothing in the base trains."""
    base.trainable = False


def unfreeze_top(base: tf.keras.Model, from_layer: str | None, fraction: float) -> list[str]:
    """Phase 2, fine-tune: unfreeze the base from `from_layer` (or the top `fraction`
    of its layers); BatchNorm layers stay frozen. Returns the names of unfrozen layers."""
    names = [layer.name for layer in base.layers]
    if from_layer is not None:
        if from_layer not in names:
            raise ValueError(
                f"train.fine_tune.from_layer: '{from_layer}' is not a layer of {base.name}; "
                f"layers with weights: {', '.join(l.name for l in base.layers if l.weights)}")
        start = names.index(from_layer)
    else:
        start = len(names) - max(1, round(fraction * len(names)))
    base.trainable = True
    unfrozen = []
    for i, layer in enumerate(base.layers):
        trainable = i >= start and not isinstance(layer, tf.keras.layers.BatchNormalization)
        layer.trainable = trainable
        if trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen

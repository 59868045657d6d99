"""The classifier: backbone normalization, base, new head; and the two training phases."""
from __future__ import annotations

import tensorflow as tf

from xfer.components import backbones
from xfer.components.settings import HeadConfig, HeadConvConfig, ModelConfig

OPTIMIZERS = {
    "adam": tf.keras.optimizers.Adam,
    "rmsprop": tf.keras.optimizers.RMSprop,
    "sgd": tf.keras.optimizers.SGD,
}


def build_model(m: ModelConfig, num_classes: int) -> tuple[tf.keras.Model, tf.keras.Model]:
    """(classifier, base). The base is always called with training=False, so its
    BatchNorm layers stay in inference mode in both phases."""
    size = m.image_size
    base = backbones.build_base(m.backbone, size, m.weights, m.alpha)
    base.trainable = False

    inputs = tf.keras.Input(shape=(size, size, 3), name="image", dtype=tf.float32)
    x = backbones.normalization(m.backbone)(inputs)
    x = base(x, training=False)
    if m.head.conv is not None:
        x = apply_head(_conv_layers(m.head.conv, base.output_shape[1:3], m.backbone, size), x)
    x = _pooling(m.head.pooling)(x)
    if m.head.pool_dropout:
        x = tf.keras.layers.Dropout(m.head.pool_dropout, name="head_pool_dropout")(x)
    outputs = apply_head(_head_layers(m.head, num_classes), x)
    return tf.keras.Model(inputs, outputs, name=f"xfer_{m.backbone}"), base


def _conv_layers(conv: HeadConvConfig, feature_map: tuple, backbone: str, size: int) -> list[tf.keras.layers.Layer]:
    """model.head.conv: a Conv2D on the base's feature map, then BatchNormalization. The
    BatchNorm is the head's, not the base's: it is called in training mode by fit (batch
    statistics, moving statistics updated) in both phases; unfreeze_top freezes only the
    base's."""
    if conv.padding == "valid" and min(feature_map) < conv.kernel:
        raise ValueError(
            f"model.head.conv.kernel: {conv.kernel} does not fit {backbone}'s {feature_map[0]} x {feature_map[1]} "
            f"feature map at image_size {size} (padding valid); set the kernel to {min(feature_map)} or less, "
            f"padding: same, or a larger model.image_size")
    layers = [tf.keras.layers.Conv2D(conv.filters, conv.kernel, padding=conv.padding, activation=conv.activation,
                                     name="head_conv")]
    if conv.batch_norm:
        layers.append(tf.keras.layers.BatchNormalization(name="head_conv_bn"))
    return layers


def _pooling(kind: str) -> tf.keras.layers.Layer:
    if kind == "avg":
        return tf.keras.layers.GlobalAveragePooling2D(name="pool")
    if kind == "max":
        return tf.keras.layers.GlobalMaxPooling2D(name="pool")
    return tf.keras.layers.Flatten(name="pool")


def _head_layers(head: HeadConfig, num_classes: int) -> list[tf.keras.layers.Layer]:
    layers = []
    for i, units in enumerate(head.dense):
        layers.append(tf.keras.layers.Dense(units, activation=head.activation, name=f"head_dense_{i}"))
        if head.dropout:
            layers.append(tf.keras.layers.Dropout(head.dropout, name=f"head_dropout_{i}"))
    if head.dropout and not head.dense:
        layers.append(tf.keras.layers.Dropout(head.dropout, name="head_dropout"))
    # float32 output, so a mixed-precision policy never yields float16 probabilities.
    layers.append(tf.keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                        name="probabilities"))
    return layers


def apply_head(layers: list[tf.keras.layers.Layer], x):
    for layer in layers:
        x = layer(x)
    return x


def split_at_pool(classifier: tf.keras.Model) -> tuple[tf.keras.Model, tf.keras.Model]:
    """(features, head): the frozen part, and the head after it, sharing the classifier's
    layers (training the head trains the classifier's head). The frozen part ends at the
    pooling layer (it has no weights, so its output is all phase 1 needs), or, with a
    model.head.conv, before that conv: the conv learns, so the cached features are the
    base's feature map."""
    names = [layer.name for layer in classifier.layers]
    first = names.index("head_conv") if "head_conv" in names else names.index("pool") + 1
    frozen_out = classifier.layers[first].input
    features = tf.keras.Model(classifier.input, frozen_out, name="features")
    head_in = tf.keras.Input(shape=frozen_out.shape[1:], name="features", dtype=frozen_out.dtype)
    head = tf.keras.Model(head_in, apply_head(classifier.layers[first:], head_in), name="head")
    return features, head


def compile_for(model: tf.keras.Model, optimizer: str, learning_rate,
                steps_per_execution: int = 1, *, label_smoothing: float = 0.0, soft_targets: bool = False,
                base_variables=(), base_lr_factor: float = 1.0) -> None:
    """`learning_rate`: a float or a schedule (recipe.PhaseSchedule). With label smoothing
    or soft (mixed) targets the loss one-hots the labels itself; with base_lr_factor < 1
    `base_variables` learn at learning_rate x factor. The defaults compile exactly as
    before: sparse cross-entropy, sparse accuracy, one plain optimizer."""
    from xfer.components import recipe

    if base_lr_factor != 1.0:
        opt = recipe.discriminative_optimizer(optimizer, learning_rate, base_variables, base_lr_factor)
    else:
        opt = OPTIMIZERS[optimizer](learning_rate=learning_rate)
    if label_smoothing or soft_targets:
        loss = recipe.SoftTargetCrossentropy(model.output_shape[-1], label_smoothing)
        accuracy = recipe.SoftTargetAccuracy(name="accuracy")
    else:
        loss = tf.keras.losses.SparseCategoricalCrossentropy()
        accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=opt, steps_per_execution=steps_per_execution, loss=loss, metrics=[accuracy])


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

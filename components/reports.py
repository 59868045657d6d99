"""What the user sees of a training run, saved with the model run: training curves,
a confusion matrix on the eval split, a grid of eval images titled actual/predicted
(the tutorials' plots), Grad-CAM heatmaps over eval images (why a prediction was made)
and the eval images with the highest loss (fastai's plot_top_losses), as PNG files."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import tensorflow as tf

CURVES, CONFUSION, GRID = "curves.png", "confusion_matrix.png", "eval_grid.png"
GRADCAM, TOP_LOSSES, TOP_LOSSES_JSON = "gradcam_grid.png", "top_losses.png", "top_losses.json"
PNGS = (CURVES, CONFUSION, GRID, GRADCAM, TOP_LOSSES)
# Grad-CAM and top losses: a bounded number of images, so they cost seconds on any split.
INSIGHT_IMAGES = 16
# Grad-CAM's map: the deepest convolutional feature map with at least this many cells a
# side. The base's last one is coarser on small images (VGG16 at 32 px: 2x2, MobileNetV2:
# 1x1), and a 1x1 or 2x2 map cannot say where in the image the evidence is.
MIN_CAM_SIDE = 4
# Plots stay bounded whatever the class names and count: a name is cut to NAME_CHARS on a
# tick or title (with an ellipsis), the confusion matrix grows with the class count up to
# MAX_FIGURE_INCHES a side and labels at most MAX_TICKS classes per axis, and no PNG is
# saved larger than MAX_PNG_SIDE pixels a side (before these, 5,000-character names drew
# a 31582x31591 px confusion matrix).
DPI = 90
NAME_CHARS = 24
MAX_FIGURE_INCHES = 22
MAX_TICKS = 150
MAX_PNG_SIDE = 2400


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def short(name: str, limit: int = NAME_CHARS) -> str:
    """A class name as a plot shows it: at most `limit` characters, an ellipsis if cut."""
    name = str(name)
    return name if len(name) <= limit else name[:limit - 1] + "\u2026"


def _save(fig, path: str) -> None:
    """The figure as a PNG, cropped to what is drawn ("tight"), unless that crop would be
    over MAX_PNG_SIDE pixels a side: then at the figure's own size (MAX_FIGURE_INCHES or
    less), text running off its edges cut."""
    buf, pad = io.BytesIO(), 0.1  # inches around the tight crop
    fig.canvas.draw()
    tight = fig.get_tightbbox(fig.canvas.get_renderer())
    fits = (max(tight.width, tight.height) + 2 * pad) * DPI <= MAX_PNG_SIDE
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if fits else None, pad_inches=pad)
    _pyplot().close(fig)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buf.getvalue())


def curves(history: dict, path: str) -> None:
    """Accuracy and loss per epoch, train vs validation, both phases on one timeline
    with the start of fine-tuning marked."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    start = 1
    for phase, h in history.items():
        n = len(next(iter(h.values()), []))
        epochs = np.arange(start, start + n)
        for ax, metric in zip(axes, ("accuracy", "loss")):
            for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
                if key in h:
                    ax.plot(epochs, h[key], style, label=f"{phase} {'validation' if key.startswith('val_') else 'train'}")
            if phase != next(iter(history)) and n:
                ax.axvline(start - 0.5, color="grey", linestyle=":")
        start += n
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.legend(fontsize=8)
    _save(fig, path)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (labels.astype(int), predicted.astype(int)), 1)
    return m


def plot_confusion(matrix: np.ndarray, names: list[str], path: str) -> None:
    plt = _pyplot()
    n = len(names)
    side = min(MAX_FIGURE_INCHES, max(4, 0.5 * n + 2))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    every = -(-n // MAX_TICKS)  # with more classes than fit, every k-th is labelled
    ticks = list(range(0, n, every))
    ax.set_xticks(ticks, [short(names[i]) for i in ticks], rotation=90, fontsize=7)
    ax.set_yticks(ticks, [short(names[i]) for i in ticks], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_title(f"eval confusion matrix (accuracy {np.trace(matrix) / max(matrix.sum(), 1):.3f})")
    _save(fig, path)


def plot_grid(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, names: list[str],
              path: str, side: int = 5) -> None:
    """Up to side x side eval images titled actual/predicted (red when wrong)."""
    plt = _pyplot()
    fig, axes = plt.subplots(side, side, figsize=(2 * side, 2 * side))
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(images):
            continue
        ax.imshow(np.clip(images[k], 0, 255).astype(np.uint8))
        right = labels[k] == predicted[k]
        ax.set_title(f"{short(names[labels[k]])}/{short(names[predicted[k]])}", fontsize=8,
                     color="black" if right else "red")
    fig.suptitle("eval images: actual/predicted")
    _save(fig, path)


def _is_conv(layer) -> bool:
    # Conv2D, DepthwiseConv2D and SeparableConv2D all derive from Keras' Conv base.
    return isinstance(layer, tf.keras.layers.Conv2D) or type(layer).__name__ in (
        "DepthwiseConv2D", "SeparableConv2D")


def _spatial(layer) -> int:
    shape = layer.output_shape
    return min(shape[1] or 0, shape[2] or 0) if isinstance(shape, tuple) and len(shape) == 4 else 0


def cam_layer(base: tf.keras.Model) -> str:
    """The layer of `base` whose output Grad-CAM weighs: after the deepest convolution with
    at least MIN_CAM_SIDE cells a side (else the finest), the last layer keeping its shape,
    so the map is the convolution's activated output (VGG16: block5_conv3 at 224 px,
    block4_conv3 at 32 px; MobileNetV2: out_relu at 224 px; ResNet50: conv5_block3_out;
    EfficientNetB0: top_activation). Raises ValueError when the base has no convolution."""
    layers = base.layers
    convs = [i for i, l in enumerate(layers) if _is_conv(l) and _spatial(l)]
    if not convs:
        raise ValueError(f"Grad-CAM: {base.name} has no convolutional layer with a 4-D output")
    wide = [i for i in convs if _spatial(layers[i]) >= MIN_CAM_SIDE]
    pick = wide[-1] if wide else max(convs, key=lambda i: (_spatial(layers[i]), i))
    shape = layers[pick].output_shape
    for layer in layers[pick + 1:]:
        if layer.output_shape != shape:
            break
        pick = layers.index(layer)
    return layers[pick].name


def _split_classifier(model: tf.keras.Model):
    """(layers before the base, the base, layers after it): the classifier of
    components/model.py is a chain with the backbone as one nested Model."""
    # Only the layers of the functional graph: the exported model also tracks the transform
    # layer as an attribute (components/export.py), which `model.layers` lists too.
    in_graph = {id(node.layer) for nodes in model._nodes_by_depth.values() for node in nodes}
    chain = [l for l in model.layers if id(l) in in_graph and not isinstance(l, tf.keras.layers.InputLayer)]
    nested = [i for i, l in enumerate(chain) if isinstance(l, tf.keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"Grad-CAM: expected one nested backbone model in {model.name}, found {len(nested)}")
    i = nested[0]
    return chain[:i], chain[i], chain[i + 1:]


def gradcam(model: tf.keras.Model, images, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """(heatmaps [n, H, W] in [0, 1], predicted classes [n]) for a batch of transformed
    images [n, H, W, 3]. Grad-CAM (Selvaraju et al.): the gradient of the class's score
    (the logit before the softmax; the predicted class unless `classes` is given) with
    respect to the backbone's feature map (cam_layer), averaged over the map's cells, weighs
    its channels; the ReLU of the weighted sum, upsampled to the image size. Computed in
    float32 whatever the mixed-precision policy."""
    before, base, after = _split_classifier(model)
    inner = tf.keras.Model(base.inputs, [base.get_layer(cam_layer(base)).output, base.output])
    last = after[-1]
    x = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        h = x
        for layer in before:
            h = layer(h, training=False)
        fmap, h = inner(h, training=False)
        tape.watch(fmap)
        for layer in after[:-1]:
            h = layer(h, training=False)
        # The output layer's logits: a softmax saturates, and its gradient vanishes for
        # confident predictions.
        logits = tf.matmul(tf.cast(h, tf.float32), tf.cast(last.kernel, tf.float32)) + tf.cast(last.bias, tf.float32)
        chosen = tf.argmax(logits, -1) if classes is None else tf.convert_to_tensor(classes, tf.int64)
        score = tf.gather(logits, chosen, batch_dims=1)
    grads = tf.cast(tape.gradient(score, fmap), tf.float32)
    fmap = tf.cast(fmap, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))[..., None]
    cam = tf.image.resize(cam, x.shape[1:3], method="bilinear")[..., 0]
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    cam = tf.math.divide_no_nan(cam, peak)
    return cam.numpy(), chosen.numpy()


def plot_gradcam(images: np.ndarray, heatmaps: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                 names: list[str], path: str) -> None:
    """Eval images with their Grad-CAM heatmap over them, titled actual/predicted (red when wrong)."""
    plt = _pyplot()
    side = max(1, int(np.ceil(np.sqrt(len(images)))))
    fig, axes = plt.subplots(side, side, figsize=(2 * side, 2 * side), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(images):
            continue
        ax.imshow(np.clip(images[k], 0, 255).astype(np.uint8))
        ax.imshow(heatmaps[k], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        ax.set_title(f"{short(names[labels[k]])}/{short(names[predicted[k]])}", fontsize=8,
                     color="black" if labels[k] == predicted[k] else "red")
    fig.suptitle("Grad-CAM on eval images: actual/predicted")
    _save(fig, path)


class TopLosses:
    """The `k` eval examples with the highest loss (-log probability of the actual class),
    kept over a pass in bounded memory, with their index in the eval split's order."""

    def __init__(self, k: int = INSIGHT_IMAGES):
        self.k, self.rows, self.images = k, [], {}
        self._seen = 0

    def add(self, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> None:
        p_true = probabilities[np.arange(len(labels)), labels.astype(int)].astype(np.float64)
        losses = -np.log(np.clip(p_true, 1e-12, 1.0))
        for j in range(len(labels)):
            self.rows.append({"index": self._seen + j, "loss": float(losses[j]), "actual": int(labels[j]),
                              "predicted": int(probabilities[j].argmax()),
                              "probability_actual": float(p_true[j])})
            self.images[self._seen + j] = images[j]
        self._seen += len(labels)
        self.rows.sort(key=lambda r: (-r["loss"], r["index"]))
        for r in self.rows[self.k:]:
            del self.images[r["index"]]
        del self.rows[self.k:]


def plot_top_losses(top: TopLosses, names: list[str], path: str) -> None:
    """The highest-loss eval images, titled actual/predicted/loss/probability of the actual class."""
    plt = _pyplot()
    side = max(1, int(np.ceil(np.sqrt(len(top.rows)))))
    fig, axes = plt.subplots(side, side, figsize=(2.4 * side, 2.4 * side), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(top.rows):
            continue
        r = top.rows[k]
        ax.imshow(np.clip(top.images[r["index"]], 0, 255).astype(np.uint8))
        ax.set_title(f"{short(names[r['actual']])}/{short(names[r['predicted']])}\n"
                     f"loss {r['loss']:.2f} p {r['probability_actual']:.2g}", fontsize=7,
                     color="black" if r["actual"] == r["predicted"] else "red")
    fig.suptitle("top losses: actual/predicted/loss/probability of actual")
    _save(fig, path)


def write_all(model: tf.keras.Model, eval_ds: tf.data.Dataset, history: dict, names: list[str],
              folder: str) -> dict:
    """All the PNGs from a pass over the eval split; returns {name: path}."""
    images, labels, predicted = [], [], []
    top = TopLosses()
    # One trace for every batch size (the last batch is smaller).
    spec = tf.TensorSpec([None, *eval_ds.element_spec[0].shape[1:]], eval_ds.element_spec[0].dtype)
    predict = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    for x, y in eval_ds:
        probs = tf.cast(predict(x), tf.float32).numpy()
        x_np, y_np = x.numpy(), y.numpy()
        labels.append(y_np)
        predicted.append(probs.argmax(-1))
        top.add(x_np, y_np, probs)
        if sum(len(i) for i in images) < 25:
            images.append(x_np[:25])
    labels, predicted = np.concatenate(labels), np.concatenate(predicted)
    grid_images = np.concatenate(images)[:25]
    paths = {name: os.path.join(folder, name) for name in PNGS}
    curves(history, paths[CURVES])
    plot_confusion(confusion_matrix(labels, predicted, len(names)), names, paths[CONFUSION])
    plot_grid(grid_images, labels[:len(grid_images)], predicted[:len(grid_images)], names, paths[GRID])
    cam_images = grid_images[:INSIGHT_IMAGES]
    heatmaps, cam_predicted = gradcam(model, cam_images)
    plot_gradcam(cam_images, heatmaps, labels[:len(cam_images)], cam_predicted, names, paths[GRADCAM])
    plot_top_losses(top, names, paths[TOP_LOSSES])
    with tf.io.gfile.GFile(os.path.join(folder, TOP_LOSSES_JSON), "w") as f:
        json.dump({"note": "index: position in the eval split as the Trainer reads it; loss: -log "
                           "probability of the actual class", "top_losses": top.rows}, f, indent=1)
    return paths

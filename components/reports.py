"""What the user sees of a training run, saved with the model run: training curves,
a confusion matrix on the eval split, and a grid of eval images titled actual/predicted
(the tutorials' plots), as PNG files."""
from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf

CURVES, CONFUSION, GRID = "curves.png", "confusion_matrix.png", "eval_grid.png"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
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
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n + 2), max(4, 0.5 * n + 2)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
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
        ax.set_title(f"{names[labels[k]]}/{names[predicted[k]]}", fontsize=8,
                     color="black" if right else "red")
    fig.suptitle("eval images: actual/predicted")
    _save(fig, path)


def write_all(model: tf.keras.Model, eval_ds: tf.data.Dataset, history: dict, names: list[str],
              folder: str) -> dict:
    """All three PNGs from a pass over the eval split; returns {name: path}."""
    images, labels, predicted = [], [], []
    # One trace for every batch size (the last batch is smaller).
    spec = tf.TensorSpec([None, *eval_ds.element_spec[0].shape[1:]], eval_ds.element_spec[0].dtype)
    predict = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    for x, y in eval_ds:
        p = predict(x).numpy().argmax(-1)
        labels.append(y.numpy())
        predicted.append(p)
        if sum(len(i) for i in images) < 25:
            images.append(x.numpy()[:25])
    labels, predicted = np.concatenate(labels), np.concatenate(predicted)
    grid_images = np.concatenate(images)[:25]
    paths = {name: os.path.join(folder, name) for name in (CURVES, CONFUSION, GRID)}
    curves(history, paths[CURVES])
    plot_confusion(confusion_matrix(labels, predicted, len(names)), names, paths[CONFUSION])
    plot_grid(grid_images, labels[:len(grid_images)], predicted[:len(grid_images)], names, paths[GRID])
    return paths

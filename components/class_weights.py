"""`train.class_weight`: per-class loss weights for imbalanced classes.

`balanced` is scikit-learn's formula, weight_c = n_total / (n_classes * n_c), from the
train split's label counts that DataCheck wrote beside the examples the Trainer reads
(label_counts.json, labels as strings). An integer label is its class index; a string
label's index is its entry in Transform's label vocabulary.
"""
from __future__ import annotations

import os
from typing import Optional


class ClassWeightError(ValueError):
    """`train.class_weight: balanced` cannot be computed; the message names the fix."""


def examples_uri(train_files: list[str]) -> str:
    """The Trainer's examples folder (DataCheck's output) from its train file pattern,
    `<uri>/Split-train/*`."""
    return os.path.dirname(os.path.dirname(train_files[0]))


def balanced(train_counts: dict[str, int], names: list[str],
             vocabulary: Optional[list[str]] = None) -> dict[int, float]:
    """{class index: weight} for every class in `names`, from {label (str): count} of
    the train split. `vocabulary`: Transform's label vocabulary for string labels, None
    for integer labels. A class with no train example is refused: a weight cannot make
    a model learn a class it never sees."""
    if vocabulary is not None:
        index_of = {label: i for i, label in enumerate(vocabulary)}
    else:
        index_of = {str(i): i for i in range(len(names))}
    counts = [0] * len(names)
    for label, n in train_counts.items():
        if label in index_of:
            counts[index_of[label]] += int(n)
    missing = [f"{i} '{names[i]}'" if names[i] != str(i) else str(i) for i, n in enumerate(counts) if n == 0]
    if missing:
        which = "class " + missing[0] if len(missing) == 1 else "classes " + ", ".join(missing)
        raise ClassWeightError(
            f"train.class_weight is balanced but {which} ha{'s' if len(missing) == 1 else 've'} no "
            f"example in the train split: a model cannot learn a class it never sees. Add train "
            f"examples of {'it' if len(missing) == 1 else 'them'}, or drop "
            f"{'it' if len(missing) == 1 else 'them'} from the classes (data.labels_file / "
            f"data.num_classes, renumbering integer labels)")
    total, k = sum(counts), len(names)
    return {i: total / (k * n) for i, n in enumerate(counts)}


def for_training(setting: str, train_files: list[str], names: list[str],
                 vocabulary: Optional[list[str]]) -> Optional[dict[int, float]]:
    """The weights Keras' fit(class_weight=...) takes for `train.class_weight`, or None."""
    if setting == "none":
        return None
    from xfer.components.data_check import LABEL_COUNTS, read_label_counts

    uri = examples_uri(train_files)
    try:
        by_split = read_label_counts(uri)
    except Exception as e:  # noqa: BLE001 - NotFoundError, or JSON that is not DataCheck's
        raise ClassWeightError(
            f"train.class_weight is balanced but DataCheck's label counts "
            f"({os.path.join(uri, LABEL_COUNTS)}) cannot be read ({type(e).__name__}: {e}); the "
            f"Trainer's examples must be DataCheck's output, or set train.class_weight: none") from e
    return balanced(by_split.get("train", {}), names, vocabulary)


def describe(weights: dict[int, float], names: list[str]) -> str:
    """`cat=0.83, dog=1.25`, in class order."""
    return ", ".join(f"{names[i]}={w:.2f}" for i, w in sorted(weights.items()))

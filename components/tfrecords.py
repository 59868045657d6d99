"""Small rules about TFRecord files and tf.Example records, shared by the steps and the
CLI; nothing heavy is imported here (`xfer predict` and the preflight use it too)."""
from __future__ import annotations

import hashlib


def compression_of(path: str) -> str:
    """How a TFRecord file is read: GZIP when its name ends in .gz or .gzip."""
    return "GZIP" if path.endswith((".gz", ".gzip")) else ""


def fingerprint(raw: bytes) -> str:
    """A serialized record's identity, kept with its source file (provenance)."""
    return hashlib.blake2b(raw, digest_size=10).hexdigest()


def label_text(feature) -> str:
    """A label feature's one value as text (an int64 or a UTF-8 string): the key of the
    label counts and of the drift statistics alike."""
    if feature.int64_list.value:
        return str(feature.int64_list.value[0])
    return feature.bytes_list.value[0].decode("utf-8", "replace")

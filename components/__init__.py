"""Code that runs inside the pipeline's steps.

No TensorFlow import here: `xfer --help` and config validation import this package
(components/settings.py), and must stay instant.
"""
import os

# TFT and TFMA need Keras 2. This is the one place it is set: it must happen before
# TensorFlow is first imported, and every xfer module that imports TensorFlow lives in
# this package or in xfer.pipeline, whose __init__ imports this one.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# oneDNN's CPU kernels. On Linux, TensorFlow turns them on by default only on CPUs with
# AVX-512 VNNI or BF16, AVX-VNNI or AMX (DefaultOneDnnPolicy in
# tensorflow/core/util/port.cc); on a 2-core AVX2 CPU they made the bench's phase 2
# 1.12 to 1.14 times faster (docs/speed.md). Results
# differ from Eigen's by float round-off only. A user's own TF_ENABLE_ONEDNN_OPTS=0 wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

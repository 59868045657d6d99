"""Code that runs inside the pipeline's steps.

No TensorFlow import here: `xfer --help` and config validation import this package
(components/settings.py), and must stay instant.
"""
import os

# TFT and TFMA need Keras 2. This is the one place it is set: it must happen before
# TensorFlow is first imported, and every xfer module that imports TensorFlow lives in
# this package or in xfer.pipeline, whose __init__ imports this one.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

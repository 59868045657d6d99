"""The xfer pipeline: config, DAG, runners and CLI."""
import os

# TFT and TFMA need Keras 2; this must be set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

"""The xfer pipeline: config, DAG, runners and CLI."""
# Before any module here imports TensorFlow: xfer.components sets TF_USE_LEGACY_KERAS
# (it imports no TensorFlow itself, so `xfer --help` stays instant).
import xfer.components  # noqa: F401

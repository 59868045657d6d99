"""assets.extra/tf_serving_warmup_requests: requests TF Serving replays when it loads a
version, so the first client request does not pay for tracing and allocation.

The format is TF Serving's (tensorflow_serving/g3doc/saved_model_warmup.md): an
uncompressed TFRecord file of PredictionLog protos, each holding a PredictRequest; the
protos are tensorflow-serving-api's, which TFX already depends on (InfraValidator writes
the same file). Here: one request per image (a batch of one, the shape most clients send)
and one request of all of them, for `serving_default` on raw encoded image bytes.
"""
from __future__ import annotations

import os

import tensorflow as tf

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
SIGNATURE = "serving_default"
INPUT = "images"  # serving_default's one input (components/export.py)


def requests(images: list[bytes]) -> list:
    """The PredictRequests written: each image alone, then all of them in one batch."""
    from tensorflow_serving.apis import predict_pb2

    def request(batch: list[bytes]):
        r = predict_pb2.PredictRequest()
        r.model_spec.signature_name = SIGNATURE
        r.inputs[INPUT].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string, shape=[len(batch)]))
        return r
    return [request([image]) for image in images] + ([request(images)] if len(images) > 1 else [])


def write(version_dir: str, images: list[bytes]) -> str:
    """The warm-up file in `version_dir` (the staged version), from a few eval images."""
    from tensorflow_serving.apis import prediction_log_pb2

    if not images:
        raise ValueError("no images to write warm-up requests from")
    path = os.path.join(version_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as w:
        for request in requests(images):
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            w.write(log.SerializeToString())
    return path

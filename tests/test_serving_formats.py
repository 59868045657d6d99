"""TF Serving's formats: the warm-up file parses with TF Serving's own protos and its
requests run on the signature; the REST JSON docs/serving.md documents, converted by TF
Serving's REST rules (tests/tf_serving_rest.py, from json_tensor.cc), gives the classes
`xfer predict` gives for the same files; and what TF Serving refuses is refused.

The export is the Trainer's (export.signatures with a real transform graph), pushed by
the real push_version; `xfer predict` is the console script."""
import base64
import json
import re

import numpy as np
import pytest

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from conftest import xfer
from settings_helpers import transform_graph
from test_canary import jpeg
from test_tta import NAMES, SIZE, left_minus_right_model, png
from tf_serving_rest import RestError, signature_inputs, to_inputs
from xfer.components import export, pusher, serving_warmup
from xfer.components.labels import write_labels_file

DOCS = __import__("pathlib").Path(__file__).parent.parent / "docs" / "serving.md"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    tft_output = transform_graph(root, [{"image": png(i % 2, i), "label": i % 2} for i in range(4)], SIZE)
    model = left_minus_right_model()
    path = root / "model" / "Format-Serving"
    model.save(str(path), save_format="tf", signatures=export.signatures(model, tft_output, "image", NAMES),
               save_traces=False)
    export.write_serving_json(str(path), SIZE)
    write_labels_file(str(path / "assets.extra" / "labels.txt"), NAMES)
    version, _ = pusher.push_version(str(path), "uri://model", str(root / "serving"), keep=None)
    files = []
    for i in range(6):
        f = root / f"image{i}.{'png' if i % 2 else 'jpg'}"
        f.write_bytes((png if i % 2 else jpeg)(i % 3 % 2, 300 + i))
        files.append(f)
    fn = tf.saved_model.load(version).signatures["serving_default"]
    return {"root": root, "version": version, "files": files, "fn": fn}


def documented_json() -> str:
    """The request body docs/serving.md shows in its REST section."""
    text = DOCS.read_text()
    section = text[text.index("## REST requests: TF Serving, Vertex AI, KServe"):]
    return re.search(r"```json\n(.*?)\n```", section, re.S).group(1)


def predict_classes(served) -> list[str]:
    got = json.loads(xfer("predict", served["version"], *map(str, served["files"]), "--json").stdout)
    return [r["top"][0]["class"] for r in got]


def test_the_documented_rest_json_gives_the_classes_xfer_predict_gives(served):
    body = documented_json()
    placeholders = re.findall(r'"<base64 of [^"]*>"', body)
    assert len(placeholders) == 2, body
    # The documented body, with its two example images; then as many as we have, in the same form.
    one = json.loads(body)["instances"][0]
    assert list(one) == ["images"] and list(one["images"]) == ["b64"]
    instances = [{"images": {"b64": base64.b64encode(f.read_bytes()).decode()}} for f in served["files"]]
    request = body.replace(body[body.index("["):body.rindex("]") + 1], json.dumps(instances))
    inputs = signature_inputs(served["fn"])
    assert inputs == {"images": "string"}  # DT_STRING: the b64 objects decode
    signature, tensors, form = to_inputs(request, inputs)
    assert (signature, form) == ("", "row") and tensors["images"].shape == (len(served["files"]),)
    assert list(tensors["images"]) == [f.read_bytes() for f in served["files"]]
    out = served["fn"](images=tf.constant(list(tensors["images"])))
    classes = [c.decode() for c in out["class_name"].numpy()]
    assert classes == predict_classes(served)
    assert set(classes) == {"left", "right"}  # both classes occur: the comparison can fail
    # The columnar form the Signatures section shows gives the same.
    columnar = json.dumps({"signature_name": "serving_default",
                           "inputs": {"images": [i["images"] for i in instances]}})
    signature, tensors, form = to_inputs(columnar, inputs)
    assert (signature, form) == ("serving_default", "columnar")
    assert [c.decode() for c in served["fn"](images=tf.constant(list(tensors["images"])))["class_name"].numpy()] == classes


def test_the_warmup_file_parses_as_tf_serving_prediction_logs_and_runs(served, tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    images = [f.read_bytes() for f in served["files"][:4]]
    path = serving_warmup.write(str(tmp_path), images)
    assert path == str(tmp_path / "assets.extra" / "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r)
            for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]  # uncompressed, as TF Serving reads it
    assert len(logs) == 5
    for k, log in enumerate(logs):
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        assert list(request.inputs) == list(signature_inputs(served["fn"]))  # ["images"]
        tensor = request.inputs["images"]
        assert tf.dtypes.as_dtype(tensor.dtype) == tf.string
        batch = tf.make_ndarray(tensor)
        assert list(batch) == (images[k:k + 1] if k < 4 else images)
        out = served["fn"](images=tf.constant(batch))
        assert list(out["error"].numpy()) == [b""] * len(batch)
    with pytest.raises(ValueError, match="no images"):
        serving_warmup.write(str(tmp_path / "none"), [])


B64 = {"b64": base64.b64encode(b"\x89PNG").decode()}


@pytest.mark.parametrize("body, inputs, error", [
    ("", {"images": "string"}, "The document is empty"),
    ("[1]", {"images": "string"}, "Is not object"),
    ('{"signature_name": 1, "instances": [1]}', {"images": "string"}, "'signature_name' key must be a string"),
    ('{"instances": [{"images": %s}], "inputs": {"images": [%s]}}' % (json.dumps(B64), json.dumps(B64)),
     {"images": "string"}, "only one of 'inputs' or 'instances'"),
    ('{"instances": []}', {"images": "string"}, "No values in 'instances' array"),
    ('{"instances": {"images": 1}}', {"images": "string"}, "'instances' to be an list/array"),
    ('{"predict": []}', {"images": "string"}, "Missing 'inputs' or 'instances' key"),
    ('{"instances": [{"image": %s}]}' % json.dumps(B64), {"images": "string"}, "does not have named input: image"),
    ('{"instances": [{"images": %s, "extra": 1}]}' % json.dumps(B64), {"images": "string", "extra": "int64",
                                                                       "more": "int64"}, "keys must be equal to"),
    ('{"instances": [{"images": %s}, %s]}' % (json.dumps(B64), json.dumps(B64)), {"images": "string"},
     "Expecting object but got list at item 1"),
    ('{"instances": [%s, {"images": %s}]}' % (json.dumps(B64), json.dumps(B64)), {"images": "string"},
     "Expecting value/list but got object at item 1"),
    ('{"instances": [1]}', {"images": "string", "k": "int64"}, "instances is a plain list"),
    ('{"instances": [%s]}' % json.dumps(B64), {"images": "string", "k": "int64"}, "missing k"),
    ('{"instances": [{"images": {"b64": "AAAA", "x": 1}}]}', {"images": "string"},
     "not formatted correctly for base64 data"),
    ('{"instances": [{"images": {"b64": "%%%%"}}]}', {"images": "string"}, "Unable to base64 decode"),
    ('{"instances": [{"pixels": {"b64": "AAAA"}}]}', {"pixels": "float32"}, "Type: Object is not of expected type"),
    ('{"instances": [{"images": [[%s]]}]}' % json.dumps(B64), {"images": "string"}, None),  # rank 2: accepted
    ('{"instances": [{"images": [%s]}, {"images": [%s, %s]}]}' % ((json.dumps(B64),) * 3), {"images": "string"},
     "Expecting shape [1] but got: [2]"),
    ('{"instances": [{"images": [[%s], %s]}]}' % ((json.dumps(B64),) * 2), {"images": "string"},
     "found at incorrect level"),
    ('{"instances": [{"images": [%s, [%s]]}]}' % ((json.dumps(B64),) * 2), {"images": "string"},
     "Encountered list at unexpected level"),
    ('{"inputs": {"other": [%s]}}' % json.dumps(B64), {"images": "string", "k": "int64"},
     "Missing named input: images in 'inputs' object"),
    ('{"inputs": [%s]}' % json.dumps(B64), {"images": "string", "k": "int64"}, "inputs is a plain value/list"),
    ('{"instances": [{"images": 3}]}', {"images": "string"}, "is not of expected type: string"),
])
def test_what_tf_serving_refuses_is_refused(body, inputs, error):
    if error is None:
        _, tensors, _ = to_inputs(body, inputs)
        assert tensors["images"].shape == (1, 1, 1)
        return
    with pytest.raises(RestError, match=re.escape(error)):
        to_inputs(body, inputs)


def test_a_bare_b64_value_per_instance_is_the_one_input(served):
    """With one input TF Serving also takes each instance as the bare value."""
    image = served["files"][0].read_bytes()
    body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]})
    _, tensors, form = to_inputs(body, signature_inputs(served["fn"]))
    assert form == "row" and list(tensors["images"]) == [image]
    np.testing.assert_array_equal(served["fn"](images=tf.constant(list(tensors["images"])))["class_id"].numpy(),
                                  served["fn"](images=tf.constant([image]))["class_id"].numpy())

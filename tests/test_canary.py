"""The canary before push (components/canary.py): a staged version is loaded in a process
with TensorFlow only and serving_default is called with eval images' raw bytes; its top-1
must equal the Evaluator's signature on the same records, its outputs the documented ones,
and a request of serving.max_batch images must succeed.

The model is test_tta's left-minus-right model (class "left" or "right" by which half of
the image is brighter): its answer flips when an image is mirrored, so a serving signature
that reads columns right to left (the wrong preprocessing, built here in the test, not
reachable from any config) gets every image wrong while TFMA, which calls serving_examples,
sees accuracy 1.0 and blesses it. Exports are the Trainer's (export.signatures with a real
transform graph, saved as the Trainer saves); the blessing is a real TFMA run; the push is
the real Pusher executor."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from settings_helpers import make_config, transform_graph
from test_tta import NAMES, SIZE, left_minus_right_model, png
from xfer.components import canary, export, pusher
from xfer.components.labels import write_labels_file
from xfer.components.settings import ServingConfig
from xfer.components.transform import decode_images
from xfer.pipeline.data.records import image_example


def jpeg(label: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png(label, seed))).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def mirrored_serving(model, serving=None, class_id_dtype=tf.int64):
    """A serving_default with the wrong preprocessing: each decoded image mirrored (columns
    read right to left) before the model. Same input and outputs as the real one."""
    serving = serving or ServingConfig()
    names = tf.constant(NAMES)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve(images):
        probabilities = model(tf.image.flip_left_right(decode_images(images, SIZE)), training=False)
        n = tf.shape(images)[0]
        class_id = tf.argmax(probabilities, axis=-1)
        out = {"probabilities": probabilities, "class_id": tf.cast(class_id, class_id_dtype),
               "class_name": tf.gather(names, class_id), "error": tf.fill([n], ""),
               "abstained": tf.zeros([n], tf.bool)}
        return {k: out[k] for k in export.OUTPUTS}
    return serve.get_concrete_function()


def save_version(root, name, model, tft_output, serving=None, serving_default=None, max_batch_json=None):
    """A Trainer-like model artifact: <root>/<name>/Format-Serving with labels and serving.json."""
    path = root / name / "Format-Serving"
    sigs = export.signatures(model, tft_output, "image", NAMES, serving)
    if serving_default is not None:
        sigs["serving_default"] = serving_default
    model.save(str(path), save_format="tf", signatures=sigs, save_traces=False)
    export.write_serving_json(str(path), SIZE, serving)
    if max_batch_json is not None:  # a serving.json that promises more than the signature takes
        doc = json.loads((path / export.SERVING_JSON).read_text())
        doc["max_batch"] = max_batch_json
        (path / export.SERVING_JSON).write_text(json.dumps(doc))
    write_labels_file(str(path / "assets.extra" / "labels.txt"), NAMES)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("canary")
    tft_output = transform_graph(root, [{"image": png(i % 2, i), "label": i % 2} for i in range(4)], SIZE)
    model = left_minus_right_model()
    eval_dir = root / "examples" / "Split-eval"
    eval_dir.mkdir(parents=True)
    # PNG and JPEG eval images of both classes, as DataCheck's checked examples hold them.
    images = [(png if i < 6 else jpeg)(i % 2, 200 + i) for i in range(12)]
    with tf.io.TFRecordWriter(str(eval_dir / "data_tfrecord-00000-of-00001")) as w:
        for i, image in enumerate(images):
            w.write(image_example(image, i % 2))
    return {"root": root, "model": model, "tft": tft_output, "images": images,
            "examples": str(root / "examples"), "data": str(eval_dir / "data_tfrecord-00000-of-00001"),
            "good": save_version(root, "good", model, tft_output),
            "broken": save_version(root, "broken", model, tft_output, serving_default=mirrored_serving(model))}


def tfma_blessing(setup, model_dir, out):
    """A real TFMA run with the pipeline's eval config (accuracy >= 0.9): (blessed, accuracy)."""
    import tensorflow_model_analysis as tfma

    from xfer.pipeline.blessing import read_blessing
    from xfer.pipeline.pipeline import eval_config

    cfg = eval_config(make_config(eval={"min_accuracy": 0.9, "max_drop": None}))
    tfma.run_model_analysis(
        eval_shared_model=tfma.default_eval_shared_model(eval_saved_model_path=str(model_dir), eval_config=cfg),
        eval_config=cfg, data_location=setup["data"], output_path=str(out))
    return tfma.load_validation_result(str(out)).validation_ok, read_blessing(str(out), True, NAMES).candidate


def push(setup, name, evaluation_uri, base):
    """The real Pusher executor, blessed, with the eval examples and the evaluation."""
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    def artifact(kind, uri):
        a = kind()
        a.uri = str(uri)
        return a
    blessing = artifact(standard_artifacts.ModelBlessing, setup["root"] / f"blessing-{name}")
    blessing.set_int_custom_property("blessed", 1)
    pushed = artifact(standard_artifacts.PushedModel, setup["root"] / f"pushed-{name}")
    settings = make_config().pusher_settings(code_fingerprint="test")
    pusher.Executor().Do(
        {"model": [artifact(standard_artifacts.Model, setup["root"] / name)], "model_blessing": [blessing],
         "examples": [artifact(standard_artifacts.Examples, setup["examples"])],
         "evaluation": [artifact(standard_artifacts.ModelEvaluation, evaluation_uri)]},
        {"pushed_model": [pushed]},
        {"push_destination": proto_utils.proto_to_json(pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(base)))),
         "custom_config": json.dumps(settings.model_dump(mode="json"))})
    return pushed


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_broken_serving_signature_blessed_by_tfma_is_refused_and_a_good_one_is_pushed_with_its_latency(setup):
    root = setup["root"]
    blessed, accuracy = tfma_blessing(setup, setup["broken"], root / "eval-broken")
    assert blessed and accuracy == pytest.approx(1.0)  # TFMA calls serving_examples: it sees nothing wrong
    base = root / "serving"
    with pytest.raises(canary.CanaryRefused) as refused:
        push(setup, "broken", root / "eval-broken", base)
    line = str(refused.value)
    assert "\n" not in line
    assert line == ("canary refused the model: top-1: serving_default on its raw bytes gave class 1 ('right'), "
                    "serving_examples on its tf.Example (the Evaluator's) gave class 0 on eval record 6 of "
                    "Split-eval/data_tfrecord-00000-of-00001 (JPEG); nothing pushed"), line
    assert not base.exists() or os.listdir(base) == []  # no version, no .staging-* left

    blessed, _ = tfma_blessing(setup, setup["good"], root / "eval-good")
    assert blessed
    pushed = push(setup, "good", root / "eval-good", base)
    assert pushed.get_string_custom_property("pushed_destination") == str(base / "1")
    assert sorted(os.listdir(base)) == ["1"]
    card = (base / "1" / "MODEL_CARD.md").read_text()
    assert "## Serving canary" in card
    assert ("12 eval image(s) (JPEG, PNG); top-1 (class_id) of serving_default on each image's raw encoded "
            "bytes, in a process with TensorFlow only, equals that of serving_examples on the tf.Examples "
            "(the signature the Evaluator called)") in card, card
    rows = [line for line in card.splitlines() if line.startswith("| one image |") or line.startswith("| 256 images |")]
    assert len(rows) == 2, card
    for row in rows:
        p50, p99 = (float(cell.strip().removesuffix(" ms")) for cell in row.strip("|").split("|")[2:4])
        assert 0 < p50 <= p99, row
    assert (base / "1" / "assets.extra" / "tf_serving_warmup_requests").exists()


def test_outputs_of_the_wrong_dtype_are_refused(setup):
    model_dir = save_version(setup["root"], "int32", setup["model"], setup["tft"],
                             serving_default=mirrored_serving(setup["model"], class_id_dtype=tf.int32))
    with pytest.raises(canary.CanaryRefused, match=r"^canary refused the model: outputs: serving_default declares "
                                                   r"\{.*\"class_id\": \"int32\".*\}, documented \{.*\"class_id\": "
                                                   r"\"int64\".*\}; nothing pushed$"):
        canary.check(str(model_dir), setup["examples"], "image", None)


def test_a_request_of_max_batch_images_must_succeed(setup):
    # The signature refuses more than 8 images; serving.json tells clients they may send 20.
    model_dir = save_version(setup["root"], "small-batch", setup["model"], setup["tft"],
                             serving=ServingConfig(max_batch=8), max_batch_json=20)
    with pytest.raises(canary.CanaryRefused, match=r"^canary refused the model: max_batch: a request of 20 images "
                                                   r"\(serving.max_batch\) failed: InvalidArgumentError: .*above "
                                                   r"serving.max_batch \(8\)"):
        canary.check(str(model_dir), setup["examples"], "image", None)


def test_the_good_export_passes_and_says_what_it_compared(setup):
    report = canary.check(str(setup["good"]), setup["examples"], "image", None, n=4)
    assert report.images == 4 and report.formats == ["JPEG", "PNG"]  # both formats, round-robin
    assert len(report.single) == canary.SINGLE_REPEATS and len(report.batch) == canary.BATCH_REPEATS
    assert report.max_batch == 256


def test_eval_images_take_every_format_and_the_stored_bytes(setup):
    chosen = canary.eval_images(setup["examples"], "image", 3)
    assert [c.format for c in chosen] == ["JPEG", "PNG", "JPEG"]
    assert chosen[0].image == setup["images"][6] and chosen[1].image == setup["images"][0]
    assert tf.train.Example.FromString(chosen[0].example).features.feature["image"].bytes_list.value[0] == \
        setup["images"][6]
    with pytest.raises(canary.CanaryRefused, match="no eval image under 'photo'"):
        canary.eval_images(setup["examples"], "photo", 3)


def test_the_probe_runs_with_tensorflow_alone(setup):
    got = canary.run_probe(str(setup["good"]), setup["images"][:2], 4)
    assert got["forbidden_imported"] == [] and got["forbidden_attempts"] == []
    assert got["inputs"] == {"images": {"dtype": "string", "shape": [None]}}
    # xfer is importable in this interpreter with -I ...
    ok = subprocess.run([sys.executable, "-I", "-c", "import xfer.components"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    # ... and the probe's import hook refuses it.
    refused = subprocess.run(
        [sys.executable, "-I", "-c", "import importlib.util as u, sys; s = u.spec_from_file_location('p', sys.argv[1]); "
         "m = u.module_from_spec(s); s.loader.exec_module(m); import xfer.components", canary.PROBE],
        capture_output=True, text=True, env={"PATH": os.environ["PATH"], "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert refused.returncode != 0
    assert "canary probe: 'xfer' may not be imported" in refused.stderr, refused.stderr[-2000:]


def test_the_reference_is_the_signature_the_evaluator_called_unless_serving_differs(setup, tmp_path):
    import tensorflow_model_analysis as tfma
    from google.protobuf import json_format
    from tensorflow_model_analysis.proto import config_pb2

    def evaluation(signature):
        """An evaluation folder whose eval_config.json (as TFMA writes it) names `signature`."""
        out = tmp_path / signature
        out.mkdir()
        run = config_pb2.EvalRun(eval_config=tfma.EvalConfig(model_specs=[tfma.ModelSpec(signature_name=signature)]),
                                 version=tfma.__version__, data_location=setup["data"], file_format="tfrecords")
        (out / "eval_config.json").write_text(json_format.MessageToJson(run))
        return str(out)
    assert canary.reference_signature(str(setup["good"]), evaluation("serving_examples"))[0] == "serving_examples"
    sig, note = canary.reference_signature(str(setup["good"]), evaluation("serving_examples_flips"))
    assert sig == "serving_examples"
    assert "the Evaluator called serving_examples_flips, but serving_default is one pass (serving.tta)" in note

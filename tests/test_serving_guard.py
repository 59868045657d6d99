"""The exported serving signatures on untrusted input: a decompression
bomb is refused from its header without being decoded, one bad image never fails the
others, an empty batch is fine, an oversized batch is refused naming the limit, and the
limits are written beside the model. A tiny real model goes through the real export path
(export.signatures with a real transform graph, as the Trainer saves it)."""
import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from settings_helpers import small_model, transform_graph
from xfer.components import export
from xfer.components.labels import write_labels_file
from xfer.components.model import build_model
from xfer.components.settings import ServingConfig
from xfer.pipeline.data.records import image_example

SIZE, CLASSES, MAX_BATCH = 32, 3, 8
UNDECODABLE = b"not a decodable JPEG, PNG, GIF or BMP image"


def encoded(fmt, mode="RGB", size=(45, 30)):
    from sklearn.datasets import load_sample_image
    img = Image.fromarray(load_sample_image("china.jpg")).resize(size).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving-guard")
    raw = [{"image": encoded("PNG"), "label": i % CLASSES} for i in range(4)]
    tft_output = transform_graph(root, raw, SIZE)

    tf.keras.utils.set_random_seed(1)
    classifier, _ = build_model(small_model(image_size=SIZE), CLASSES)
    names = ["cat", "dog", "owl"]
    serving = ServingConfig(max_batch=MAX_BATCH)
    sigs = export.signatures(classifier, tft_output, "image", names, serving)
    model_dir = root / "model"
    classifier.save(str(model_dir), save_format="tf", signatures=sigs, save_traces=False)
    export.write_serving_json(str(model_dir), SIZE, serving)
    write_labels_file(str(model_dir / "assets.extra" / "labels.txt"), names)
    model = tf.saved_model.load(str(model_dir))
    return {"dir": model_dir, "model": model, "serve": model.signatures["serving_default"],
            "tft_output": tft_output}


def test_bad_images_get_their_own_error_and_the_others_exactly_their_own_result(served):
    serve = served["serve"]
    png, jpeg = encoded("PNG", "L", (20, 50)), encoded("JPEG", size=(200, 150))
    out = {k: v.numpy() for k, v in serve(images=tf.constant([png, jpeg[: len(jpeg) // 2], b"", jpeg])).items()}
    assert out["error"].tolist() == [b"", UNDECODABLE, b"empty image", b""]
    assert out["class_id"][1] == out["class_id"][2] == -1 and out["class_name"][1:3].tolist() == [b"", b""]
    assert not out["probabilities"][1:3].any()
    for i, image in ((0, png), (3, jpeg)):
        alone = serve(images=tf.constant([image]))
        np.testing.assert_array_equal(out["probabilities"][i], alone["probabilities"].numpy()[0])
        assert out["class_name"][i] == alone["class_name"].numpy()[0] != b""
    # ... and equal to the Keras model on the transform graph's own output.
    transformed = served["tft_output"].transform_raw_features(
        {"image": tf.constant([png, jpeg])}, drop_unused_features=True)["image"]
    keras_model = tf.keras.models.load_model(str(served["dir"]), compile=False)
    np.testing.assert_allclose(out["probabilities"][[0, 3]], keras_model(transformed).numpy(), atol=1e-5)
    # Other formats, and bytes that are no image at all.
    out = serve(images=tf.constant([encoded("GIF", "P"), encoded("BMP"), encoded("PNG", "RGBA"), b"hello"]))
    assert out["error"].numpy().tolist() == [b"", b"", b"", UNDECODABLE]
    # serving_examples: the same rules per example, plus a record that does not parse.
    out = served["model"].signatures["serving_examples"](examples=tf.constant(
        [image_example(png, 0), b"not a record", image_example(jpeg[:100], 0), image_example(jpeg, 1)]))
    assert out["error"].numpy().tolist() == [b"", b"not a tf.Example with an 'image' image feature",
                                             UNDECODABLE, b""]
    assert out["class_id"].numpy()[1] == -1


def test_empty_batch_gives_empty_outputs(served):
    out = served["serve"](images=tf.constant([], tf.string))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "probabilities": (0, CLASSES), "class_id": (0,), "class_name": (0,), "error": (0,), "abstained": (0,)}
    # Every image refused: nothing reaches the model, each gets its own error.
    out = served["serve"](images=tf.constant([b"", b"hello"]))
    assert out["error"].numpy().tolist() == [b"empty image", UNDECODABLE]
    assert out["class_id"].numpy().tolist() == [-1, -1] and not out["probabilities"].numpy().any()


def test_batch_above_max_batch_is_refused_naming_the_limit(served):
    png = encoded("PNG")
    assert served["serve"](images=tf.constant([png] * MAX_BATCH))["error"].numpy().tolist() == [b""] * MAX_BATCH
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"batch of {MAX_BATCH + 1} images is above serving.max_batch \({MAX_BATCH}\): "
                             r"the whole request is refused"):
        served["serve"](images=tf.constant([png] * (MAX_BATCH + 1)))


def test_limits_are_written_beside_the_model(served):
    limits = json.loads((served["dir"] / "assets.extra" / "serving.json").read_text())
    assert limits["max_pixels"] == 40_000_000 and limits["max_batch"] == MAX_BATCH
    assert limits["image_size"] == SIZE
    assert limits["outputs"] == ["probabilities", "class_id", "class_name", "error", "abstained"]


def _gif(frames, size, screen=None):
    """A GIF of `frames` distinct one-colour frames; `screen` overrides the size its header
    claims (the logical screen), as an attacker would."""
    import struct
    buf = io.BytesIO()
    images = [Image.new("L", size, 10 + i % 200) for i in range(frames)]
    images[0].save(buf, format="GIF", save_all=frames > 1, append_images=images[1:], duration=10, loop=0)
    data = bytearray(buf.getvalue())
    if screen:
        data[6:10] = struct.pack("<HH", *screen)
    return bytes(data)


def _png_bomb():
    buf = io.BytesIO()
    Image.new("L", (20000, 20000), 7).save(buf, format="PNG")
    return buf.getvalue()


# Decompression bombs: (bytes, the error expected). Each is small on the wire.
BOMBS = {
    # 0.4 MB; decoded unguarded: 6.6-7 GB of process growth.
    "png_20000x20000": (_png_bomb, "too large: 20000x20000 pixels > serving.max_pixels (40000000)"),
    # 0.3 MB whose header says 10x10: TensorFlow decodes its one frame at 20000x20000 (1.5 GB
    # measured here, before any resize), so the header alone would let it through.
    "gif_screen_says_10x10": (lambda: _gif(1, (20000, 20000), screen=(10, 10)),
                              "too large: 20000x20000 pixels > serving.max_pixels (40000000)"),
    # Every frame is read even when only the first is kept.
    "gif_200_frames_of_1mp": (lambda: _gif(200, (1000, 1000)),
                              "too large: 1000x1000 pixels x 200 frames > serving.max_pixels (40000000)"),
}


def test_an_animated_gif_within_the_limits_is_classified(served):
    out = served["serve"](images=tf.constant([_gif(3, (45, 30)), _gif(1, (45, 30), screen=(45, 30))]))
    assert out["error"].numpy().tolist() == [b"", b""]
    assert (out["class_id"].numpy() >= 0).all()


def test_gif_frames_walks_every_block():
    from xfer.components.image_guard import GIF, gif_frames, header_dims
    images = tf.constant([_gif(3, (45, 30)), _gif(1, (200, 100), screen=(10, 10)), encoded("PNG"), b"GIF8", b""])
    frames, width, height, walked = (t.numpy().tolist() for t in
                                     gif_frames(images, tf.equal(header_dims(images)[0], GIF)))
    assert frames == [3, 1, 0, 0, 0] and width == [45, 200, 0, 0, 0] and height == [30, 100, 0, 0, 0]
    assert walked == [True] * 5


def test_bombs_are_refused_before_decoding_and_memory_stays_flat(served, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(encoded("PNG"))
    for name, (make, _) in BOMBS.items():
        data = make()
        assert len(data) < 1_000_000, (name, len(data))
        (tmp_path / name).write_bytes(data)
    # A fresh process: the model loaded and warmed on a good image first, then the peak
    # resident size (ru_maxrss, KB on Linux) before and after all the bomb requests.
    script = textwrap.dedent(f"""
        import json, resource
        import xfer.components
        import tensorflow as tf
        serve = tf.saved_model.load({str(served["dir"])!r}).signatures["serving_default"]
        good = open({str(good)!r}, "rb").read()
        serve(images=tf.constant([good]))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        got = {{}}
        for name in {list(BOMBS)!r}:
            bomb = open({str(tmp_path)!r} + "/" + name, "rb").read()
            alone = serve(images=tf.constant([bomb]))
            mixed = serve(images=tf.constant([bomb, good, bomb]))
            got[name] = {{"alone": [e.decode() for e in alone["error"].numpy()],
                         "mixed": [e.decode() for e in mixed["error"].numpy()],
                         "mixed_class_id": mixed["class_id"].numpy().tolist(),
                         "growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}}
        print(json.dumps(got))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (_, refused) in BOMBS.items():
        g = got[name]
        assert g["alone"] == [refused], (name, g)
        assert g["mixed"] == [refused, "", refused] and g["mixed_class_id"][0] == g["mixed_class_id"][2] == -1
        assert g["mixed_class_id"][1] >= 0
        print(f"{name}: peak memory growth so far {g['growth_mb']:.1f} MB")
    assert got[list(BOMBS)[-1]]["growth_mb"] < 1024, got


def test_predict_prints_the_error_for_refused_images_and_top_classes_for_others(served, tmp_path):
    from xfer.pipeline.predict import predict
    good, broken, missing = tmp_path / "good.jpg", tmp_path / "broken.jpg", tmp_path / "missing.png"
    jpeg = encoded("JPEG")
    good.write_bytes(jpeg)
    broken.write_bytes(jpeg[:50])
    results = predict(str(served["dir"]), [str(good), str(broken), str(missing)], top_k=2)
    assert results[0].error is None and [c for c, _ in results[0].top][0] in {"cat", "dog", "owl"}
    assert results[1].line() == f"{broken}: {UNDECODABLE.decode()}"
    assert results[2].error.startswith("cannot read file")

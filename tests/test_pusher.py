"""The versioned pusher: numbered, atomic, no duplicates, keep; TFLite written into a
version before it is visible."""
import os

import pytest

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from xfer.components import pusher
from tfx.utils import io_utils


def saved_model_pb(note: str = "") -> bytes:
    """A saved_model.pb that parses and holds a graph tagged 'serve' (no signatures):
    enough for the Pusher, which reads only that much of a version it may re-push."""
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

    graph = meta_graph_pb2.MetaGraphDef()
    graph.meta_info_def.tags.append("serve")
    graph.meta_info_def.meta_graph_version = note
    return saved_model_pb2.SavedModel(saved_model_schema_version=1, meta_graphs=[graph]).SerializeToString()


def fake_model(tmp_path, name="m"):
    d = tmp_path / name
    (d / "variables").mkdir(parents=True)
    (d / "saved_model.pb").write_bytes(saved_model_pb(name))
    (d / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(200_000))
    return str(d)


def test_versions_are_numbered_and_a_repeat_push_adds_none(tmp_path):
    base = str(tmp_path / "serving")
    m1, m2 = fake_model(tmp_path, "m1"), fake_model(tmp_path, "m2")
    assert pusher.push_version(m1, "uri://model/1", base, keep=None) == (os.path.join(base, "1"), True)
    assert pusher.push_version(m1, "uri://model/1", base, keep=None) == (os.path.join(base, "1"), False)
    assert pusher.push_version(m2, "uri://model/2", base, keep=None) == (os.path.join(base, "2"), True)
    assert pusher.complete_versions(base) == [1, 2]
    assert open(os.path.join(base, "2", "saved_model.pb"), "rb").read() == saved_model_pb("m2")


def test_keep_removes_oldest_versions(tmp_path):
    base = str(tmp_path / "serving")
    for i in range(4):
        pusher.push_version(fake_model(tmp_path, f"m{i}"), f"uri://{i}", base, keep=2)
    assert pusher.complete_versions(base) == [3, 4]
    assert sorted(os.listdir(base)) == ["3", "4"]


def test_interrupted_copy_leaves_no_visible_version(tmp_path, monkeypatch):
    base = str(tmp_path / "serving")
    pusher.push_version(fake_model(tmp_path, "m1"), "uri://1", base, keep=None)
    real_copy = io_utils.copy_dir

    def copy_then_die(src, dst, **kw):
        # Copy part of the model, then die as a killed process would.
        os.makedirs(os.path.join(dst, "variables"), exist_ok=True)
        with open(os.path.join(dst, "saved_model.pb"), "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt("killed mid-copy")

    monkeypatch.setattr(io_utils, "copy_dir", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        pusher.push_version(fake_model(tmp_path, "m2"), "uri://2", base, keep=None)
    visible = [n for n in os.listdir(base) if not n.startswith(".")]
    assert visible == ["1"]  # a model server sees version 1 only
    assert pusher.complete_versions(base) == [1]
    assert pusher.latest_version_dir(base) == os.path.join(base, "1")
    # The next push still gets the next number and ignores the debris.
    monkeypatch.setattr(io_utils, "copy_dir", real_copy)
    assert pusher.push_version(fake_model(tmp_path, "m3"), "uri://3", base, keep=None)[0] == \
        os.path.join(base, "2")


@pytest.mark.integration
def test_tflite_is_written_into_the_version_before_it_is_visible(tmp_path, monkeypatch):
    """push.tflite is the Pusher's: the version gets model.tflite (the same probabilities
    as the trained Keras model) while still in staging, and turning it on for a model
    already pushed makes a new version instead of changing the old one."""
    import json

    import numpy as np
    import tensorflow as tf
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    from settings_helpers import make_config, small_model
    from xfer.components.model import build_model

    # VGG16: its CaffeNormalization layer must revive from the saved layer configs.
    classifier, _ = build_model(small_model("vgg16", head={"dense": [8]}), 3)
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    serving = tmp_path / "model" / "Format-Serving"
    classifier.save(str(serving), save_format="tf", save_traces=False)  # as the Trainer saves
    (serving / "assets.extra").mkdir()
    (serving / "assets.extra" / "labels.txt").write_text("a\nb\nc\n")
    base = tmp_path / "serving"
    assert pusher.push_version(str(serving), model.uri, str(base), keep=None) == (str(base / "1"), True)

    seen = []
    real_write = pusher.write_tflite

    def write_and_look(model_path, version_dir, **options):
        path = real_write(model_path, version_dir, **options)
        seen.append((os.path.basename(version_dir), sorted(os.listdir(base)),
                     os.path.exists(os.path.join(version_dir, pusher.COMPLETE_MARKER))))
        return path

    monkeypatch.setattr(pusher, "write_tflite", write_and_look)

    def push():
        blessing = standard_artifacts.ModelBlessing()
        blessing.uri = str(tmp_path / "blessing")
        blessing.set_int_custom_property("blessed", 1)
        pushed = standard_artifacts.PushedModel()
        pushed.uri = str(tmp_path / "pushed")
        settings = make_config(push={"tflite": True}).pusher_settings(code_fingerprint="test")
        pusher.Executor().Do(
            {"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
            {"push_destination": proto_utils.proto_to_json(pusher_pb2.PushDestination(
                filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(base)))),
             "custom_config": json.dumps(settings.model_dump(mode="json"))})
        return pushed

    pushed = push()
    assert pushed.get_string_custom_property("pushed_destination") == str(base / "2")
    (name, visible, complete), = seen
    assert name.startswith(".staging-2-") and visible == sorted(["1", name]) and not complete
    version = base / "2"
    assert (version / "assets.extra" / "labels.txt").read_text() == "a\nb\nc\n"
    assert not (base / "1" / "assets.extra" / "model.tflite").exists()
    interpreter = tf.lite.Interpreter(model_path=str(version / "assets.extra" / "model.tflite"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert list(inp["shape"]) == [1, 32, 32, 3]
    for x in np.random.default_rng(0).uniform(0, 255, (3, 1, 32, 32, 3)).astype(np.float32):
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        np.testing.assert_allclose(interpreter.get_tensor(out["index"]), classifier(x).numpy(), atol=1e-4)

    # The same model and the same export again: no new version, no new TFLite.
    assert push().get_int_custom_property("new_version") == 0 and len(seen) == 1
    assert pusher.complete_versions(str(base)) == [1, 2]


def test_foreign_numbered_folders_are_skipped_and_left_untouched(tmp_path):
    """A destination that already holds `1/`, `2/` not made by xfer (no complete marker):
    the next version is 3, the foreign folders keep every byte, and nothing is staged."""
    base = tmp_path / "serving"
    for n in ("1", "2"):
        (base / n / "variables").mkdir(parents=True)
        (base / n / "saved_model.pb").write_bytes(f"foreign {n}".encode())
    before = {p: p.read_bytes() for p in base.rglob("*") if p.is_file()}
    assert pusher.complete_versions(str(base)) == []  # not xfer's: not served
    m = fake_model(tmp_path)
    assert pusher.push_version(m, "uri://m", str(base), keep=1) == (str(base / "3"), True)
    assert sorted(os.listdir(base)) == ["1", "2", "3"]
    assert {p: p.read_bytes() for p in before} == before
    assert pusher.complete_versions(str(base)) == [3]
    # Numbering goes on after the highest folder, complete or not; a repeat adds none.
    (base / "7").mkdir()
    assert pusher.push_version(m, "uri://m", str(base), keep=None) == (str(base / "3"), False)
    assert pusher.push_version(fake_model(tmp_path, "m2"), "uri://m2", str(base), keep=None) == \
        (str(base / "8"), True)


@pytest.mark.parametrize("failing", ["tflite", "marker"])
def test_a_failure_mid_push_leaves_no_staging_folder(tmp_path, monkeypatch, failing):
    base = tmp_path / "serving"
    pusher.push_version(fake_model(tmp_path, "m1"), "uri://1", str(base), keep=None)
    if failing == "tflite":
        def broken_tflite(model_path, version_dir, **options):
            os.makedirs(os.path.join(version_dir, "assets.extra"))
            raise RuntimeError("converter failed")
        monkeypatch.setattr(pusher, "write_tflite", broken_tflite)
    else:
        real_gfile = pusher.tf.io.gfile.GFile

        def gfile(path, mode="r"):
            if path.endswith(pusher.COMPLETE_MARKER) and "w" in mode:
                raise OSError("disk full")
            return real_gfile(path, mode)
        monkeypatch.setattr(pusher.tf.io.gfile, "GFile", gfile)
    with pytest.raises((RuntimeError, OSError), match="converter failed|disk full"):
        pusher.push_version(fake_model(tmp_path, "m2"), "uri://2", str(base), keep=None,
                            tflite=failing == "tflite")
    assert sorted(os.listdir(base)) == ["1"]  # no .staging-*, no half version
    assert pusher.complete_versions(str(base)) == [1]


def test_the_card_is_written_into_a_new_version_only_and_before_it_is_visible(tmp_path):
    base = str(tmp_path / "serving")
    seen = []

    def card(folder, version):
        # Called in the staging folder: the version is not there yet.
        assert os.path.basename(folder).startswith(".staging-") and not os.path.exists(os.path.join(base, str(version)))
        seen.append(version)
        with open(os.path.join(folder, "MODEL_CARD.md"), "w") as f:
            f.write(f"# version {version}\n")

    m1 = fake_model(tmp_path, "m1")
    assert pusher.push_version(m1, "uri://1", base, keep=None, card=card) == (os.path.join(base, "1"), True)
    assert open(os.path.join(base, "1", "MODEL_CARD.md")).read() == "# version 1\n"
    # The same model again: no new version, so no new card.
    assert pusher.push_version(m1, "uri://1", base, keep=None, card=card) == (os.path.join(base, "1"), False)
    assert seen == [1]

    def broken(folder, version):
        raise RuntimeError("card failed")

    with pytest.raises(RuntimeError, match="card failed"):
        pusher.push_version(fake_model(tmp_path, "m2"), "uri://2", base, keep=None, card=broken)
    assert sorted(os.listdir(base)) == ["1"]  # no version without its card, no staging left

"""The versioned pusher at the filesystem level: numbered, atomic, no duplicates, keep."""
import os

import pytest

import xfer.components  # noqa: F401
from xfer.components import pusher
from tfx.utils import io_utils


def fake_model(tmp_path, name="m"):
    d = tmp_path / name
    (d / "variables").mkdir(parents=True)
    (d / "saved_model.pb").write_bytes(b"pb" * 1000)
    (d / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(200_000))
    return str(d)


def test_versions_are_numbered_and_a_repeat_push_adds_none(tmp_path):
    base = str(tmp_path / "serving")
    m1, m2 = fake_model(tmp_path, "m1"), fake_model(tmp_path, "m2")
    assert pusher.push_version(m1, "uri://model/1", base, keep=None) == (os.path.join(base, "1"), True)
    assert pusher.push_version(m1, "uri://model/1", base, keep=None) == (os.path.join(base, "1"), False)
    assert pusher.push_version(m2, "uri://model/2", base, keep=None) == (os.path.join(base, "2"), True)
    assert pusher.complete_versions(base) == [1, 2]
    assert open(os.path.join(base, "2", "saved_model.pb"), "rb").read() == b"pb" * 1000


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

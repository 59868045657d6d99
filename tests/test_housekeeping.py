"""Housekeeping: a user error is one line and leaves no trace file; unexpected errors
leave one trace file under $XDG_STATE_HOME/xfer/errors (the newest 20 kept, none in
/tmp); a reader closing the pipe early ends xfer quietly."""
import os
import subprocess
import time

import pytest

from conftest import REPO, XFER
from xfer.pipeline import errors


def _env(tmp_path):
    return {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "TMPDIR": str(tmp_path / "tmp")}


def _xfer(tmp_path, *args):
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run([XFER, *args], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)


def _traces(tmp_path):
    found = list((tmp_path / "state").rglob("*")) + list((tmp_path / "tmp").glob("xfer-error-*"))
    return [p for p in found if p.is_file()]


def _empty_store(path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = str(path)
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    metadata_store.MetadataStore(cfg)


def test_no_run_x_is_one_line_and_writes_no_trace(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    _empty_store(root / "metadata.sqlite")
    proc = _xfer(tmp_path, "show", "--config", "demo", "--set", f"root={root}", "x")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "xfer: error: no run 'x' of 'xfer-demo'; `xfer runs` lists them", proc.stderr
    assert _traces(tmp_path) == []


def test_a_missing_model_folder_is_one_line_and_writes_no_trace(tmp_path):
    proc = _xfer(tmp_path, "predict", str(tmp_path / "nowhere"), str(tmp_path / "a.png"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xfer: error: '") and "neither a SavedModel" in lines[0]
    assert _traces(tmp_path) == []


def test_unexpected_errors_leave_a_trace_under_xdg_state_the_newest_20(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    folder = tmp_path / "state" / "xfer" / "errors"
    paths = []
    for i in range(23):
        try:
            raise RuntimeError(f"boom {i}")
        except RuntimeError as e:
            assert errors.report(e) == 1
        path = capsys.readouterr().err.split("full trace: ")[1].split(" ")[0]
        assert os.path.dirname(path) == str(folder) and f"boom {i}" in open(path).read()
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))  # distinct ages
        paths.append(path)
    left = sorted(str(p) for p in folder.iterdir())
    assert left == sorted(paths[-20:])
    # Without XDG_STATE_HOME: ~/.local/state/xfer/errors.
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert errors.trace_dir() == tmp_path / "home" / ".local" / "state" / "xfer" / "errors"


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`xfer ... | head -1`: the reader is gone before xfer writes; no traceback, no
    'Exception ignored', no trace file."""
    (tmp_path / "tmp").mkdir()
    args = ["data", "schema", "--num-classes", "3", "--out", str(tmp_path / "s.pbtxt")]
    r, w = os.pipe()
    os.close(r)  # the reader has already gone
    proc = subprocess.Popen([XFER, *args], cwd=REPO, env=_env(tmp_path), stdout=w, stderr=subprocess.PIPE,
                            text=True)
    os.close(w)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert err.strip() == ""
    assert proc.returncode in (0, 141)
    assert _traces(tmp_path) == []

"""`xfer predict` on hostile inputs, through the real console script in a child process
(a crash would show as exit -11): TFRecords whose record claims 1 TiB, a 3 GB (sparse)
file in a --folder, --out inside the folder, --out that cannot be written, and a file
name holding a newline. The model is the tiny real one of tests/test_serving_guard.py."""
import gzip
import json
import os
import subprocess
import tempfile

import pytest

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

from conftest import XFER, xfer
from test_batch_predict import png
from test_record_framing import examples, frame, lying
from test_serving_guard import served  # noqa: F401  (the fixture)
from xfer.pipeline.data.records import image_example


def _measured(args):
    """The real console script; its exit code, stdout, stderr and peak RSS in MB (wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([XFER, *args], stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0), err.seek(0)
        return (os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode(),
                usage.ru_maxrss / 1024)


def test_tfrecords_whose_record_lies_about_its_length_are_named_not_a_crash(served, tmp_path):
    d = tmp_path / "records"
    d.mkdir()
    (d / "a-good.tfrecord").write_bytes(frame(image_example(png(1), 0)))
    data, offset = lying(n_good=1)
    (d / "b-lies.tfrecord").write_bytes(data)
    (d / "c-lies.tfrecord.gz").write_bytes(gzip.compress(data))
    good = frame(examples(1)[0])
    (d / "d-crc.tfrecord").write_bytes(good + frame(examples(1)[0], length_crc=99))
    (d / "e-cut.tfrecord").write_bytes(good + good[:-6])
    out = tmp_path / "p.jsonl"
    code, _, err, _ = _measured(["predict", str(served["dir"]), "--tfrecords", str(d / "*"), "--out", str(out)])
    assert code == 0, (code, err[-2000:])  # a.tfrecord's image was predicted
    got = {r["image"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert not (tmp_path / "p.jsonl.tmp").exists()
    assert "top" in got[f"{d}/a-good.tfrecord#0"]
    lie = (f"it claims 1099511627776 bytes (1.0 TiB) but only 104 bytes remain in {{}}: its length field "
           f"is wrong (a damaged or crafted file); write or copy it again, or remove it; records from 1 on not read")
    assert got[f"{d}/b-lies.tfrecord#1"]["error"] == (
        f"broken TFRecord file: record 1 at byte {offset}: " + lie.format("the file"))
    assert got[f"{d}/c-lies.tfrecord.gz#1"]["error"] == (
        f"broken TFRecord file: record 1 at byte {offset} of the decompressed data: "
        + lie.format("the decompressed data"))
    assert got[f"{d}/d-crc.tfrecord#1"]["error"].startswith(
        f"broken TFRecord file: record 1 at byte {len(good)}: corrupted (the checksum of its length field")
    assert got[f"{d}/e-cut.tfrecord#1"]["error"].startswith(
        f"broken TFRecord file: record 1 at byte {len(good)}: cut short: it claims {len(good) - 16} bytes")
    # The lying record first: nothing to predict, exit 1 (not a segfault), one line for it.
    (d / "f-first.tfrecord").write_bytes(frame(b"x" * 10, claimed=1 << 40))
    code, stdout, err, _ = _measured(["predict", str(served["dir"]), "--tfrecords", str(d / "f-first.tfrecord")])
    assert code == 1, (code, err[-2000:])
    assert stdout == (f"{d}/f-first.tfrecord#0: broken TFRecord file: record 0 at byte 0: it claims 1099511627776 "
                      f"bytes (1.0 TiB) but only 14 bytes remain in the file: its length field is wrong (a "
                      f"damaged or crafted file); write or copy it again, or remove it; records from 0 on not read\n")


def test_a_3gb_file_in_the_folder_is_refused_by_its_size_unread(served, tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    (d / "a.png").write_bytes(png(1))
    with open(d / "b-huge.png", "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB of zeros that cost no disk
    (d / "c.png").write_bytes(png(3))
    code, stdout, err, peak = _measured(["predict", str(served["dir"]), "--folder", str(d)])
    assert code == 0, (code, err[-2000:])
    lines = stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"{d}/a.png: ") and lines[2].startswith(f"{d}/c.png: ")
    assert lines[1] == (f"{d}/b-huge.png: too large: 3221225472 bytes (3.0 GiB), above --max-file-bytes "
                        f"67108864; not read (raise --max-file-bytes if it is an image)")
    os.remove(d / "b-huge.png")
    code, _, err, without = _measured(["predict", str(served["dir"]), "--folder", str(d)])
    assert code == 0, err
    print(f"peak RSS with a 3 GiB file in the folder: {peak:.0f} MB; without it: {without:.0f} MB")
    # Reading the file would add its 3,072 MB; the model's own footprint varies with the
    # machine's load and threads (1.3 GB quiet, 2.7 GB under a busy test suite), so the
    # bound is against the same command without the file.
    assert peak < without + 256, f"peak RSS {peak:.0f} MB ({without:.0f} without): the file was read"
    with open(d / "b-huge.png", "wb") as f:
        f.truncate(3 << 30)
    # The limit is the user's; the help states it.
    code, stdout, _, _ = _measured(["predict", str(served["dir"]), "--folder", str(d), "--max-file-bytes", "100"])
    assert code == 1 and all(": too large: " in ln and "above --max-file-bytes 100;" in ln
                             for ln in stdout.splitlines()), stdout
    help_text = " ".join(xfer("predict", "--help").stdout.split())
    assert "--max-file-bytes N refuse an image file above N bytes by its size, unread (one error line); " \
           "default 67108864 (64 MiB" in help_text, help_text


def test_out_inside_the_folder_is_never_an_input(served, tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.png").write_bytes(png(i))
    out = d / "predictions.jsonl"
    for run in range(2):  # the second run finds the first one's output in the folder
        code, _, err, _ = _measured(["predict", str(served["dir"]), "--folder", str(d), "--out", str(out)])
        assert code == 0, err
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["image"] for r in got] == [f"{d}/{i}.png" for i in range(3)], (run, got)
        assert all("top" in r for r in got)
        assert sorted(os.listdir(d)) == ["0.png", "1.png", "2.png", "predictions.jsonl"]
    # Given as a relative path from inside the folder: the same file, left out the same.
    proc = subprocess.run([XFER, "predict", str(served["dir"]), "--folder", ".", "--out", "predictions.jsonl"],
                          cwd=d, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["image"] for line in out.read_text().splitlines()] == [f"./{i}.png" for i in range(3)]


def test_an_unwritable_out_fails_before_anything_is_predicted(served, tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    (d / "a.png").write_bytes(png(1))
    (tmp_path / "a-folder").mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere it may chmod; sysfs refuses root too
        locked = "/sys"
    cases = {
        str(tmp_path / "a-folder"): f"is a folder; give a file name (e.g. {tmp_path}/a-folder/predictions.jsonl)",
        str(tmp_path / "missing" / "p.jsonl"): f"{tmp_path}/missing does not exist; give a file in a folder",
        os.path.join(locked, "p.jsonl"): f"cannot write in {locked} (Permission denied)",
    }
    for out, why in cases.items():
        proc = subprocess.run([XFER, "predict", str(served["dir"]), "--folder", str(d), "--out", out,
                               "--progress"], capture_output=True, text=True)
        assert proc.returncode == 2, (out, proc.returncode, proc.stderr[-2000:])
        assert proc.stdout == "" and proc.stderr == f"xfer predict: --out {out}: {why}\n", proc.stderr
    assert os.listdir(tmp_path / "a-folder") == [] and not (tmp_path / "a-folder.tmp").exists()


def test_a_newline_in_a_name_takes_one_line_and_json_keeps_it_exact(served, tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    odd = "two\nlines\t.png"
    (d / odd).write_bytes(png(1))
    (d / "z.png").write_bytes(png(2))
    raw = os.fsencode(d) + b"/\xff-latin1.png"  # a name that is not UTF-8
    with open(raw, "wb") as f:
        f.write(png(3))
    proc = subprocess.run([XFER, "predict", str(served["dir"]), "--folder", str(d)], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{d}/two\\nlines\\t.png: ") and lines[1].startswith(f"{d}/z.png: ")
    assert lines[2].startswith(f"{d}/\\xff-latin1.png: ")
    proc = subprocess.run([XFER, "predict", str(served["dir"]), "--folder", str(d), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    names = [r["image"] for r in json.loads(proc.stdout)]
    assert names == [f"{d}/{odd}", f"{d}/z.png", os.fsdecode(raw)]

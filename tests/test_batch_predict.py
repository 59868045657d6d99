"""`xfer predict` in batch: every file under a folder or every record of
TFRecord files, streamed in batches through the real `xfer` console script, one result
line per input (predicted, an error naming the reason, or skipped with a reason), JSON
Lines written beside and renamed, and memory that does not grow with the number of
images. The model is the tiny real one of tests/test_serving_guard.py (a real transform
graph, export.signatures, saved; serving.max_batch 8)."""
import io
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

import xfer.components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from conftest import XFER, xfer
from test_serving_guard import MAX_BATCH, UNDECODABLE, encoded, served  # noqa: F401  (the fixture)
from xfer.pipeline.data.records import image_example
from xfer.pipeline.predict import Item, Predictor, file_items, predict

NAMES = {"cat", "dog", "owl"}


def lines(path):
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


_single = {}


def alone(model_dir, path):
    """The single-file path: one file, one request (the model loaded once)."""
    if model_dir not in _single:
        _single[model_dir] = Predictor(str(model_dir))
    [r] = _single[model_dir].stream(file_items([str(path)]), top_k=3, batch=1)
    return r


def png(seed, size=(16, 16)):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    d = root / "images"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / ".git").mkdir()
    (d / ".git" / "config").write_text("[core]\n")
    outside = root / "outside"
    outside.mkdir()
    (outside / "x.png").write_bytes(png(9))
    jpeg = encoded("JPEG", size=(60, 40))
    files = {
        "a.png": png(1),
        "b.jpg": jpeg,
        "c_truncated.jpg": jpeg[: len(jpeg) // 2],
        "d_empty.png": b"",
        "e_notes.txt": b"just some text\n",
        ".DS_Store": b"\x00\x00\x00\x01Bud1",
        "._a.png": b"\x00\x05\x16\x07 AppleDouble",
        "sub/f.png": png(2, (50, 20)),
        "sub/deeper/g.jpg": encoded("JPEG", "L", (30, 30)),
        "z.gif": encoded("GIF", "P"),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    os.symlink(outside, d / "link_out")            # a folder outside: not followed
    os.mkfifo(d / "sub" / "pipe")                    # reading it would block
    os.symlink(d / "gone.png", d / "dangling.png")  # a link to nothing: cannot be read
    return d


def test_folder_mode_one_line_per_file_in_order_and_good_ones_as_alone(served, tree, tmp_path):
    out = tmp_path / "predictions.jsonl"
    proc = xfer("predict", str(served["dir"]), "--folder", str(tree), "--out", str(out), "--batch", "3",
                "--progress")
    assert not (tmp_path / "predictions.jsonl.tmp").exists()
    got = {r["image"]: r for r in lines(out)}
    d = str(tree)
    order = [f"{d}/.DS_Store", f"{d}/._a.png", f"{d}/.git", f"{d}/a.png", f"{d}/b.jpg",
             f"{d}/c_truncated.jpg", f"{d}/d_empty.png", f"{d}/dangling.png", f"{d}/e_notes.txt",
             f"{d}/link_out", f"{d}/sub/deeper/g.jpg", f"{d}/sub/f.png", f"{d}/sub/pipe", f"{d}/z.gif"]
    assert [r["image"] for r in lines(out)] == order == sorted(order)
    assert got[f"{d}/._a.png"] == {"image": f"{d}/._a.png", "skipped": "hidden file"}
    assert got[f"{d}/.DS_Store"]["skipped"] == "hidden file"
    assert got[f"{d}/.git"]["skipped"] == "hidden folder"
    assert got[f"{d}/link_out"]["skipped"] == "symlink to a folder (not followed)"
    assert got[f"{d}/sub/pipe"]["skipped"] == "not a regular file"
    assert got[f"{d}/c_truncated.jpg"]["error"] == UNDECODABLE.decode()
    assert got[f"{d}/d_empty.png"]["error"] == "empty image"
    assert got[f"{d}/e_notes.txt"]["error"] == UNDECODABLE.decode()
    assert got[f"{d}/dangling.png"]["error"] == "cannot read file: No such file or directory"
    good = ["a.png", "b.jpg", "sub/deeper/g.jpg", "sub/f.png", "z.gif"]
    for name in good:
        r, one = got[f"{d}/{name}"], alone(served["dir"], tree / name)
        assert "error" not in r and len(r["top"]) == 3 and {t["class"] for t in r["top"]} == NAMES
        # Exactly the probabilities of the file predicted by itself, in its own request.
        assert [(t["class"], t["probability"]) for t in r["top"]] == one.top, name
    assert "predict: 14/14 images" in proc.stderr
    assert "14 lines: 5 predicted, 4 errors, 5 skipped" in proc.stderr

    # Without --out: the same results as text lines, in the same order; default batch.
    proc = xfer("predict", str(served["dir"]), "--folder", str(tree))
    assert "predict:" not in proc.stderr  # no progress line: stderr is no terminal
    printed = proc.stdout.splitlines()
    assert [ln.split(": ")[0] for ln in printed] == order
    assert f"{d}/._a.png: skipped: hidden file" in printed
    assert f"{d}/c_truncated.jpg: {UNDECODABLE.decode()}" in printed
    assert f"{d}/a.png: " + ", ".join(f"{c} {p:.4f}" for c, p in alone(served["dir"], tree / "a.png").top) in printed


def test_exit_1_when_nothing_is_predicted(served, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    proc = xfer("predict", str(served["dir"]), "--folder", str(tmp_path), check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [f"{tmp_path}/.DS_Store: skipped: hidden file",
                                        f"{tmp_path}/bad.jpg: {UNDECODABLE.decode()}"]
    proc = xfer("predict", str(served["dir"]), "--folder", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 1 and "not a folder" in proc.stderr
    proc = xfer("predict", str(served["dir"]), str(tmp_path / "bad.jpg"), "--folder", str(tmp_path), check=False)
    assert proc.returncode == 2 and "exactly one" in proc.stderr


def _records(path, raws, gzip=False):
    options = tf.io.TFRecordOptions(compression_type="GZIP" if gzip else "")
    with tf.io.TFRecordWriter(str(path), options) as w:
        for raw in raws:
            w.write(raw)


def _example(**features):
    feature = {}
    for k, v in features.items():
        feature[k] = (tf.train.Feature(int64_list=tf.train.Int64List(value=[v])) if isinstance(v, int)
                      else tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_tfrecords_mode_predicts_good_records_and_names_broken_ones(served, tmp_path):
    jpeg = encoded("JPEG", size=(60, 40))
    images = [png(1), jpeg, png(3), png(4), png(5), png(6)]
    d = tmp_path / "records"
    d.mkdir()
    _records(d / "a.tfrecord.gz", [
        _example(image=images[0], id=b"first"),
        _example(label=1, filename=b"no_image.jpg"),       # lacks the image key
        _example(image=images[1], filename=b"b.jpg"),
        b"not a record",                                    # not a tf.Example
        _example(image=jpeg[:80], id=7),                   # a truncated JPEG inside a good record
    ], gzip=True)
    _records(d / "b.tfrecord", [_example(image=images[2]), _example(image=images[3]), _example(image=images[4])])
    data = (d / "b.tfrecord").read_bytes()
    (d / "b.tfrecord").write_bytes(data[: len(data) - 30])  # the third record cut mid-way
    _records(d / "c.tfrecord", [_example(image=images[5]), image_example(images[0], 0)])
    data = bytearray((d / "c.tfrecord").read_bytes())
    data[-10] ^= 0xFF                                        # the second record's CRC no longer matches
    (d / "c.tfrecord").write_bytes(bytes(data))
    _records(d / "d.tfrecord", [image_example(images[1], 2)])

    out = tmp_path / "p.jsonl"
    xfer("predict", str(served["dir"]), "--tfrecords", str(d / "*"), "--out", str(out))
    got = lines(out)
    assert [r["image"] for r in got] == [f"{d}/a.tfrecord.gz#{i}" for i in range(5)] + [
        f"{d}/b.tfrecord#{i}" for i in range(3)] + [f"{d}/c.tfrecord#{i}" for i in range(2)] + [
        f"{d}/d.tfrecord#0"]
    a0, a1, a2, a3, a4, b0, b1, b2, c0, c1, d0 = got
    assert a0["id"] == "first" and a2["filename"] == "b.jpg" and a4["id"] == 7
    assert a1 == {"image": f"{d}/a.tfrecord.gz#1", "filename": "no_image.jpg",
                  "error": "no 'image' feature (--image-key)"}
    assert a3["error"] == "not a tf.Example"
    assert a4["error"] == UNDECODABLE.decode()
    assert re.fullmatch(r"broken TFRecord file: record 2 at byte \d+: cut short: it claims \d+ bytes "
                        r"\(and a 4-byte checksum\) but only \d+ bytes remain; an interrupted copy or write\? "
                        r"copy the file again or remove it; records from 2 on not read", b2["error"]), b2
    assert re.fullmatch(r"broken TFRecord file: record 1 at byte \d+: corrupted \(its data checksum does not "
                        r"match\); the file was damaged; write or copy it again; records from 1 on not read",
                        c1["error"]), c1
    files = tmp_path / "files"
    files.mkdir()
    for r, image in ((a0, images[0]), (a2, images[1]), (b0, images[2]), (b1, images[3]),
                     (c0, images[5]), (d0, images[1])):
        (files / "x").write_bytes(image)
        assert [(t["class"], t["probability"]) for t in r["top"]] == alone(served["dir"], files / "x").top

    # Another feature name for the image bytes.
    _records(tmp_path / "other.tfrecord", [_example(jpeg=jpeg), _example(image=jpeg)])
    printed = xfer("predict", str(served["dir"]), "--tfrecords", str(tmp_path / "other.tfrecord"),
                   "--image-key", "jpeg").stdout.splitlines()
    assert printed[1] == f"{tmp_path}/other.tfrecord#1: no 'jpeg' feature (--image-key)"
    assert printed[0].startswith(f"{tmp_path}/other.tfrecord#0: ") and "error" not in printed[0]


def test_old_file_arguments_print_as_before(served, tmp_path, capsys):
    from xfer.pipeline.cli import main
    good, broken, missing = tmp_path / "good.jpg", tmp_path / "broken.jpg", tmp_path / "missing.png"
    good.write_bytes(encoded("JPEG"))
    broken.write_bytes(b"\xff\xd8\xff")
    paths = [str(good), str(broken), str(missing)]
    results = predict(str(served["dir"]), paths)
    assert main(["predict", str(served["dir"]), *paths, "--json"]) == 0
    assert capsys.readouterr().out == json.dumps([r.as_dict() for r in results], indent=1) + "\n"
    assert main(["predict", str(served["dir"]), *paths]) == 0
    assert capsys.readouterr().out == "".join(r.line() + "\n" for r in results)
    assert main(["predict", str(served["dir"]), str(missing), "--json"]) == 1


def _write_pngs(folder, n):
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:05d}.png").write_bytes(png(i))


def _run_measured(args, logs):
    """The real console script in a child process; its own peak RSS (MB) from wait4."""
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        proc = subprocess.Popen([XFER, *args], stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, (logs / "stderr").read_text()[-3000:]
    return usage.ru_maxrss / 1024


def test_out_is_json_lines_and_memory_stays_flat_over_2000_images(served, tmp_path):
    _write_pngs(tmp_path / "small", 200)
    _write_pngs(tmp_path / "large", 2000)
    peaks = {}
    for name, n in (("small", 200), ("large", 2000)):
        out = tmp_path / f"{name}.jsonl"
        start = time.perf_counter()
        peaks[name] = _run_measured(["predict", str(served["dir"]), "--folder", str(tmp_path / name),
                                     "--out", str(out)], tmp_path)
        got = lines(out)
        assert len(got) == n and all(len(r["top"]) == 3 for r in got)
        assert [r["image"] for r in got] == [f"{tmp_path / name}/{i:05d}.png" for i in range(n)]
        assert not (tmp_path / f"{name}.jsonl.tmp").exists()
        print(f"{n} images: peak RSS {peaks[name]:.0f} MB, {time.perf_counter() - start:.1f} s")
    assert peaks["large"] < peaks["small"] + 100, peaks


def test_a_killed_run_leaves_nothing_under_the_final_name(served, tmp_path):
    _write_pngs(tmp_path / "imgs", 3000)
    out = tmp_path / "p.jsonl"
    proc = subprocess.Popen([XFER, "predict", str(served["dir"]), "--folder", str(tmp_path / "imgs"),
                             "--out", str(out), "--batch", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    tmp = tmp_path / "p.jsonl.tmp"
    deadline = time.monotonic() + 300
    while not (tmp.exists() and tmp.stat().st_size > 0) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tmp.exists() and not out.exists()


def test_the_stream_reads_no_further_ahead_than_one_request(served):
    """Flat memory by construction: when the first results come out, only the first
    request's images have been read; each later request reads only its own."""
    predictor = Predictor(str(served["dir"]))
    image = png(1)
    pulled = []

    def items():
        for i in range(10 * MAX_BATCH):
            pulled.append(i)
            yield Item(f"img{i}", data=image if i % 5 else b"")

    seen = 0
    for r in predictor.stream(items(), top_k=1, batch=3):
        assert len(pulled) <= seen + 3 + 2, (seen, len(pulled))  # 3 images plus the bad ones between
        assert r.image == f"img{seen}" and (r.error == "empty image") == (seen % 5 == 0)
        seen += 1
    assert seen == 10 * MAX_BATCH
    # --batch above the model's max_batch is capped: no request is refused.
    assert all(r.top for r in predictor.stream((Item(f"i{i}", data=image) for i in range(20)), batch=100))

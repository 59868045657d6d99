"""Image bombs in the training data: a 1.2 MB PNG whose IHDR says 20000x20000 (1.2 GB once
decoded) among real train records. DataCheck reads every image's size from its header
(components/image_header.py, the serving guard's own reader) and refuses one above
data.max_pixels before any decoder sees it; the whole run never decodes it.

Driven as TFX drives them: ImportExampleGen's door (components/import_gen.py) and the
DataCheck executor on real TFRecords, real Beam; peak memory measured in a process of
its own (ru_maxrss)."""
import contextlib
import io
import json
import os
import resource
import struct
import subprocess
import sys
import textwrap
import zlib

import pytest

import xfer.components  # noqa: F401
import tensorflow as tf
from test_records_door import _write  # TFRecord files of the records given

BOMB_SIDE = 20000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A valid RGB PNG of width x height black pixels, every CRC and the zlib checksum
    right: about 1.2 MB for 20000x20000, 1.2 GB decoded. Its rows are deflated a block at a
    time with a full flush, which resets the compressor, so one block's bytes repeated make
    the whole stream (seconds instead of deflating 1.2 GB)."""
    row = bytes(1 + 3 * width)  # filter byte 0, then black pixels
    rows_per_block = 100
    assert height % rows_per_block == 0
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(row * rows_per_block) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    # Adler-32 of n zero bytes: a stays 1, b adds 1 per byte.
    adler = ((len(row) * height) % 65521) << 16 | 1
    idat = b"\x78\xda" + block * (height // rows_per_block) + end + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def real_png(seed: int, side: int = 32) -> bytes:
    pixels = tf.random.stateless_uniform([side, side, 3], [seed, 1], maxval=256, dtype=tf.int32)
    return tf.io.encode_png(tf.cast(pixels, tf.uint8)).numpy()


def _data(base, bomb_at=None, n=40):
    """Real PNG records in train/ and eval/ (labels 0..2); the bomb at train index `bomb_at`."""
    from xfer.pipeline.data.records import image_example

    train = [image_example(real_png(i), i % 3, id=f"t{i}") for i in range(n)]
    if bomb_at is not None:
        train.insert(bomb_at, image_example(png_bomb(), 1, id="bomb"))
    _write(base / "train" / "part-0.tfrecord", train)
    _write(base / "eval" / "part-0.tfrecord", [image_example(real_png(1000 + i), i % 3, id=f"e{i}")
                                              for i in range(n // 2)])
    return base / "train" / "part-0.tfrecord"


def _import(base, out):
    """ImportExampleGen's door on train/* and eval/*: the examples DataCheck reads, with
    their provenance (each record traced to the user's file)."""
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts, standard_component_specs as specs
    from tfx.utils import proto_utils

    from xfer.components.import_gen import Executor

    examples = standard_artifacts.Examples()
    examples.uri = str(out)
    splits = [example_gen_pb2.Input.Split(name=s, pattern=f"{s}/*") for s in ("train", "eval")]
    Executor().Do({}, {specs.EXAMPLES_KEY: [examples]}, {
        specs.INPUT_BASE_KEY: str(base),
        specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(example_gen_pb2.Input(splits=splits)),
        specs.OUTPUT_CONFIG_KEY: proto_utils.proto_to_json(example_gen_pb2.Output()),
        specs.OUTPUT_DATA_FORMAT_KEY: example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE,
    })
    return examples


def run_data_check(examples_uri: str, split_names: str, out_uri: str, params: dict) -> dict:
    """The DataCheck executor as TFX runs it (its Beam pipeline in process): what it
    raised, if anything, and the process's peak RSS."""
    from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
    from tfx.types import standard_artifacts

    from xfer.components.data_check import DataCheck
    from xfer.components.kfp_artifacts import HTML
    from xfer.pipeline.pipeline import in_process_beam_args

    examples = standard_artifacts.Examples()
    examples.uri, examples.split_names = examples_uri, split_names
    anomalies = standard_artifacts.ExampleAnomalies()
    anomalies.uri = os.path.join(out_uri, "anomalies")  # ExampleValidator found nothing
    os.makedirs(anomalies.uri)
    checked = standard_artifacts.Examples()
    checked.uri = os.path.join(out_uri, "checked")
    report = HTML()  # the step's page for the Kubeflow UI (components/kfp_artifacts.py)
    report.uri = os.path.join(out_uri, "report")
    executor = DataCheck.EXECUTOR_SPEC.executor_class(
        BaseBeamExecutor.Context(beam_pipeline_args=in_process_beam_args(["--direct_running_mode=in_memory"])))
    error, printed = None, io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            executor.Do({"examples": [examples], "anomalies": [anomalies]}, {"checked_examples": [checked], "report": [report]},
                        {"image_key": "image", "label_key": "label", "num_classes": 3, "on_anomaly": "fail",
                         "max_bad_fraction": 0.05, "image_size": 32, **params})
    except Exception as e:  # noqa: BLE001 - reported to the test
        error = f"{type(e).__name__}: {e}"
    return {"error": error, "stdout": printed.getvalue(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def data_check_in_a_process(examples, out, **params) -> dict:
    """run_data_check in a fresh Python, so that its peak RSS is DataCheck's alone."""
    args = json.dumps([examples.uri, examples.split_names, str(out), params])
    proc = subprocess.run([sys.executable, __file__, args], capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])



def encoded(fmt: str, size, mode: str = "RGB", **save) -> bytes:
    """A real image of `size` in `fmt`, written by Pillow."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(sum(size)).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def patched_jpeg(marker: bytes, width: int, height: int, **save) -> bytes:
    """A real JPEG whose SOFn marker (`marker`: b"\xff\xc0" baseline, b"\xff\xc2" progressive)
    is rewritten to say width x height: all its header's lengths stay right."""
    data = bytearray(encoded("JPEG", (48, 32), **save))
    at = data.index(marker)
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def patched_bmp(width: int, height: int) -> bytes:
    data = bytearray(encoded("BMP", (8, 8)))
    data[18:26] = struct.pack("<ii", width, -height)  # negative: top-down rows, as some writers do
    return bytes(data)


def gif(frames: int, size) -> bytes:
    import io

    from PIL import Image

    images = [Image.new("L", size, 10 + i) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=frames > 1, append_images=images[1:], duration=10, loop=0)
    return buf.getvalue()


def test_the_crafted_bomb_is_a_whole_valid_png():
    import zlib as z

    bomb = png_bomb()
    assert 1_000_000 < len(bomb) < 1_300_000
    assert struct.unpack(">II", bomb[16:24]) == (BOMB_SIDE, BOMB_SIDE)
    # Every byte of its 1.2 GB of rows is there, the zlib checksum right (streamed, not held).
    idat = bomb[33 + 8:-12 - 4]
    inflate, total = z.decompressobj(), 0
    for at in range(0, len(idat), 1 << 16):
        piece = idat[at:at + (1 << 16)]
        while piece:
            total += len(inflate.decompress(piece, 1 << 24))
            piece = inflate.unconsumed_tail
    assert inflate.eof and total == BOMB_SIDE * (1 + 3 * BOMB_SIDE)
    # The same recipe, small enough to decode: black pixels, as its header says.
    small = tf.io.decode_png(png_bomb(300, 200)).numpy()
    assert small.shape == (200, 300, 3) and not small.any()


EXIF = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"  # empty: makes Pillow write an extended (VP8X) WebP


def test_the_header_reader_gives_each_formats_size():
    """The serving guard's reader (components/image_header.py) on real files of each format
    Pillow writes, and on headers rewritten to lie: the size a decoder would allocate."""
    from xfer.components.image_header import BMP, GIF, JPEG, PNG, UNKNOWN, WEBP, jpeg_size, sizes

    cases = [
        (encoded("PNG", (61, 37)), PNG, 61, 37, 1),
        (encoded("PNG", (61, 37), "L"), PNG, 61, 37, 1),
        (encoded("JPEG", (61, 37)), JPEG, 61, 37, 1),
        (encoded("JPEG", (61, 37), progressive=True), JPEG, 61, 37, 1),
        (encoded("BMP", (61, 37)), BMP, 61, 37, 1),
        (gif(3, (61, 37)), GIF, 61, 37, 3),
        (encoded("WEBP", (61, 37), quality=80), WEBP, 61, 37, 1),             # VP8 (lossy)
        (encoded("WEBP", (61, 37), lossless=True), WEBP, 61, 37, 1),          # VP8L
        (encoded("WEBP", (61, 37), quality=80, exif=EXIF), WEBP, 61, 37, 1),  # VP8X (extended)
        (png_bomb(), PNG, BOMB_SIDE, BOMB_SIDE, 1),
        (patched_jpeg(b"\xff\xc0", 20000, 20000), JPEG, 20000, 20000, 1),
        (patched_jpeg(b"\xff\xc2", 30000, 25000, progressive=True), JPEG, 30000, 25000, 1),
        (patched_bmp(20000, 20000), BMP, 20000, 20000, 1),
        (b"not an image at all", UNKNOWN, 0, 0, 1),
    ]
    images = tf.constant([c[0] for c in cases])
    found = sizes(images)
    for k, (_, fmt, width, height, frames) in enumerate(cases):
        w, h = jpeg_size(images[k], found.fmt[k], found.width[k], found.height[k])
        got = (int(found.fmt[k]), int(w), int(h), int(found.frames[k]))
        assert got == (fmt, width, height, frames), (k, got)
    assert [c[0][12:16] for c in cases[6:9]] == [b"VP8 ", b"VP8L", b"VP8X"], "each WebP chunk covered"


LIMIT = 10_000  # pixels: 100x100 passes, 101x100 does not


def test_each_image_above_the_limit_is_named_by_its_header_and_never_decoded(tmp_path):
    """DataCheck's per-record check (_Check) on one file: every format's oversized image is
    bad with its header's size, an image exactly at the limit passes, what does not decode
    still gets the decoder's words, and a bomb in a chunk that also holds a broken image is
    judged alone without being decoded."""
    import apache_beam as beam

    from xfer.components import data_check
    from xfer.pipeline.data.records import image_example

    images = [
        encoded("PNG", (100, 100)),                       # 0: exactly the limit: good
        png_bomb(),                                       # 1
        patched_jpeg(b"\xff\xc0", 20000, 20000),          # 2
        patched_jpeg(b"\xff\xc2", 30000, 25000, progressive=True),  # 3
        patched_bmp(20000, 20000),                        # 4
        gif(1, (200, 100)),                               # 5: a GIF's one frame
        gif(5, (50, 50)),                                 # 6: 5 frames of 2,500 pixels
        gif(3, (50, 50)),                                 # 7: 7,500 pixels in all: good
        encoded("WEBP", (300, 300), quality=80),          # 8: WebP, too large
        encoded("WEBP", (40, 40), quality=80),            # 9: WebP within the limit: not decodable here
        encoded("PNG", (60, 40))[:70],                    # 10: a truncated PNG
        encoded("JPEG", (60, 40)),                        # 11: good
    ]
    path = _write(tmp_path / "part.tfrecord", [image_example(e, 1, id=f"r{i}") for i, e in enumerate(images)])
    check = data_check._Check("image", "label", num_classes=3, image_size=32, max_pixels=LIMIT)
    check.setup()
    out = list(check.process((str(path), "train")))
    bad = {o.value["index"]: o.value["reason"] for o in out if isinstance(o, beam.pvalue.TaggedOutput)}
    good = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    assert len(good) == 3 and sorted(bad) == [1, 2, 3, 4, 5, 6, 8, 9, 10], bad
    tail = f" > data.max_pixels ({LIMIT}); from its header, not decoded"
    assert bad[1] == f"image too large: 20000x20000 pixels{tail}"
    assert bad[2] == f"image too large: 20000x20000 pixels{tail}"
    assert bad[3] == f"image too large: 30000x25000 pixels{tail}"
    assert bad[4] == f"image too large: 20000x20000 pixels{tail}"
    assert bad[5] == f"image too large: 200x100 pixels{tail}"
    assert bad[6] == f"image too large: 50x50 pixels x 5 frames{tail}"
    assert bad[8] == f"image too large: 300x300 pixels{tail}"
    assert bad[9].startswith("image does not decode (") and bad[10].startswith("image does not decode ("), bad
    # Judged alone (what a chunk's failed image gets, for its message): still not decoded.
    assert check._reason_alone(png_bomb()) == f"too large: 20000x20000 pixels > data.max_pixels ({LIMIT})"
    assert check._reason_alone(images[0]) == ""


def test_data_max_pixels_is_checked_like_serving_max_pixels():
    from xfer.pipeline.config import apply_overrides, validate

    from settings_helpers import make_config

    config = make_config()
    assert config.data.max_pixels == config.serving.max_pixels == 40_000_000
    assert make_config({"builtin": "digits", "max_pixels": 4_000_000}).data.max_pixels == 4_000_000
    raw = {"data": {"builtin": "digits"}}
    for value in ("0", "-5", "2000000000", "lots", "1.5", "true", "[1]"):
        with pytest.raises(ValueError, match=r"data\.max_pixels") as caught:
            validate(apply_overrides(raw, [f"data.max_pixels={value}"]), source="test.yaml")
        assert "Traceback" not in str(caught.value)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The same real records through ImportExampleGen's door, with and without the bomb at
    train record 7 of the user's file."""
    root = tmp_path_factory.mktemp("bombs")
    out = {}
    for name, bomb_at in (("clean", None), ("bomb", 7)):
        user_file = _data(root / name / "in", bomb_at=bomb_at)
        out[name] = (_import(root / name / "in", root / name / "examples"), user_file)
    return root, out


def test_data_check_refuses_the_bomb_naming_the_users_file_and_memory_stays_flat(imported):
    """The DataCheck executor as TFX runs it: under skip (in a process of its own) the bomb
    is dropped, counted and named, and the peak RSS with the bomb is that without it
    (unguarded it was 3.35 GB against 0.93 GB: the 1.2 GB decode and its copies); under
    fail the run stops naming the user's file and record."""
    from xfer.components.data_check import read_label_counts

    root, examples = imported
    clean = data_check_in_a_process(examples["clean"][0], root / "dc-clean", on_bad_image="skip")
    bomb, user_file = examples["bomb"]
    skipped = data_check_in_a_process(bomb, root / "dc-skip", on_bad_image="skip")
    print(f"DataCheck peak RSS: {clean['peak_rss_mb']:.0f} MB without the bomb, {skipped['peak_rss_mb']:.0f} "
          f"MB with it")
    # Under fail the same reading happens; only the outcome differs (no memory measured).
    failed = run_data_check(bomb.uri, bomb.split_names, str(root / "dc-fail"), {"on_bad_image": "fail"})

    named = (f"split train, {user_file} record 7, id bomb: image too large: 20000x20000 pixels > "
             f"data.max_pixels (40000000); from its header, not decoded")
    assert failed["error"].startswith("DataCheckFailed: 1 bad record(s) (an image that does not decode or is "
                                      "above data.max_pixels"), failed
    assert named in failed["error"] and "raise data.max_pixels" in failed["error"]
    assert "--max-side N" in failed["error"] and "data.on_bad_image: skip" in failed["error"]

    assert clean["error"] is None and skipped["error"] is None, skipped
    assert f"[xfer] skipped 1 bad record(s) (data.on_bad_image: skip): {named}" in skipped["stdout"]
    checked = root / "dc-skip" / "checked"
    assert read_label_counts(str(checked)) == read_label_counts(str(root / "dc-clean" / "checked"))
    kept = [r for f in tf.io.gfile.glob(str(checked / "Split-train" / "*"))
            for r in tf.data.TFRecordDataset(f, compression_type="GZIP").as_numpy_iterator()]
    assert len(kept) == 40 and not any(b"bomb" in r for r in kept)
    [listed] = json.loads((checked / "bad_records.json").read_text())
    assert (listed["source"], listed["source_index"], listed["id"]) == (str(user_file), 7, "bomb")

    # Decoded, the bomb alone is 1.2 GB (20000 x 20000 x 3 bytes); with it the peak stays
    # within 200 MB of the clean run's.
    assert skipped["peak_rss_mb"] < clean["peak_rss_mb"] + 200, (clean, skipped)


def test_skipped_bombs_count_against_max_bad_fraction(imported, tmp_path):
    root, examples = imported
    result = run_data_check(examples["bomb"][0].uri, examples["bomb"][0].split_names, str(tmp_path),
                            {"on_bad_image": "skip", "max_bad_fraction": 0.01})
    assert result["error"].startswith("DataCheckFailed: split train: 1 of 41 records are bad (2.4%), more than "
                                      "data.max_bad_fraction 0.01 allows to skip: split train, "), result
    assert "image too large: 20000x20000 pixels" in result["error"]



PEAK_RUN = textwrap.dedent("""
    import json, resource, subprocess, sys
    proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest process it ran
    print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "peak_mb": peak}))
""")


@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_a_whole_run_with_the_bomb_under_skip_trains_without_it(cifar, tmp_path):
    """xfer run, every step, on CIFAR's real records with the bomb as train record 5:
    ImportExampleGen and StatisticsGen read its header only (TFDV's image statistics look
    at magic bytes; their size statistics, which decode, are off), DataCheck drops it,
    and Transform, the Trainer and the Evaluator read DataCheck's records. Unguarded this
    run peaked at 8.8 GB (1.35 GB without the bomb)."""
    from conftest import CONFIGS, XFER
    from xfer.pipeline.data.records import image_example

    train = list(tf.data.TFRecordDataset(str(cifar / "train" / "cifar10_train.tfrecord")).as_numpy_iterator())
    user_file = _write(tmp_path / "data" / "train" / "part.tfrecord",
                       train[:5] + [image_example(png_bomb(), 1, id="bomb")] + train[5:])
    _write(tmp_path / "data" / "eval" / "part.tfrecord",
           tf.data.TFRecordDataset(str(cifar / "test" / "cifar10_test.tfrecord")).as_numpy_iterator())
    run = [XFER, "run", "--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={tmp_path / 'root'}",
           "--set", f"data.input_base={tmp_path / 'data'}", "--set", "data.splits={train: 'train/*', eval: 'eval/*'}",
           "--set", f"data.labels_file={cifar / 'labels.txt'}", "--set", "data.on_bad_image=skip"]
    proc = subprocess.run([sys.executable, "-c", PEAK_RUN, *run], capture_output=True, text=True, timeout=1400)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["rc"] == 0, got["stdout"][-4000:] + got["stderr"][-4000:]
    out = got["stdout"]
    print(f"xfer run with the bomb (skip): peak RSS {got['peak_mb']:.0f} MB")
    assert (f"skipped 1 bad record(s) (data.on_bad_image: skip): split train, {user_file} record 5, id bomb: "
            f"image too large: 20000x20000 pixels > data.max_pixels (40000000); from its header, not decoded") in out
    with open(out.split("run result: ")[1].split()[0]) as f:
        result = json.load(f)
    assert result["status"] == "complete" and result["bad_records_skipped"] == 1, result
    assert result["examples"] == {"eval": 128, "train": 128}, result
    # Decoding the bomb once takes 1.2 GB on top of the run's own 1.35 GB.
    assert got["peak_mb"] < 2200, got["peak_mb"]


if __name__ == "__main__":
    print(json.dumps(run_data_check(*json.loads(sys.argv[1]))))

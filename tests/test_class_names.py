"""Class names are the user's data: one rule (components/labels.py) refuses the ones that
would shift class ids, break plots or rewrite text, wherever names come from (labels.txt
through the preflight and `xfer data schema`, folder names through import-folder, string
labels through DataCheck), and what shows names stays bounded (plots) and inert (the
model card) whatever they are."""
import html.parser
import json
import os
import re
import unicodedata

import pytest

from conftest import CONFIGS, REPO, xfer
from xfer.components.labels import MAX_NAME_CHARS, BadClassNames, check_names, parse_labels

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "ab\u202ecd" shows as "abdc"

# labels.txt contents, and what the refusal must say (the line, and what is wrong).
BAD_LABELS = {
    "duplicate": ("cat\ndog\ncat\nbird\n", ["line 3: 'cat' again (as line 1)"]),
    "empty line": ("cat\ndog\n\nbird\n", ["line 3 is empty"]),
    "5,000 characters": ("cat\n" + "x" * 5000 + "\ndog\n", ["line 2: 'xxx", "is 5,000 characters long",
                                                             f"over the {MAX_NAME_CHARS}"]),
    "U+202E": (f"cat\nab{RLO}cd\ndog\n", ["line 2: 'ab\\u202ecd' has U+202E RIGHT-TO-LEFT OVERRIDE at character 3"]),
}


def _labels(tmp_path, text: str):
    path = tmp_path / "labels.txt"
    path.write_bytes(text.encode("utf-8"))
    return path


def _png(path, seed=0):
    import numpy as np
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def test_the_rule_keeps_real_names_and_drops_only_line_ends_and_trailing_blank_lines():
    names = ["cat", "São Paulo street", "00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris",
             "東京", "x" * MAX_NAME_CHARS]
    text = "\ufeff" + "\r\n".join(names) + "\r\n\n\n"  # a byte-order mark, CRLF lines, blank lines at the end
    assert parse_labels(text.encode(), "labels.txt") == names
    with pytest.raises(BadClassNames, match=f"line 1: 'xxx.* is {MAX_NAME_CHARS + 1} characters long"):
        parse_labels(("x" * (MAX_NAME_CHARS + 1) + "\ncat\n").encode(), "labels.txt")


@pytest.mark.parametrize("name, expected", [
    ("a\u200bb", "U+200B ZERO WIDTH SPACE"), ("a\u2028b", "U+2028 LINE SEPARATOR"),
    ("a\u2029b", "U+2029 PARAGRAPH SEPARATOR"), ("a\x1bb", "U+001B"), ("a\u2066b", "U+2066 LEFT-TO-RIGHT ISOLATE")])
def test_every_invisible_or_reordering_character_is_named_by_its_code_point(name, expected):
    assert unicodedata.category(name[1]) in ("Cc", "Cf", "Zl", "Zp")
    with pytest.raises(BadClassNames, match=f"line 2: .* has {re.escape(expected)} at character 2"):
        parse_labels(f"cat\n{name}\n".encode(), "labels.txt")


def test_one_name_in_two_unicode_spellings_is_a_duplicate():
    with pytest.raises(BadClassNames) as e:
        parse_labels("caf\u00e9\ncafe\u0301\n".encode(), "labels.txt")
    assert "line 2: 'cafe\u0301' again (as line 1: 'caf\\xe9' and 'cafe\\u0301' are one name in Unicode NFC)" in str(e.value)


def test_a_labels_file_that_is_not_utf8_names_the_line(tmp_path):
    with pytest.raises(BadClassNames, match=r"line 2 is not UTF-8 text \(byte 0xE9\)"):
        parse_labels(b"cat\nd\xe9g\n", "labels.txt")


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_preflight_refuses_the_labels_file_naming_the_line(tmp_path, monkeypatch, cifar, case):
    from xfer.pipeline import preflight
    from xfer.pipeline.config import load_config

    text, expected = BAD_LABELS[case]
    labels = _labels(tmp_path, text)
    monkeypatch.chdir(REPO)  # the config's data paths are relative to the repository
    config = load_config(str(CONFIGS / "cifar_small.yaml"), [f"root={tmp_path / 'root'}", f"data.labels_file={labels}",
                                                            "train.fine_tune.enabled=false"])
    problems = preflight.run(config).problems
    mine = [p for p in problems if "labels_file" in p]
    assert len(mine) == 1, problems
    assert mine[0].startswith(f"data.labels_file '{labels}': "), mine[0]
    for text in expected:
        assert text in mine[0], mine[0]
    assert len(mine[0]) < 600 and "\n" not in mine[0] and RLO not in mine[0]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_xfer_run_check_stops_on_a_bidi_override_with_exit_2_and_no_trace(tmp_path, cifar):
    labels = _labels(tmp_path, BAD_LABELS["U+202E"][0])
    proc = xfer("run", "--check", "--config", str(CONFIGS / "cifar_small.yaml"), "--set", f"root={tmp_path / 'root'}",
                "--set", f"data.labels_file={labels}", "--set", "train.fine_tune.enabled=false", check=False,
                env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "preflight found 1 problem(s)" in proc.stderr and BAD_LABELS["U+202E"][1][0] in proc.stderr, proc.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "root").exists()


def _main(tmp_path, monkeypatch, capsys, *argv):
    """`xfer ARGV` in this process (the CLI's own main, as the console script calls it):
    (exit code, stderr lines), with the trace folder under tmp_path."""
    from xfer.pipeline.cli import main

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    code = main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_data_schema_refuses_the_labels_file_naming_the_line(tmp_path, monkeypatch, capsys, case):
    text, expected = BAD_LABELS[case]
    labels, out = _labels(tmp_path, text), tmp_path / "schema.pbtxt"
    code, lines = _main(tmp_path, monkeypatch, capsys, "data", "schema", "--labels", str(labels), "--out", str(out))
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"xfer: config error: data.labels_file '{labels}': "), lines
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists() and not (tmp_path / "state").exists()


@pytest.mark.parametrize("folders, expected", [
    ([f"ab{RLO}cd", "cat"], "class folder 'ab\\u202ecd' has U+202E RIGHT-TO-LEFT OVERRIDE at character 3"),
    (["y" * (MAX_NAME_CHARS + 1), "cat"], f"is {MAX_NAME_CHARS + 1} characters long"),
    (["caf\u00e9", "cafe\u0301"], "again (as class folder 'cafe\u0301': 'cafe\\u0301' and 'caf\\xe9' are one name"),
    (["cat ", "dog"], "class folder 'cat ' starts or ends with white space"),
])
def test_import_folder_refuses_a_class_folder_name_naming_the_folder(tmp_path, folders, expected):
    from xfer.pipeline.data.import_folder import BadArgument, import_folder

    src, out = tmp_path / "src", tmp_path / "out"
    for k, name in enumerate(folders):
        _png(src / name / f"{k}.png", k)
    with pytest.raises(BadArgument) as e:
        import_folder(str(src), str(out), workers=1)
    assert str(e.value).startswith(f"import-folder: {src}: "), str(e.value)
    assert expected in str(e.value) and "rename the folder" in str(e.value), str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no OUT, no half-written .out.partial-*


def test_import_folder_cli_refuses_a_folder_name_that_is_not_utf8_with_exit_2(tmp_path, monkeypatch, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _png(src / "cat" / "a.png")
    bad = os.path.join(os.fsencode(src), b"d\xe9g")
    os.makedirs(bad)
    _png(tmp_path / "x.png")
    os.rename(tmp_path / "x.png", os.path.join(bad, b"b.png"))
    code, lines = _main(tmp_path, monkeypatch, capsys, "data", "import-folder", str(src), str(out), "--workers", "1")
    assert code == 2, lines
    assert len(lines) == 1 and "class folder 'd\\udce9g' has byte 0xE9 at character 2, a byte that is not UTF-8" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no OUT, no half-written import, no trace folder


def test_datacheck_names_the_record_whose_string_label_is_no_class_name(tmp_path):
    import apache_beam as beam
    import tensorflow as tf

    from xfer.components import data_check
    from xfer.pipeline.data.records import image_example

    _png(tmp_path / "a.png")
    image = (tmp_path / "a.png").read_bytes()
    labels = ["cat", f"ab{RLO}cd", "", "x" * 5000, "dog", "\xff"]
    path = str(tmp_path / "part.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for k, label in enumerate(labels):
            raw = label.encode("latin-1") if label == "\xff" else label.encode("utf-8")
            w.write(image_example(image, raw, id=f"img{k}"))
    check = data_check._Check("image", "label", num_classes=0, image_size=32)
    check.setup()
    out = list(check.process((path, "train")))
    bad = {o.value["index"]: o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)}
    good = [o[2] for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    assert good == ["cat", "dog"] and sorted(bad) == [1, 2, 3, 5]
    assert bad[1]["reason"].startswith("label 'ab\\u202ecd' has U+202E RIGHT-TO-LEFT OVERRIDE at character 3")
    assert bad[2]["reason"].startswith("label '' is empty")
    assert "is 5,000 characters long" in bad[3]["reason"] and len(bad[3]["reason"]) < 400
    assert bad[5]["reason"].startswith("label b'\\xff' is not UTF-8 text")
    assert data_check.describe(bad[1]).startswith("split train, part.tfrecord record 1, id img1: label 'ab\\u202ecd'")


@pytest.mark.parametrize("classes", [12, 200])  # 200: more than MAX_TICKS, every 2nd labelled
def test_the_confusion_matrix_stays_under_the_pixel_cap_with_5000_character_names(tmp_path, classes):
    import numpy as np
    from PIL import Image

    from xfer.components import reports

    names = [f"{k:03d}" + "n" * 4997 for k in range(classes)]
    matrix = np.random.default_rng(0).integers(0, 9, (classes, classes))
    path = tmp_path / "confusion.png"
    reports.plot_confusion(matrix, names, str(path))
    with Image.open(path) as png:
        width, height = png.size
    assert max(width, height) <= reports.MAX_PNG_SIDE, (width, height)
    assert min(width, height) > 300  # still a drawn matrix, not an empty crop


def test_image_grids_stay_under_the_pixel_cap_with_5000_character_names(tmp_path):
    import numpy as np
    from PIL import Image

    from xfer.components import reports

    names = ["a" * 5000, "b" * 5000]
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype(np.float32)
    labels, predicted = np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])
    reports.plot_grid(images, labels, predicted, names, str(tmp_path / "grid.png"), side=2)
    top = reports.TopLosses(k=4)
    top.add(images, labels, np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]]))
    reports.plot_top_losses(top, names, str(tmp_path / "top.png"))
    for name in ("grid.png", "top.png"):
        with Image.open(tmp_path / name) as png:
            assert max(png.size) <= reports.MAX_PNG_SIDE, (name, png.size)


class _Tags(html.parser.HTMLParser):
    """The tags and their attributes in an HTML document."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def test_the_model_card_escapes_markup_and_shows_bidi_overrides_as_code_points(tmp_path):
    markdown = pytest.importorskip("markdown")
    from xfer.components import model_card
    from xfer.components.settings import EvalConfig

    names = ["<script>alert(1)</script>", "![beacon](http://x/y.png)", "[click](javascript:alert(1))",
             "*bold* _em_ `code` # h", "a|b & c"]
    model = tmp_path / "model"
    (model / "assets.extra").mkdir(parents=True)
    (model / "assets.extra" / "labels.txt").write_text("".join(f"{n}\n" for n in names))
    examples = tmp_path / "examples"
    examples.mkdir()
    counts = {"train": {"0": 3, "1": 2, "<img src=x onerror=alert(1)>": 1}, "eval": {"0": 1}}
    (examples / "label_counts.json").write_text(json.dumps(counts))
    out = tmp_path / "version"
    out.mkdir()
    inputs = model_card.Inputs(model_dir=str(model), model_uri=str(model), version=1,
                               destination=str(tmp_path / f"serv{RLO}ing"), eval=EvalConfig(), blessed=True,
                               code_fingerprint="f", examples_uri=str(examples), run_id="<b>run</b>")
    md = (out / model_card.MARKDOWN) if model_card.write(inputs, str(out)) else None
    text = md.read_text()
    rendered = markdown.markdown(text, extensions=["tables", "fenced_code"])
    card_html = (out / model_card.HTML).read_text()
    for doc in (rendered, card_html):
        tags = {t for t, _ in _tags(doc)}
        assert not tags & {"script", "img", "a", "b", "em", "strong", "code"}, (tags, doc)
        assert RLO not in doc and "serv(U+202E)ing" in doc
    # What a reader sees is the names as written.
    for name in names:
        shown = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert f"<td>{shown}</td>" in rendered and f"<td>{shown}</td>" in card_html, name
    assert "<td>&lt;img src=x onerror=alert(1)&gt;</td>" in rendered

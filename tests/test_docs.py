"""The documentation stays true: the site builds with --strict, the configuration reference
is the schema's, the tutorials' commands run as written, and no tracked file carries a
machine's paths or notes about how the work was organised.

The tutorial test runs the marked command blocks of docs/getting-started.md, then of
docs/debugging.md, verbatim, in one working folder (tmp_path) where the test has written
`my-images/`: scikit-learn's 1,797 handwritten digit scans as PNG files, one folder per
class (zero ... nine). Nothing in the commands is substituted; `xfer` is the venv's.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

VENV_BIN = Path(sys.executable).parent
MKDOCS = VENV_BIN / "mkdocs"
TUTORIALS = ["getting-started.md", "debugging.md"]
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# A marker comment on the line before a fenced block: `<!-- test -->` runs the block's
# lines in bash (exit 0 expected), `<!-- test: exit N -->` expects exit code N, and
# `<!-- test: file NAME -->` writes the block's text to NAME.
MARKER = re.compile(r"^<!-- test(?:: (?P<kind>exit|file) (?P<arg>\S+))? -->$")
FENCE = re.compile(r"^```(\w*)$")


def marked_blocks(page: Path) -> list[dict]:
    """The page's marked blocks in order: {kind: run|file, text, exit or name, line}."""
    lines = page.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        marker = MARKER.match(line.strip())
        if not marker:
            if line.strip().startswith("<!-- test"):
                raise AssertionError(f"{page.name}:{i + 1}: malformed test marker {line.strip()!r}; "
                                     f"write <!-- test -->, <!-- test: exit N --> or <!-- test: file NAME -->")
            continue
        if i + 1 >= len(lines) or not FENCE.match(lines[i + 1]):
            raise AssertionError(f"{page.name}:{i + 1}: a test marker must be followed by a fenced block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j] == "```"), None)
        if end is None:
            raise AssertionError(f"{page.name}:{i + 2}: the fenced block is never closed")
        text = "\n".join(lines[i + 2:end]) + "\n"
        if marker["kind"] == "file":
            blocks.append({"kind": "file", "name": marker["arg"], "text": text, "line": i + 1})
        else:
            blocks.append({"kind": "run", "text": text, "line": i + 1,
                           "exit": int(marker["arg"]) if marker["kind"] == "exit" else 0})
    return blocks


# --- the site -----------------------------------------------------------------------

def test_site_builds_strict_and_offline(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-5000:]}"
    assert "WARNING" not in proc.stderr, proc.stderr
    for page in ["index.html", "getting-started/index.html", "reference/config/index.html",
                 "kubeflow-vertex/index.html", "reliability/index.html"]:
        assert (site / page).is_file(), f"{page} missing from the built site"
    # theme.font: false: no page asks a font server (the site and its build work offline).
    for html in site.rglob("*.html"):
        assert "fonts.googleapis.com" not in html.read_text(), html


def test_marked_blocks_are_well_formed():
    for name in TUTORIALS:
        blocks = marked_blocks(REPO / "docs" / name)
        assert any(b["kind"] == "run" for b in blocks), f"docs/{name} has no tested command block"


# --- the configuration reference ----------------------------------------------------

def test_config_reference_is_generated_from_the_schema():
    from xfer.pipeline.config_reference import REGENERATE, render
    committed = (REPO / "docs" / "reference" / "config.md").read_text()
    assert committed == render(), (
        f"docs/reference/config.md differs from components/settings.py; regenerate it: {REGENERATE}")


def test_every_config_key_has_a_description():
    from xfer.pipeline.config_reference import missing_descriptions
    missing = missing_descriptions()
    assert not missing, (f"keys without a description (add description= to their Field in "
                         f"components/settings.py): {', '.join(missing)}")


def test_reference_gives_a_key_its_type_default_and_choices():
    from xfer.pipeline.config_reference import render
    page = render()
    from_layer = page.split("### `train.fine_tune.from_layer`\n", 1)[1].split("###", 1)[0]
    assert "*string or null* · default `null`" in from_layer
    assert "every base layer after it" in from_layer
    backbone = page.split("### `model.backbone`\n", 1)[1].split("###", 1)[0]
    assert "`vgg16`, `mobilenet_v2`, `resnet50`, `efficientnet_b0`" in backbone
    assert "allowed: ≥ 0.0, ≤ 1.0" in page.split("### `data.max_bad_fraction`\n", 1)[1].split("###", 1)[0]
    assert "## `kubeflow.resources.<name>`" in page
    assert "**required**" in page.split("### `kubeflow.dataflow.project`\n", 1)[1].split("###", 1)[0]


# --- nothing of the machine or of how the work was organised --------------------------

# A home, root or work folder of some machine: the path must start there (a bucket's folder
# of the same name, after gs://bucket, is not one).
# Each word below is written in pieces, so that this file does not hold what it looks for.
MACHINE_PATH = re.compile(r"(?<![\w.:/-])/(?:" + "|".join(["wo" "rk", "ro" "ot", "ho" "me"]) + ")/")
# Container paths that must stay: the image's uv cache mount and its user's home.
ALLOWED_PATHS = {("Dockerfile", "target=/" "root/.cache/uv"), ("Dockerfile", "WORKDIR /" "home/xfer")}
WORK_NOTES = re.compile("|".join([r"\bthis st" r"op\b", r"\bthe st" r"ops? before\b", r"\bst" r"op before's\b",
                                  r"\bst" r"op \d+\b", r"\bis" r"sues?\b", r"\bhel" r"pers?\b",
                                  r"\bses" r"sions?\b"]), re.IGNORECASE)
# pytest's own word for a fixture's scope.
ALLOWED_NOTES = {'scope="ses' 'sion"'}


def test_no_machine_paths_or_work_notes_in_tracked_files():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    found = []
    for name in filter(None, files.decode().split("\0")):
        path = REPO / name
        if not path.is_file():
            continue  # deleted in the work tree, not yet committed
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line) and not any(name == f and allowed in line for f, allowed in ALLOWED_PATHS):
                found.append(f"{name}:{number}: a machine path: {line.strip()[:120]}")
            for match in WORK_NOTES.finditer(line):
                if not any(allowed in line for allowed in ALLOWED_NOTES):
                    found.append(f"{name}:{number}: {match.group(0)!r}: {line.strip()[:120]}")
    assert not found, "write these for a reader of the product, not of its making:\n" + "\n".join(found)


# --- the tutorials, run as written ---------------------------------------------------

def write_digit_folders(root: Path) -> int:
    """scikit-learn's digit scans as 32 px PNG files under root/<class name>/."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        gray = (pixels * (255.0 / 16.0)).round().astype("uint8")
        Image.fromarray(gray, mode="L").resize((32, 32), Image.BILINEAR).save(folder / f"{i:04d}.png")
    return len(digits.images)


def run_block(block: dict, page: str, cwd: Path, env: dict) -> str:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block["text"]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    where = f"docs/{page}:{block['line']}"
    assert proc.returncode == block["exit"], (
        f"{where}: exited {proc.returncode}, the page expects {block['exit']}\n{block['text']}"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


@pytest.mark.integration
@pytest.mark.timeout(2400)  # about 5 minutes alone; 20 beside other test runs on 2 cores
def test_tutorial_commands_run_as_written(tmp_path):
    images = write_digit_folders(tmp_path / "my-images")
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "XDG_STATE_HOME": str(tmp_path / "state")}
    outputs = {}
    for page in TUTORIALS:
        for block in marked_blocks(REPO / "docs" / page):
            if block["kind"] == "file":
                (tmp_path / block["name"]).write_text(block["text"])
                continue
            outputs[(page, block["line"])] = run_block(block, page, tmp_path, env)
    text = "\n".join(outputs.values())

    # The import kept every scan; the run blessed and pushed version 1.
    import json
    manifest = json.loads((tmp_path / "data" / "my-images" / "manifest.json").read_text())
    assert manifest["rejected"] == [], manifest["rejected"]
    assert "BLESSED" in text and "(version 1)" in text, text[-4000:]
    assert (tmp_path / "runs" / "my-images" / "serving" / "1" / "saved_model.pb").is_file()
    # The model learned: most of the sevens are predicted as seven.
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    sevens = len(list((tmp_path / "my-images" / "seven").iterdir()))
    assert len(predictions) == sevens
    right = sum(p["top"][0]["class"] == "seven" for p in predictions if "top" in p)
    assert right >= 0.8 * sevens, f"{right} of {sevens} sevens predicted as seven"
    # The bad key of the debugging page is refused by name.
    assert "unknown key 'model.bakbone' (did you mean 'backbone'?)" in text
    assert images == 1797

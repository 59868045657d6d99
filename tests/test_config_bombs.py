"""Configs that are small on disk and huge in memory, or deep enough to overflow the
stack: each is a config error (exit 2, one line naming where), refused in about a second
in bounded memory, with no trace file. Before, a 285-character alias bomb grew `xfer`
without end (its error message quoted the expanded value) and 5,000 brackets raised a
RecursionError with a trace file."""
import resource
import subprocess
import time

import pytest
import yaml

from conftest import XFER
from xfer.pipeline.config import (MAX_DEPTH, MAX_SET_BYTES, MAX_SHOWN, MAX_VALUES, ConfigError, load_config,
                                  parse_yaml, shown)

MEMORY_LIMIT = 1 << 30  # the refusals need ~70 MB; the expanded bomb would need terabytes
SECONDS = 20            # `timeout`; each refusal takes about a second here


def _bomb(levels: int = 9, width: int = 9) -> str:
    """A flow sequence whose last anchor expands to width**levels scalars (the billion
    laughs, 9**9 ~ 387 million, in under 300 characters)."""
    names = "abcdefghijklmnopqrstuvwxyz"
    parts = [f"&a [{','.join(['x'] * width)}]"]
    for prev, name in zip(names, names[1:levels]):
        parts.append(f"&{name} [{','.join([f'*{prev}'] * width)}]")
    return "[" + ", ".join(parts) + "]"


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _xfer(tmp_path, *args):
    """`xfer ARGS` under `timeout` and a 1 GiB address-space limit, its trace folder in tmp_path."""
    state = tmp_path / "state"
    start = time.monotonic()
    proc = subprocess.run(["timeout", str(SECONDS), XFER, *args], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(state)},
                          preexec_fn=_limit_memory)
    proc.seconds = time.monotonic() - start
    proc.traces = list((state / "xfer" / "errors").glob("*")) if (state / "xfer" / "errors").exists() else []
    return proc


def _refused(proc, *expected):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xfer: config error: "), proc.stderr[-3000:]
    assert len(lines[0]) < 1000, lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert proc.traces == [], proc.traces
    assert proc.seconds < SECONDS / 2, proc.seconds


def test_the_bomb_is_the_size_the_brief_says():
    assert len(_bomb()) < 300
    with pytest.raises(ConfigError, match="expands to more than"):
        parse_yaml(_bomb(), "x")
    assert parse_yaml(_bomb(levels=3, width=9), "x")[2][0][0] == ["x"] * 9  # 9**3 = 729 values: fine


def test_billion_laughs_in_the_config_file_is_refused_fast(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(f"name: bomb\ndata:\n  builtin: digits\n  spans:\n    window: {_bomb()}\n")
    proc = _xfer(tmp_path, "run", "--check", "--config", str(config))
    _refused(proc, f"{config}: refused: line 5, column", f"expands to more than {MAX_VALUES:,} values",
             "alias bomb")


def test_billion_laughs_in_a_set_value_is_refused_fast(tmp_path):
    proc = _xfer(tmp_path, "run", "--check", "--set", f"data.spans.window={_bomb()}")
    _refused(proc, "--set 'data.spans.window': refused: line 1, column", "alias bomb")


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"line 1, column 1: an alias inside its own anchor"):
        parse_yaml("&a [x, *a]", "--set x")
    config = tmp_path / "loop.yaml"
    config.write_text("name: loop\ndata: {builtin: digits}\nkubeflow:\n  labels: &l {a: *l}\n")
    _refused(_xfer(tmp_path, "run", "--check", "--config", str(config)), "line 4", "alias inside its own anchor")


def test_a_few_aliases_still_work(tmp_path):
    config = tmp_path / "anchors.yaml"
    config.write_text("name: anchors\ndata: {builtin: digits}\n"
                      "train:\n  transfer: {epochs: 2, learning_rate: &lr 0.002}\n"
                      "  fine_tune: {epochs: 1, learning_rate: *lr}\n")
    c = load_config(str(config))
    assert c.train.transfer.learning_rate == c.train.fine_tune.learning_rate == 0.002


def test_set_nested_5000_deep_is_a_config_error(tmp_path):
    proc = _xfer(tmp_path, "run", "--check", "--set", "a=" + "[" * 5000 + "]" * 5000)
    _refused(proc, "--set 'a': refused: line 1, column", f"nested more than {MAX_DEPTH} levels deep")


def test_a_dotted_key_5000_deep_is_a_config_error(tmp_path):
    proc = _xfer(tmp_path, "run", "--check", "--set", ".".join(["a"] * 5000) + "=1")
    _refused(proc, "a key of 5,000 parts, more than 32")


def test_a_config_file_nested_5000_deep_is_a_config_error(tmp_path):
    config = tmp_path / "deep.yaml"
    config.write_text("name: deep\ndata: {builtin: digits}\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    _refused(_xfer(tmp_path, "run", "--check", "--config", str(config)), "line 3, column", "nested more than")


def test_oversized_config_file_and_set_value_are_refused(tmp_path):
    config = tmp_path / "big.yaml"
    config.write_text("name: big\ndata: {builtin: digits}\n#" + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"big.yaml: more than 1,048,576 bytes"):
        load_config(str(config))
    with pytest.raises(ConfigError, match=f"over the {MAX_SET_BYTES:,} a --set may be"):
        load_config("demo", ["name=" + "x" * (MAX_SET_BYTES + 1)])
    # A file that never ends is read no further than the bound.
    _refused(_xfer(tmp_path, "run", "--check", "--config", "/dev/zero"), "/dev/zero: more than 1,048,576 bytes")


def test_error_messages_quote_values_cut_short():
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["train.batch_size=" + "9" * 10_000])  # beyond Python's 4,300 digits: text
    assert len(str(e.value)) < 4 * MAX_SHOWN + 100 and "'train.batch_size'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["model.backbone=" + "[" + ", ".join(["[x, y, z]"] * 1000) + "]"])
    assert "\n" not in str(e.value) and len(str(e.value)) < 4 * MAX_SHOWN + 100, str(e.value)
    assert len(shown(list(range(10**6)))) <= MAX_SHOWN


def test_many_errors_are_listed_up_to_a_bound():
    raw = yaml.safe_load("name: x\ndata: {builtin: digits}\n")
    raw["data"]["hash_buckets"] = {f"split{i}": [i] for i in range(100)}
    from xfer.pipeline.config import MAX_ERRORS, validate
    with pytest.raises(ConfigError) as e:
        validate(raw, "f.yaml")
    lines = str(e.value).splitlines()
    assert len(lines) == MAX_ERRORS + 1 and lines[-1] == f"f.yaml: and {100 - MAX_ERRORS} more errors like these"


def test_a_config_name_too_long_for_the_file_system_is_a_config_error(tmp_path):
    proc = _xfer(tmp_path, "runs", "--config", "x" * 100_000)
    _refused(proc, "File name too long; give a path to a YAML file")

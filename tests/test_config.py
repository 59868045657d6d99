"""Config loading: shipped configs validate; bad keys and values get one clear line."""
import pytest
import yaml

from conftest import CONFIGS, xfer
from xfer.pipeline.config import ConfigError, load_config, shipped_configs, validate


def test_shipped_configs_validate():
    assert {"demo", "local", "kubeflow"} <= set(shipped_configs())
    for name in shipped_configs():
        load_config(name)


def test_paths_default_under_root():
    c = load_config("demo", ["root=/tmp/somewhere"])
    assert c.pipeline_root == "/tmp/somewhere/pipeline_root"
    assert c.metadata_path == "/tmp/somewhere/metadata.sqlite"
    assert c.push.destination == "/tmp/somewhere/serving"


def test_set_overrides_parse_yaml_values():
    c = load_config("demo", ["train.batch_size=7", "train.augment.horizontal_flip=true",
                             "eval.max_drop=null"])
    assert c.train.batch_size == 7 and c.train.augment.horizontal_flip is True
    assert c.eval.max_drop is None


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["model.bakbone=vgg16"])
    msg = str(e.value)
    assert "\n" not in msg
    assert "unknown key 'model.bakbone'" in msg and "did you mean 'backbone'" in msg
    assert "allowed keys here: backbone" in msg


def test_wrong_type_names_key_value_and_expectation():
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["train.batch_size=many"])
    msg = str(e.value)
    assert "\n" not in msg
    assert "'train.batch_size'" in msg and "'many'" in msg and "integer" in msg


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"'model.backbone': 'resnet9'.*'vgg16', 'mobilenet_v2', 'resnet50' or 'efficientnet_b0'"):
        load_config("demo", ["model.backbone=resnet9"])


def test_no_threshold_is_an_error():
    with pytest.raises(ConfigError, match="at least one of min_accuracy, max_drop or max_drop_relative"):
        load_config("demo", ["eval.min_accuracy=null", "eval.max_drop=null"])


def test_data_needs_a_source():
    raw = yaml.safe_load((CONFIGS / "cifar_small.yaml").read_text())
    del raw["data"]["input_base"]
    with pytest.raises(ConfigError, match="builtin: digits"):
        validate(raw)


def test_cli_reports_config_error_in_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {builtin: digits}\ntrain: {batch_size: lots}\n")
    proc = xfer("run", "--config", str(bad), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "train.batch_size" in lines[0] and "'lots'" in lines[0] and str(bad) in lines[0]


def test_step_configs_carry_only_what_the_step_uses():
    c = load_config("demo")
    assert "eval" not in c.step_config("trainer") and "eval" not in c.step_config("transform")
    assert "train" not in c.step_config("transform")


def test_help_explains_every_subcommand():
    out = xfer("--help").stdout
    assert "transfer learning" in out and "run" in out and "compile" in out
    for sub in ("run", "compile"):
        assert "--config" in xfer(sub, "--help").stdout

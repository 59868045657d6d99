"""Config loading: shipped configs validate; bad keys and values get one clear line;
each step's settings hold only what it uses."""
import os

import pytest
import yaml

from conftest import CONFIGS, xfer
from settings_helpers import make_config
from xfer.components.settings import PusherSettings, TrainerSettings, TransformSettings
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


def test_step_settings_carry_only_what_the_step_uses():
    c = load_config("demo")
    assert set(c.transform_settings("f").model_dump()) == {"code_fingerprint", "image_key", "label_key",
                                                           "image_size"}
    assert set(c.trainer_settings("f").model_dump()) == {"code_fingerprint", "image_key", "labels_file",
                                                         "num_classes", "model", "train", "serving", "calibrate"}
    # The Pusher writes the model card (it names the thresholds that judged the model) and
    # runs the canary on the eval images (image_key).
    assert set(c.pusher_settings("f").model_dump()) == {"code_fingerprint", "keep", "tflite", "tflite_min_agreement",
                                                        "vertex_model_registry", "eval", "image", "image_key"}


def test_export_options_are_not_in_the_trainers_cache_key():
    plain, tflite = load_config("demo"), load_config("demo", ["push.tflite=true", "push.keep=2"])
    assert plain.trainer_settings("f").model_dump(mode="json") == tflite.trainer_settings("f").model_dump(mode="json")
    assert plain.pusher_settings("f") != tflite.pusher_settings("f")


def test_each_step_validates_its_settings_from_custom_config():
    c = load_config("demo", ["train.fine_tune.from_layer=block5_conv1"])
    custom = c.trainer_settings("f").model_dump(mode="json")
    s = TrainerSettings.model_validate(custom)
    assert s.train.fine_tune.from_layer == "block5_conv1" and s.model.backbone == "vgg16"
    # The Vertex AI Trainer merges its own keys into the custom_config run_fn receives.
    assert TrainerSettings.model_validate({**custom, "ai_platform_enable_vertex": True}) == s
    with pytest.raises(ValueError, match="extra"):
        TransformSettings.model_validate({**c.transform_settings("f").model_dump(), "stray": 1})
    pushed = PusherSettings.model_validate_json(c.pusher_settings("f").model_dump_json())
    assert pushed.tflite is False and pushed.keep is None


def test_builtin_data_names_its_labels_file():
    c = make_config(root="/tmp/r")
    assert c.data.labels_file == "/tmp/r/data/digits/labels.txt"
    assert make_config(root="/tmp/r", data={"builtin": "digits", "labels_file": "/x/l.txt"}).data.labels_file == \
        "/x/l.txt"


def test_local_paths_made_absolute_at_load_remote_ones_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.h5").write_bytes(b"")
    c = load_config("demo", ["model.weights=w.h5", "data.schema_path=s/schema.pbtxt"])
    here = str(tmp_path)
    assert c.root == f"{here}/runs/demo" and c.pipeline_root == f"{here}/runs/demo/pipeline_root"
    assert c.metadata_path == f"{here}/runs/demo/metadata.sqlite"
    assert c.push.destination == f"{here}/runs/demo/serving"
    assert c.data.labels_file == f"{here}/runs/demo/data/digits/labels.txt" == f"{c.data_dir}/labels.txt"
    assert c.data.schema_path == f"{here}/s/schema.pbtxt" and c.model.weights == f"{here}/w.h5"
    assert load_config("demo").model.weights == "none"
    remote = load_config("kubeflow")
    assert remote.root == "gs://YOUR_BUCKET/xfer" and remote.data.input_base.startswith("gs://")
    assert load_config("local").data.input_base == os.path.join(here, "data/my_images")


def test_help_explains_every_subcommand():
    out = xfer("--help").stdout
    assert "transfer learning" in out and "run" in out and "compile" in out
    for sub in ("run", "compile"):
        assert "--config" in xfer(sub, "--help").stdout


def test_set_of_a_mapping_merges_into_the_section():
    c = load_config("demo", ["model={backbone: resnet50}"])
    assert c.model.backbone == "resnet50"
    # demo.yaml's other model keys stay (a replace would give imagenet weights, size 224).
    assert c.model.weights == "none" and c.model.image_size == 32
    assert c.model.head.pooling == "flatten" and c.model.head.dense == [256]
    # Recursively: a nested mapping merges too; a non-mapping value still replaces.
    c = load_config("demo", ["model={head: {dropout: 0.1}}", "train={batch_size: 8}"])
    assert c.model.head.dropout == 0.1 and c.model.head.dense == [256] and c.model.image_size == 32
    assert c.train.batch_size == 8 and c.train.transfer.epochs == load_config("demo").train.transfer.epochs
    assert load_config("demo", ["model.head.dense=[4, 2]"]).model.head.dense == [4, 2]
    # A key the section does not have is still refused, by its full name.
    with pytest.raises(ConfigError, match="unknown key 'model.bakbone'"):
        load_config("demo", ["model={bakbone: vgg16}"])


def test_shipped_name_wins_over_a_folder_a_file_over_a_shipped_name(tmp_path, monkeypatch):
    from xfer.pipeline.config import SHIPPED_DIR, resolve_config_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert resolve_config_path("demo") == SHIPPED_DIR / "demo.yaml"
    assert load_config("demo").name == load_config(str(SHIPPED_DIR / "demo.yaml")).name
    # A folder that is no shipped name: a config error naming it.
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match=r"config 'mine' is a folder .*mine\), not a YAML file"):
        load_config("mine")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config("./demo")  # a path, not a name
    # A YAML file named like a shipped config is still the file.
    (tmp_path / "local").write_text("name: my-local\ndata: {builtin: digits}\n")
    assert load_config("local").name == "my-local"


def test_cli_runs_with_a_folder_named_like_the_config(tmp_path):
    (tmp_path / "demo").mkdir()
    proc = xfer("runs", "--config", "demo", "--set", f"root={tmp_path / 'r'}", cwd=tmp_path, check=False)
    assert "IsADirectoryError" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # The shipped demo was read: its (empty) store is the one named.
    assert proc.stderr.startswith("xfer: config error: no runs yet: ") and f"{tmp_path}/r/metadata.sqlite" in proc.stderr
    proc = xfer("runs", "--config", "demo/", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("xfer: config error: config 'demo/' is a folder")


def test_tta_values_and_serving_tta_needs_eval_tta():
    assert load_config("demo", ["eval.tta=flips"]).eval.tta == "flips"
    assert load_config("demo", ["eval.tta=false"]).eval.tta is False
    c = load_config("demo", ["eval.tta=flips", "serving.tta=flips"])
    assert c.serving.tta == "flips" and c.trainer_settings("f").serving.tta == "flips"
    # eval.tta is the Evaluator's: it does not retrain the model.
    assert load_config("demo").trainer_settings("f") == load_config("demo", ["eval.tta=flips"]).trainer_settings("f")
    with pytest.raises(ConfigError, match=r"'eval.tta': 'flip'.*False or 'flips'"):
        load_config("demo", ["eval.tta=flip"])
    with pytest.raises(ConfigError, match="serving.tta is 'flips' but eval.tta is false: .* set eval.tta: flips too"):
        load_config("demo", ["serving.tta=flips"])


def test_steps_per_execution_is_auto_or_a_whole_number():
    assert load_config("demo").train.steps_per_execution == "auto"
    assert load_config("demo", ["train.steps_per_execution=50"]).train.steps_per_execution == 50
    # YAML reads `true` as a boolean, which pydantic would otherwise take as 1.
    for bad in ("0", "-3", "2.5", "fast", "true", "''"):
        with pytest.raises(ConfigError) as e:
            load_config("demo", [f"train.steps_per_execution={bad}"])
        msg = str(e.value)
        assert "\n" not in msg and "train.steps_per_execution" in msg, msg
        assert "give auto" in msg and "e.g. 50" in msg, msg


def test_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {builtin: digits\ntrain: {}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    assert str(e.value) == f"{bad}: not valid YAML: expected ',' or '}}', but got ':' at line 3, column 6"
    bad.write_text("name: x\n\tdata: 1\n")
    with pytest.raises(ConfigError, match=r"found character '\\t' that cannot start any token at line 2, column 1$"):
        load_config(str(bad))

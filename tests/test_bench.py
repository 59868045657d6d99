"""The benchmark's parsing of real Trainer and baseline output lines."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import (REPO, RESULTS_HEAD, bench_config, component_windows, cpu_line, epoch_rates, epoch_seconds, figures, final_val_accuracy, phase1_parts,  # noqa: E402
                       steady, trainer_sets, with_earlier_runs)


def test_epoch_rates_per_phase_from_both_sides():
    text = "\n".join([
        "[xfer] transfer epoch 1: accuracy=0.0838 loss=2.3027 3221.3 images/s (0.5s)",
        "[xfer] fine-tune: unfrozen 15 base layers (block_12_depthwise .. Conv_1)",
        "[xfer] fine-tune epoch 4: accuracy=0.1056 loss=2.3024 val_accuracy=0.0882 218.2 images/s (7.3s)",
        "[xfer] fine-tune epoch 5: accuracy=0.1050 loss=2.3023 292.5 images/s (5.5s)",
        "[baseline] fine-tune epoch 6: loss=2.3023 val_accuracy=0.0882 304.6 images/s (5.3s)",
    ])
    rates = epoch_rates(text)
    assert rates == {"transfer": [3221.3], "fine-tune": [218.2, 292.5, 304.6]}
    assert epoch_seconds(text) == {"transfer": [0.5], "fine-tune": [7.3, 5.5, 5.3]}
    assert steady([218.2, 292.5, 304.6]) == (292.5 + 304.6) / 2
    assert steady([100.0, 300.0, 200.0, 900.0]) == 300.0  # median: one odd epoch does not decide
    assert steady([5.0]) == 5.0


def test_component_windows_from_progress_lines():
    class W:
        lines = [(0.0, "[xfer] Transform running ..."), (1.5, "[xfer] transfer done: 3 epochs in 7.0s"),
                 (2.0, "[xfer] Transform done (2.0s)"), (2.1, "[xfer] Trainer running ...")]
    assert component_windows(W()) == {"Transform": (0.0, 2.0)}


def test_final_val_accuracy_is_the_last_epochs():
    text = "\n".join([
        "[xfer] transfer epoch 1: accuracy=0.5 loss=1.0 val_accuracy=0.6000 val_loss=0.9 300.0 images/s (1.0s)",
        "[xfer] fine-tune epoch 2: accuracy=0.7 loss=0.8 val_accuracy=0.7500 val_loss=0.7 280.0 images/s (1.1s)",
        "[xfer] fine-tune done: 1 epochs in 1.1s",
    ])
    assert final_val_accuracy(text) == 0.75
    assert final_val_accuracy("no epochs") != final_val_accuracy("no epochs")  # NaN: nothing to report


def test_figures_are_the_key_value_lines_of_a_bench_script():
    text = "\n".join([
        "2026-11-27 11:17:29.293745: W tensorflow/core/framework/local_rendezvous.cc:404] Local rendezvous",
        "  warnings.warn(message, FutureWarning)",
        "serving_raw_jpeg_images_per_s 446.2",
        "serving_raw_jpeg_images_per_s_rounds 476 393 384",
        "extract_frozen_stalls 0 of 12",
    ])
    assert figures(text) == {"serving_raw_jpeg_images_per_s": "446.2",
                             "serving_raw_jpeg_images_per_s_rounds": "476 393 384",
                             "extract_frozen_stalls": "0 of 12"}


def test_phase1_parts_and_the_floor_with_no_fixed_cost():
    # Lines of two real bench/trainer_alone.py runs (ten epochs, cached features and images), shortened.
    cached = "\n".join([
        "[xfer] transfer: cached base features of 1603 train and 397 eval images ((1280,), 10.2 MB) in 5.6s",
        "[xfer] transfer epoch 1: accuracy=0.0974 loss=2.3028 val_accuracy=0.0882 1747.3 images/s (0.9s)",
        *[f"[xfer] transfer epoch {i}: accuracy=0.1 loss=2.3 val_accuracy=0.0882 41166.7 images/s (0.1s)"
          for i in range(2, 11)],
        "[xfer] transfer done: 10 epochs in 6.9s (on cached features)",
    ])
    images = "\n".join([
        "[xfer] transfer epoch 1: accuracy=0.0974 loss=2.3028 val_accuracy=0.0882 202.1 images/s (8.1s)",
        *[f"[xfer] transfer epoch {i}: accuracy=0.1 loss=2.3 val_accuracy=0.0882 488.5 images/s ({s}s)"
          for i, s in zip(range(2, 11), (3.3, 3.4, 3.2, 3.3, 3.5, 3.3, 3.4, 3.3, 3.3))],
        "[xfer] transfer done: 10 epochs in 37.9s (on images)",
    ])
    parts = phase1_parts(cached, images)
    assert parts["extraction"] == 5.6 and parts["head_first"] == 0.9
    assert abs(parts["head_rest"] - (6.9 - 5.6 - 0.9)) < 1e-9  # from the total: epoch lines round
    assert parts["floor"] == 3.3 / 37.9  # the median steady epoch, not the first (tracing)


def test_cpu_line_names_the_model_and_tensorflows_onednn_default():
    avx512 = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
    avx2 = "model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t\t: fpu avx2 fma\n"
    assert cpu_line(avx512) == ("CPU AMD EPYC 9B14 (avx2, avx512f, avx512_vnni, avx512_bf16); "
                                "TensorFlow's oneDNN kernels by default here: on (the baseline script's side)")
    assert cpu_line(avx2).endswith("(avx2); TensorFlow's oneDNN kernels by default here: off (the baseline script's side)")
    assert "CPU unknown (none of avx2, avx512)" in cpu_line("")


def test_one_config_for_xfer_run_and_for_trainer_alone():
    config = bench_config(Path("/w/pipeline"), Path("/w/data"))
    yaml = str(REPO / "bench" / "bench.yaml")
    assert config == ["--config", yaml, "--set", "root=/w/pipeline", "--set", "data.input_base=/w/data",
                      "--set", "data.labels_file=/w/data/labels.txt"]
    assert trainer_sets(config) == [yaml, "root=/w/pipeline", "data.input_base=/w/data",
                                    "data.labels_file=/w/data/labels.txt"]


def test_a_bench_run_goes_on_top_and_keeps_every_earlier_run():
    first = with_earlier_runs("## `make bench`, day 1\n\nratio 0.9\n", "")
    assert first.startswith(RESULTS_HEAD) and "day 1" in first
    second = with_earlier_runs("## `make bench`, day 2\n\nratio 1.1\n", first + "\n## History of measurements\n\nold\n")
    assert second.count("# Benchmark results") == 1
    assert second.index("day 2") < second.index("day 1") < second.index("History of measurements")
    assert "ratio 0.9" in second and "old" in second

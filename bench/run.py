"""The benchmark: xfer against the plain-Keras script, ratios from one run.

usage: python bench/run.py [--out bench/RESULTS.md] [--work runs/bench]

Steps, in order, on the same data (bench/make_data.py) and the same model:
  1. the baseline script (bench/baseline_keras.py), wall time and images/s per phase;
  2. `xfer run` on a fresh root (cold cache), wall time, peak memory of the process
     tree, per-component wall and CPU use, images/s per phase;
  3. `xfer run` twice more, unchanged: the third run takes every step up to the Trainer
     from cache (ServedBaseline and the Evaluator run every time, by design);
  4. phase 1 alone, 10 epochs, on cached features and on images (the Trainer's run_fn
     alone: bench/trainer_alone.py);
     then the same at P1_LARGER images;
  5. phase 2 throughput: the baseline script and the Trainer's run_fn (trainer_alone.py),
     alternated, ROUNDS times each, FINE_TUNE_EPOCHS epochs a run, so drift of this
     shared machine falls on both sides alike; the ratio is of the medians of all
     epochs after each run's first;
  6. bytes Transform wrote against the raw TFRecords;
  7. serving on raw JPEG bytes against Keras predict on decoded tensors (bench/serving.py),
     and phase 1's feature extraction alone, three ways (bench/extract.py);
  8. camera-size photos (bench/photos.py): the input pipeline and serving's decoding
     three ways, import-folder --max-side;
  9. cost as data grows (bench/scale.py): the pipeline to the Trainer at 2,000, 20,000
     and 100,000 images, per step wall time and peak memory;
 10. Beam's local modes (bench/beam_modes.py): the Beam steps in_memory against
     multi_processing with 2 workers, at 20,000 and 100,000 images.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
XFER = str(Path(PY).parent / "xfer")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
# The baseline is the script a tutorial user writes, under TensorFlow's own defaults; xfer
# turns oneDNN's kernels on (components/__init__.py), so the baseline is also run with them.
ENV.pop("TF_ENABLE_ONEDNN_OPTS", None)
ONEDNN = {**ENV, "TF_ENABLE_ONEDNN_OPTS": "1"}
# An epoch line of the Trainer or the baseline: phase, epoch, images/s and its seconds.
EPOCH = re.compile(r"\[(?:xfer|baseline)\] (transfer|fine-tune) epoch (\d+):.* ([\d.]+) images/s(?: \(([\d.]+)s\))?")
# Phase 2 throughput: a fine-tune epoch is 3 to 5 s here (CPU-dependent), and consecutive epochs
# differ by up to 15%; 2 x 2 alternated runs of 6 epochs give 10 steady epochs a side.
ROUNDS, FINE_TUNE_EPOCHS = 2, 6
# Phase 1 cached against images again at this many images (three times the bench data).
P1_LARGER = 6000
# The default is steps_per_execution auto (one compiled call per epoch here, which is
# under 50 steps); also measured: one batch per call, the default before.
SPE = 1
COMPONENT = re.compile(r"\[xfer\] (\w+) (running \.\.\.|done)")


class Watched:
    """Runs a command, timestamps its output lines, and samples the process tree's
    memory and CPU time every 0.1 s."""

    def __init__(self, cmd: list[str], env: dict | None = None):
        self.cmd, self.lines, self.samples, self.peak_rss = cmd, [], [], 0
        self.env = ENV if env is None else env

    def run(self) -> "Watched":
        start = time.perf_counter()
        proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=REPO, env=self.env)
        done = threading.Event()
        sampler = threading.Thread(target=self._sample, args=(proc.pid, start, done), daemon=True)
        sampler.start()
        for line in proc.stdout:
            self.lines.append((time.perf_counter() - start, line.rstrip("\n")))
        proc.wait()
        self.seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        if proc.returncode:
            raise SystemExit(f"{' '.join(self.cmd)} failed:\n" + "\n".join(l for _, l in self.lines[-40:]))
        return self

    def _sample(self, pid, start, done):
        root = psutil.Process(pid)
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                rss = cpu = 0.0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                        t = p.cpu_times()
                        cpu += t.user + t.system + t.children_user + t.children_system
                    except psutil.Error:
                        pass
                self.peak_rss = max(self.peak_rss, rss)
                self.samples.append((time.perf_counter() - start, cpu))
            except psutil.Error:
                break
            time.sleep(0.1)

    @property
    def text(self) -> str:
        return "\n".join(l for _, l in self.lines)

    def cpu_between(self, t0: float, t1: float) -> float:
        """CPU seconds used by the tree between two moments (from the samples)."""
        def at(t):
            before = [c for s, c in self.samples if s <= t]
            return before[-1] if before else 0.0
        return at(t1) - at(t0)


def epoch_rates(text: str) -> dict:
    """{phase: [images/s per epoch]} from the Trainer's or the baseline's epoch lines."""
    rates: dict = {}
    for phase, _, rate, _ in EPOCH.findall(text):
        rates.setdefault(phase, []).append(float(rate))
    return rates


def epoch_seconds(text: str) -> dict:
    """{phase: [seconds per epoch]} from the same lines, those that give their seconds."""
    seconds: dict = {}
    for phase, _, _, s in EPOCH.findall(text):
        if s:
            seconds.setdefault(phase, []).append(float(s))
    return seconds


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def steady(rates: list[float]) -> float:
    """Median images/s over a phase's epochs after the first (which pays for tracing):
    epochs on this shared 2-core machine vary by +-15%, and a median shrugs off one slow one."""
    return median(rates[1:] or rates)


def fine_tune_utilization(w: Watched) -> float:
    """CPU use of the process tree over a run's steady fine-tune epochs (from the end of
    the first to the end of the last), as a fraction of all cores."""
    ends = [t for t, line in w.lines if re.search(r"\] fine-tune epoch \d+:", line)]
    if len(ends) < 2:
        return float("nan")
    return w.cpu_between(ends[0], ends[-1]) / (ends[-1] - ends[0]) / (os.cpu_count() or 1)


def component_windows(w: Watched) -> dict:
    """{component: (start, end)} from the '[xfer] X running ...' / 'done' lines."""
    starts, out = {}, {}
    for t, line in w.lines:
        m = COMPONENT.match(line)
        if not m:
            continue
        if m.group(2).startswith("running"):
            starts[m.group(1)] = t
        elif m.group(1) in starts:
            out[m.group(1)] = (starts[m.group(1)], t)
    return out


def phase_seconds(text: str) -> float:
    m = re.search(r"transfer done: \d+ epochs in ([\d.]+)s", text)
    return float(m.group(1))


def phase1_parts(cached: str, images: str) -> dict:
    """What phase 1's ten epochs cost on cached features, and the least they could cost:
    the extraction must run the base over every image once, which is what one steady
    epoch on images does too (train and eval; the head's step is small beside it). So
    `floor` (one steady epoch on images / the whole phase on images) is the ratio the
    cached phase would reach with no fixed cost at all: no tracing, no freezing, no
    loading of the transform graph."""
    extraction = float(re.search(r"cached base features of .* in ([\d.]+)s", cached).group(1))
    head = epoch_seconds(cached)["transfer"]
    on_images = epoch_seconds(images)["transfer"]
    # The rest from the phase's own total: the epoch lines round to 0.1 s, nine of them to 0.0.
    return {"extraction": extraction, "head_first": head[0],
            "head_rest": phase_seconds(cached) - extraction - head[0],
            "floor": median(on_images[1:] or on_images) / phase_seconds(images)}


def phase1_detail(cached: str, images: str) -> str:
    parts = phase1_parts(cached, images)
    return (f"{phase_seconds(cached):.1f} s / {phase_seconds(images):.1f} s; cached: extraction "
            f"{parts['extraction']:.1f} s, the head's first epoch {parts['head_first']:.1f} s (tracing), "
            f"the rest {parts['head_rest']:.1f} s; floor with no fixed cost (one steady epoch on "
            f"images / the ten) {parts['floor']:.3f}")


def final_val_accuracy(text: str) -> float:
    found = re.findall(r"epoch \d+:.*val_accuracy=([\d.]+)", text)
    return float(found[-1]) if found else float("nan")


def figures(text: str) -> dict[str, str]:
    """The "key value..." lines a bench script prints (bench/serving.py, bench/extract.py)."""
    return dict(line.split(" ", 1) for line in text.splitlines()
                if re.match(r"[a-z][a-z0-9_]* \S", line))


# TensorFlow turns oneDNN's kernels on by default on Linux only for CPUs with any of these
# (tensorflow/tensorflow, tensorflow/core/util/port.cc, DefaultOneDnnPolicy); the baseline
# script runs with TensorFlow's defaults, the Trainer always with oneDNN.
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def cpu_line(cpuinfo: str) -> str:
    """The CPU's model and the features that move these figures, from /proc/cpuinfo's text."""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    listed = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    flags = set(listed.group(1).split()) if listed else set()
    shown = [f for f in ("avx2", "avx512f", *ONEDNN_DEFAULT_FLAGS) if f in flags]
    default = "on" if flags & set(ONEDNN_DEFAULT_FLAGS) else "off"
    return (f"CPU {model.group(1).strip() if model else 'unknown'} ({', '.join(shown) or 'none of avx2, avx512'}); "
            f"TensorFlow's oneDNN kernels by default here: {default} (the baseline script's side)")


def bench_config(root: Path, data: Path) -> list[str]:
    """`xfer run` arguments: bench/bench.yaml on the images under `data`, the pipeline under `root`."""
    return ["--config", str(REPO / "bench" / "bench.yaml"), "--set", f"root={root}",
            "--set", f"data.input_base={data}", "--set", f"data.labels_file={data / 'labels.txt'}"]


def trainer_sets(config: list[str]) -> list[str]:
    """The same as bench/trainer_alone.py takes them: the config path, then the KEY=VALUE settings."""
    return [c for c in config if c not in ("--config", "--set")]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


RESULTS_HEAD = ("# Benchmark results\n\n"
                "Each `make bench` puts its run at the top; earlier runs and the history of other "
                "measurements follow, latest first.\n\n")


def with_earlier_runs(report: str, existing: str) -> str:
    """RESULTS.md with this run on top: the file's own head replaced, every earlier run
    and the history below kept as they were (a bench run never erases a measurement)."""
    earlier = existing[len(RESULTS_HEAD):] if existing.startswith(RESULTS_HEAD) else existing
    return RESULTS_HEAD + report.rstrip("\n") + "\n\n" + earlier.lstrip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(REPO / "runs" / "bench"))
    parser.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    work = Path(args.work).resolve()
    data, root = work / "data", work / "pipeline"
    sys.path.insert(0, str(REPO))
    from bench.make_data import write
    write(str(data))
    for stale in (root, work / "baseline_model", work / "phase1", work / "phase2"):
        shutil.rmtree(stale, ignore_errors=True)
    load = os.getloadavg()
    config = bench_config(root, data)

    print("[bench] baseline: plain Keras script ...", flush=True)
    base = Watched([PY, str(REPO / "bench" / "baseline_keras.py"), str(data), str(work / "baseline_model")]).run()
    print("[bench] pipeline: xfer run, cold ...", flush=True)
    cold = Watched([XFER, "run", *config]).run()
    second = Watched([XFER, "run", *config]).run()
    third = Watched([XFER, "run", *config]).run()
    cached_runs = [second.seconds, third.seconds]
    # Every step up to the Trainer from cache; ServedBaseline and the Evaluator run every time
    # by design (the served model can change under the same inputs); no version is pushed twice.
    steps = dict(line.split() for line in third.text.split("\n") if line.startswith("  ") and len(line.split()) == 2)
    all_cached = (all(steps.get(c) == "cached" for c in ("ImportExampleGen", "StatisticsGen", "SchemaGen",
                                                         "ExampleValidator", "DataCheck", "Transform", "Trainer"))
                  and "pushed: no new version" in third.text)

    sets = trainer_sets(config)

    def trainer_alone(out: Path, *overrides: str, on: Path = root, with_sets: list[str] = sets) -> Watched:
        """The Trainer's run_fn on the artifacts of the pipeline run under `on`, with the
        config and KEY=VALUE settings `with_sets`, then `overrides`."""
        return Watched([PY, str(REPO / "bench" / "trainer_alone.py"), str(on / "pipeline_root"), str(out),
                        *with_sets, *overrides]).run()

    # Phase 1 alone, 10 epochs, on cached features ("on") or on images ("off").
    phase1 = ["train.transfer.epochs=10", "train.fine_tune.enabled=false", "train.reports=false",
              "train.resume=false"]
    print("[bench] phase 1, 10 epochs, cached features vs images ...", flush=True)
    p1 = {mode: trainer_alone(work / "phase1" / mode, *phase1, f"train.transfer.cache_features={mode}")
          for mode in ("on", "off")}

    # The same at three times the data: phase 1 on cached features has fixed costs (tracing
    # the base, freezing it, tracing the head's fit) that ten epochs on images do not repeat,
    # so its ratio falls as the data grows; this row shows by how much.
    print(f"[bench] phase 1 again at {P1_LARGER:,} images ...", flush=True)
    larger_data, larger_root = work / f"data-{P1_LARGER}", work / f"phase1_{P1_LARGER}"
    write(str(larger_data), total=P1_LARGER)
    shutil.rmtree(larger_root, ignore_errors=True)
    larger_config = bench_config(larger_root, larger_data)
    Watched([XFER, "run", *larger_config, "--to", "Transform"]).run()
    larger_sets = trainer_sets(larger_config)
    p1_larger = {mode: trainer_alone(work / "phase1" / f"{mode}_{P1_LARGER}", *phase1,
                                     f"train.transfer.cache_features={mode}", on=larger_root, with_sets=larger_sets)
                 for mode in ("on", "off")}
    shutil.rmtree(larger_root, ignore_errors=True)

    print(f"[bench] phase 2 throughput, baseline and Trainer alternated, {ROUNDS} rounds ...", flush=True)
    p2: dict = {"baseline": [], "baseline_onednn": [], "xfer": [], "xfer_spe": []}
    # Phase 1 is one epoch on cached features, so each run gets to phase 2 quickly.
    phase2 = ["train.transfer.epochs=1", f"train.fine_tune.epochs={FINE_TUNE_EPOCHS}"]
    for i in range(ROUNDS):
        for side, env in (("baseline", ENV), ("baseline_onednn", ONEDNN)):
            p2[side].append(Watched([PY, str(REPO / "bench" / "baseline_keras.py"), str(data),
                                     str(work / "phase2" / f"{side}{i}"), "1", str(FINE_TUNE_EPOCHS)], env).run())
        for side, extra in (("xfer", []), ("xfer_spe", [f"train.steps_per_execution={SPE}"])):
            p2[side].append(trainer_alone(work / "phase2" / f"{side}{i}", *phase2, *extra))
    # Every epoch after each run's first (which pays for tracing), pooled per side.
    p2_rates = {side: [r for w in runs for r in epoch_rates(w.text)["fine-tune"][1:]] for side, runs in p2.items()}
    print("[bench] phase 2 profiled: one steady epoch of the Trainer traced ...", flush=True)
    profiled = Watched([PY, str(REPO / "bench" / "profile_phase2.py"), str(root / "pipeline_root"),
                        str(work / "phase2" / "profiled"), *sets, "train.transfer.epochs=1",
                        "train.fine_tune.epochs=3"]).run()
    profile_md = profiled.text[profiled.text.index("### Phase 2 profiled"):]

    print("[bench] spans: ImportExampleGen + DataCheck without spans, one span (drift check), a window of two ...",
          flush=True)
    spans_data = work / "spans"
    shutil.rmtree(spans_data, ignore_errors=True)
    for span in (1, 2):  # the bench data twice, as two nightly drops
        for split in ("train", "eval"):
            shutil.copytree(data / split, spans_data / f"span-{span}" / split)
    to_check = ["--to", "DataCheck", "--set", "data.drift.label_linf=0.5"]
    span_splits = ["--set", "data.splits={train: 'span-{SPAN}/train/*', eval: 'span-{SPAN}/eval/*'}",
                   "--set", f"data.input_base={spans_data}"]
    span_runs = {
        "no spans": Watched([XFER, "run", *config, "--set", f"root={work / 'spans_root0'}", *to_check]).run(),
        "span 2, drift vs span 1 (window 1)": Watched(
            [XFER, "run", *config, "--set", f"root={work / 'spans_root1'}", *span_splits, *to_check]).run(),
        "spans 1-2 (window 2), drift vs span 1": Watched(
            [XFER, "run", *config, "--set", f"root={work / 'spans_root2'}", *span_splits, *to_check,
             "--set", "data.spans.window=2"]).run(),
    }
    span_rows = []
    for name, w in span_runs.items():
        win = component_windows(w)
        seconds = {c: win[c][1] - win[c][0] for c in ("ImportExampleGen", "DataCheck") if c in win}
        span_rows.append(f"| {name} | {seconds.get('ImportExampleGen', float('nan')):.1f} | "
                         f"{seconds.get('DataCheck', float('nan')):.1f} | {w.seconds:.1f} |")
    for stale in ("spans_root0", "spans_root1", "spans_root2"):
        shutil.rmtree(work / stale, ignore_errors=True)

    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    alternated = [(f"phase2_{side}{i}", runs[i]) for i in range(ROUNDS) for side, runs in p2.items()]
    for name, w in (("baseline", base), ("xfer_cold", cold), ("xfer_run2", second), ("xfer_run3", third),
                    ("phase1_cached", p1["on"]), ("phase1_images", p1["off"]),
                    (f"phase1_cached_{P1_LARGER}", p1_larger["on"]), (f"phase1_images_{P1_LARGER}", p1_larger["off"]),
                    *alternated):
        (logs / f"{name}.log").write_text("\n".join(f"{t:8.2f}s  {line}" for t, line in w.lines) + "\n")

    raw_bytes = folder_bytes(data / "train") + folder_bytes(data / "eval")
    transform_dir = root / "pipeline_root" / "Transform"
    transform_bytes = folder_bytes(transform_dir)
    materialized = [p for p in transform_dir.rglob("*") if p.is_dir() and "transformed_examples" in p.name]
    materialized_bytes = sum(folder_bytes(p) for p in materialized)

    serving_out = Watched([PY, str(REPO / "bench" / "serving.py"), str(root / "serving" / "1"),
                           str(data / "eval" / "*")]).run().text
    serving = figures(serving_out)
    serve, keras = float(serving["serving_raw_jpeg_images_per_s"]), float(serving["keras_predict_decoded_images_per_s"])
    serve_rounds = serving["serving_raw_jpeg_images_per_s_rounds"]
    keras_rounds = serving["keras_predict_decoded_images_per_s_rounds"]
    rounds = len(serve_rounds.split())
    predict_best = max([keras] + [float(serving[f"keras_predict_decoded_batch{b}_images_per_s"]) for b in (64, 128)])
    print("[bench] feature extraction alone: frozen, plain, autotuned ...", flush=True)
    extract_out = Watched([PY, str(REPO / "bench" / "extract.py"), str(root / "pipeline_root"),
                           *sets]).run().text  # sets: the config, then its KEY=VALUE overrides

    extracted = figures(extract_out)

    def extract_figure(way: str, what: str) -> str:
        return extracted[f"extract_{way}_{what}"]

    m = re.search(r"cached base features of (\d+) train and (\d+) eval images .* in ([\d.]+)s", p1["on"].text)
    extract_rate = (int(m.group(1)) + int(m.group(2))) / float(m.group(3))

    print("[bench] camera-size photos ...", flush=True)
    photos = Watched([PY, str(REPO / "bench" / "photos.py"), str(work)]).run()
    photos_md = photos.text[photos.text.index("### Camera-size photos"):]
    print("[bench] cost as data grows: 2,000, 20,000, 100,000 images ...", flush=True)
    scale = Watched([PY, str(REPO / "bench" / "scale.py"), str(work)]).run()
    scale_md = scale.text[scale.text.index("### Cost as data grows"):]
    print("[bench] Beam's local modes: in_memory against multi_processing, 20,000 and 100,000 images ...", flush=True)
    modes = Watched([PY, str(REPO / "bench" / "beam_modes.py"), str(work)]).run()
    modes_md = modes.text[modes.text.index("### Beam's local modes"):]
    (logs / "profile_phase2.log").write_text(profiled.text + "\n")
    (logs / "photos.log").write_text(photos.text + "\n")
    (logs / "extract.log").write_text(extract_out + "\n")
    (logs / "serving.log").write_text(serving_out + "\n")
    (logs / "scale.log").write_text(scale.text + "\n")
    (logs / "beam_modes.log").write_text(modes.text + "\n")
    utilization = {side: [fine_tune_utilization(w) for w in runs] for side, runs in p2.items()}
    p2_epoch_s = median([s for w in p2["xfer"] for s in epoch_seconds(w.text)["fine-tune"][1:]])

    base_rates, pipe_rates = epoch_rates(base.text), epoch_rates(cold.text)
    rows = [
        ("end-to-end wall time, `xfer run` cold / baseline script", cold.seconds / base.seconds,
         "<= 1.5", "<= 1.2", f"{cold.seconds:.1f} s / {base.seconds:.1f} s"),
        (f"Trainer images/s with the defaults (steps_per_execution auto), phase 2 / baseline, same phase (median of {len(p2_rates['xfer'])} and "
         f"{len(p2_rates['baseline'])} epochs, {ROUNDS} alternated runs a side)",
         median(p2_rates["xfer"]) / median(p2_rates["baseline"]), ">= 0.9", ">= 1.0",
         f"{median(p2_rates['xfer']):.1f} / {median(p2_rates['baseline']):.1f} images/s; in the cold "
         f"run alone {steady(pipe_rates['fine-tune']) / steady(base_rates['fine-tune']):.2f} "
         f"({steady(pipe_rates['fine-tune']):.1f} / {steady(base_rates['fine-tune']):.1f})"),
        (f"the same, with `--set train.steps_per_execution={SPE}` (one batch per compiled call, the "
         f"default before `auto`)", median(p2_rates["xfer_spe"]) / median(p2_rates["baseline"]), "", "",
         f"{median(p2_rates['xfer_spe']):.1f} / {median(p2_rates['baseline']):.1f} images/s"),
        ("the baseline script itself with `TF_ENABLE_ONEDNN_OPTS=1` (the kernels xfer turns on) / "
         "without", median(p2_rates["baseline_onednn"]) / median(p2_rates["baseline"]), "", "",
         f"{median(p2_rates['baseline_onednn']):.1f} / {median(p2_rates['baseline']):.1f} images/s"),
        ("Trainer with the defaults / the baseline script with oneDNN's kernels too (same kernels on "
         "both sides)", median(p2_rates["xfer"]) / median(p2_rates["baseline_onednn"]), "", "",
         f"{median(p2_rates['xfer']):.1f} / {median(p2_rates['baseline_onednn']):.1f} images/s"),
        ("phase 1 wall time, cached features / images (10 epochs, no augmentation)",
         phase_seconds(p1["on"].text) / phase_seconds(p1["off"].text), "<= 0.25", "<= 0.1",
         phase1_detail(p1["on"].text, p1["off"].text)),
        (f"the same at {P1_LARGER:,} images (the bench's scans repeated, shifted; bench/make_data.py)",
         phase_seconds(p1_larger["on"].text) / phase_seconds(p1_larger["off"].text), "", "<= 0.1",
         phase1_detail(p1_larger["on"].text, p1_larger["off"].text)),
        ("bytes of transformed examples on disk / raw TFRecords", materialized_bytes / raw_bytes,
         "<= 1.5", "<= 1.0 (or none)",
         f"{'none materialized' if not materialized else materialized_bytes} "
         f"(transform graph {transform_bytes / 1e3:.0f} KB) / {raw_bytes / 1e6:.2f} MB"),
        ("phase 1's feature extraction (decode and forward pass, tracing included), images/s / Keras predict "
         "on decoded tensors at its best batch size (32, 64, 128)", extract_rate / predict_best, "", "",
         f"{extract_rate:.1f} / {predict_best:.1f} images/s"),
        ("phase 1's feature extraction alone (bench/extract.py), frozen weights / the function that reads "
         "the variables", float(extract_figure("frozen", "images_per_s")) / float(extract_figure("plain", "images_per_s")),
         "", "", f"{extract_figure('frozen', 'images_per_s')} / {extract_figure('plain', 'images_per_s')} images/s, "
                 f"medians of interleaved passes over the train split; stalls (a pass over 1 s slower than its "
                 f"fastest): frozen {extract_figure('frozen', 'stalls')}, plain {extract_figure('plain', 'stalls')}, "
                 f"frozen with tf.data's autotuner on {extract_figure('autotuned', 'stalls')}"),
        ("serving_default on raw JPEG, images/s / Keras predict on decoded tensors", serve / keras,
         ">= 0.8", ">= 0.95", f"{serve:.1f} / {keras:.1f} images/s, medians of {rounds} interleaved rounds "
                              f"(serving {serve_rounds}; Keras {keras_rounds}); the serving guard alone "
                              f"(headers read, images decoded in tf.data) {serving['guard_alone_images_per_s']} images/s"),
        ("serving_default, a request of one image: milliseconds",
         float(serving["serving_one_image_request_ms"]), "", "",
         f"the guard alone {serving['guard_alone_one_image_request_ms']} ms; mean of 200 requests. The Keras "
         f"model alone on one decoded image {serving['keras_call_batch1_ms']} ms, on two "
         f"{serving['keras_call_batch2_ms']} ms (serving sends one image as two)"),
        ("a run with nothing changed (cached up to the Trainer, the served model re-read and judged): seconds", third.seconds,
         "<= 30 s", "<= 15 s", f"runs 2 and 3: {cached_runs[0]:.1f} s, {cached_runs[1]:.1f} s"
                               f"{'' if all_cached else ' (run 3 not cached up to the Trainer!)'}"),
    ]
    windows = component_windows(cold)
    comp_lines = []
    for name, (t0, t1) in windows.items():
        wall = t1 - t0
        cpu = cold.cpu_between(t0, t1)
        comp_lines.append(f"| {name} | {wall:.1f} | {cpu:.1f} | {cpu / wall / (os.cpu_count() or 1) * 100 if wall > 0.05 else 0:.0f}% |")

    in_components = sum(t1 - t0 for t0, t1 in windows.values())
    table = ["| ratio | measured | required | goal | figures |", "| --- | --- | --- | --- | --- |"]
    for name, value, req, goal, detail in rows:
        fmt = f"{value:.1f} s" if name.startswith("a run") else f"{value:.1f} ms" if name.endswith("milliseconds") else f"{value:.2f}"
        table.append(f"| {name} | {fmt} | {req} | {goal} | {detail} |")
    per_phase = ["| phase | xfer images/s per epoch | baseline images/s per epoch |", "| --- | --- | --- |"]
    for phase in ("transfer", "fine-tune"):
        per_phase.append(f"| {phase}, cold run | {', '.join(f'{r:.0f}' for r in pipe_rates.get(phase, []))} "
                         f"| {', '.join(f'{r:.0f}' for r in base_rates.get(phase, []))} |")
    for side, label in (("xfer", ""), ("xfer_spe", f", xfer with steps_per_execution {SPE}")):
        for i in range(ROUNDS):
            per_phase.append(f"| fine-tune, alternated run {i + 1}{label} "
                             f"| {', '.join(f'{r:.0f}' for r in epoch_rates(p2[side][i].text)['fine-tune'])} "
                             f"| {', '.join(f'{r:.0f}' for r in epoch_rates(p2['baseline'][i].text)['fine-tune'])} |")
    for i in range(ROUNDS):
        per_phase.append(f"| fine-tune, alternated run {i + 1}, the baseline with TF_ENABLE_ONEDNN_OPTS=1 | "
                         f"| {', '.join(f'{r:.0f}' for r in epoch_rates(p2['baseline_onednn'][i].text)['fine-tune'])} |")
    report = "\n".join([
        f"## `make bench`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "On this machine: "
        f"{os.cpu_count()} cores, no GPU; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.",
        f"{cpu_line(Path('/proc/cpuinfo').read_text())}.",
        "Data: 2,000 real digit scans (scikit-learn), 96 px RGB JPEG, 1,603 train / 397 eval. Model: "
        "MobileNetV2 (alpha 1.0, weights none), global average pooling, softmax head; batch 32; "
        "phase 1 three epochs at 1e-3, phase 2 five epochs at 1e-4 with the top 30% of the base "
        "unfrozen (BatchNorm frozen). Both sides use TF 2.16 with tf_keras.",
        "",
        *table,
        "",
        "Images/s per epoch (the first epoch of each phase includes tracing). The phase-2 ratio is "
        f"taken from the alternated runs (baseline, baseline with oneDNN, Trainer, Trainer with steps_per_execution {SPE}, "
        f"baseline, ...): one steady epoch of the Trainer took {p2_epoch_s:.1f} s here (median) and consecutive ones differ by up to 15%, so the cold run's four steady "
        "epochs a side, minutes apart, are shown but not used for it:",
        "",
        *per_phase,
        "",
        f"Final eval accuracy: `xfer run` {final_val_accuracy(cold.text):.3f}, baseline "
        f"{final_val_accuracy(base.text):.3f}. With `weights: none` and BatchNorm kept in inference mode at "
        "its initial statistics, as the tutorials' recipe does for pretrained weights, a random "
        "MobileNetV2 stays at chance (0.1 for ten classes) in eight epochs on either side: this benchmark measures speed on "
        "identical work; the learning tests (tests/test_pipeline_local.py, tests/test_trainer.py) "
        "use models that do learn.",
        "",
        f"Peak memory (RSS of the whole process tree): `xfer run` cold {cold.peak_rss / 1e9:.2f} GB, "
        f"baseline {base.peak_rss / 1e9:.2f} GB.",
        "",
        "Per component, cold run (wall from the CLI's progress lines; CPU from the process tree; "
        f"utilization = CPU / wall / {os.cpu_count()} cores):",
        "",
        "| component | wall s | CPU s | utilization |", "| --- | --- | --- | --- |",
        *comp_lines,
        "",
        "Spans: the same 2,000 images as span 1 and again as span 2; `xfer run --to DataCheck`. "
        "With {SPAN}, ImportExampleGen also reads the previous span's train split for its statistics (the "
        "drift check); a window of two reads both spans' train splits as training data:",
        "",
        "| input | ImportExampleGen s | DataCheck s | whole run s |", "| --- | --- | --- | --- |",
        *span_rows,
        "",
        "CPU use over the steady phase-2 epochs of the alternated runs (CPU seconds of the process tree / "
        f"wall / {os.cpu_count()} cores): baseline script "
        + ", ".join(f"{u * 100:.0f}%" for u in utilization["baseline"]) + "; baseline with oneDNN's kernels "
        + ", ".join(f"{u * 100:.0f}%" for u in utilization["baseline_onednn"]) + "; Trainer "
        + ", ".join(f"{u * 100:.0f}%" for u in utilization["xfer"]) + f"; Trainer with steps_per_execution {SPE} "
        + ", ".join(f"{u * 100:.0f}%" for u in utilization["xfer_spe"]) + ".",
        "",
        profile_md.rstrip(),
        "",
        photos_md.rstrip(),
        "",
        scale_md.rstrip(),
        "",
        modes_md.rstrip(),
        "",
        f"Outside the components (interpreter and TFX import, pipeline build, ML Metadata, the summary): "
        f"{cold.seconds - in_components:.1f} s of the cold run's {cold.seconds:.1f} s. "
        f"Timestamped logs of every run: `{logs.relative_to(REPO) if logs.is_relative_to(REPO) else logs}/`.",
        "",
    ])
    out = Path(args.out)
    out.write_text(with_earlier_runs(report, out.read_text() if out.exists() else ""))
    print(report)


if __name__ == "__main__":
    main()

"""Cost as data grows: the pipeline to the Trainer at 2,000, 20,000 and 100,000 images
(the bench's 96 px digit JPEGs, shards of 2,000 as import-folder writes them).

usage: python bench/scale.py WORK [--sizes 2000,20000,100000]   (prints a Markdown section)

Each Beam step runs in a process of its own (`xfer run --to ImportExampleGen`, then
`--from X --to Y` for the next ones, which take their inputs from the run before), so
a step's peak memory is that process's peak, not the high-water mark of the steps
before it. Wall seconds per step from the CLI's progress lines; peak RSS of the whole
process tree sampled every 0.1 s (bench/run.py's Watched).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run import PY, XFER, Watched, component_windows  # noqa: E402

STAGES = [  # (--from, --to): the steps each process runs
    (None, "ImportExampleGen"), ("StatisticsGen", "StatisticsGen"), ("SchemaGen", "DataCheck"),
    ("Transform", "Transform")]
BEAM = ("ImportExampleGen", "StatisticsGen", "DataCheck", "Transform")


def measure(work: Path, n: int, sets: tuple[str, ...] = (), tag: str = "") -> dict:
    """Per Beam step: wall seconds, peak GB of its process tree. `sets`: extra --set
    overrides (bench/beam_modes.py passes beam_pipeline_args); `tag` names the root so
    two settings never share one."""
    from bench.make_data import write

    data = work / f"data-{n}"
    write(str(data), total=n, per_shard=2000)
    root = work / f"root-{n}{tag}"
    shutil.rmtree(root, ignore_errors=True)
    config = ["--config", str(REPO / "bench" / "bench.yaml"), "--set", f"root={root}",
              "--set", f"data.input_base={data}", "--set", f"data.labels_file={data / 'labels.txt'}"]
    for s in sets:
        config += ["--set", s]
    out = {}
    for start, end in STAGES:
        cmd = [XFER, "run", *config, "--to", end] + (["--from", start] if start else [])
        w = Watched(cmd).run()
        for name, (t0, t1) in component_windows(w).items():
            out[name] = {"seconds": t1 - t0, "peak_gb": w.peak_rss / 1e9, "process_seconds": w.seconds,
                         "cpu_seconds": w.cpu_between(t0, t1)}
        print(f"[scale] {n}{tag}: {start or 'start'}..{end} {w.seconds:.1f} s, peak {w.peak_rss / 1e9:.2f} GB", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work")
    parser.add_argument("--sizes", default="2000,20000,100000")
    args = parser.parse_args()
    work = Path(args.work).resolve() / "scale"
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {n: measure(work, n) for n in sizes}
    print(report(sizes, results))


def report(sizes: list[int], results: dict) -> str:
    first, last = sizes[0], sizes[-1]
    head = "| step | " + " | ".join(f"{n:,}: s | peak GB" for n in sizes) + \
        f" | time {last:,} / {first:,} (data x{last // first}) | peak {last:,} / {first:,} |"
    lines = [head, "| --- " * (1 + 2 * len(sizes) + 2) + "|"]
    for step in BEAM:
        cells = " | ".join(f"{results[n][step]['seconds']:.1f} | {results[n][step]['peak_gb']:.2f}" for n in sizes)
        a, b = results[first][step], results[last][step]
        lines.append(f"| {step} | {cells} | {b['seconds'] / a['seconds']:.1f} | {b['peak_gb'] / a['peak_gb']:.2f} |")
    return "\n".join([
        f"### Cost as data grows (`python bench/scale.py runs/bench`)",
        "",
        "The pipeline to the Trainer on the bench's 96 px digit JPEGs, shards of 2,000; each step's process alone "
        "(its peak includes the interpreter and TFX, about 0.6 GB):",
        "",
        *lines,
        "",
    ])


if __name__ == "__main__":
    main()

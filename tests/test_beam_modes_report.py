"""bench/beam_modes.py's table: each mode's seconds, peak and CPU per step, the ratio of
the two modes per step and over the four steps, from the measured figures."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.beam_modes import MODES, report  # noqa: E402
from bench.scale import BEAM  # noqa: E402


def test_the_table_has_each_mode_and_the_ratio_of_their_times():
    fast, slow = list(MODES)
    figures = {step: {"seconds": 10.0 * (i + 1), "peak_gb": 1.0, "cpu_seconds": 5.0 * (i + 1)}
               for i, step in enumerate(BEAM)}
    doubled = {step: {"seconds": 2 * f["seconds"], "peak_gb": 2.5, "cpu_seconds": 3 * f["seconds"]}
               for step, f in figures.items()}
    text = report([20000], {(20000, fast): {**figures, "load": 0.5}, (20000, slow): {**doubled, "load": 3.3}})
    assert text.startswith("### Beam's local modes (`python bench/beam_modes.py runs/bench`)")
    assert "| 20,000 | ImportExampleGen | 10.0 | 1.00 | 50 | 20.0 | 2.50 | 150 | 2.00 |" in text
    assert "| 20,000 | Transform | 40.0 | 1.00 | 50 | 80.0 | 2.50 | 150 | 2.00 |" in text
    assert "| 20,000 | **the four steps** | 100.0 | | | 200.0 | | | 2.00 |" in text
    assert "Load average (1 min) of the machine as each ran: 20,000 in_memory 0.5, 20,000 multi_processing x2 3.3." in text
    header, rule = [l for l in text.splitlines() if l.startswith("| images") or l.startswith("| ---")]
    assert header.count("|") == rule.count("|")  # a well-formed Markdown table

"""A run's views in Jupyter, the way TFX users debug with InteractiveContext:

    from xfer import views
    views.run("latest", config="demo")              # the run page: steps, states, seconds
    views.step("latest", "Trainer", config="demo")  # a step's views, plots inlined
    views.runs(config="demo")                       # the runs table
    views.compare("RUN_A", "RUN_B", config="demo")

Each returns an object a notebook draws through `_repr_html_` (the same renderer as
`xfer ui`, pipeline/html_views.py; images inlined, since no server is there to serve them).
"""
from __future__ import annotations

from typing import Optional, Sequence

from xfer.pipeline.notebook_pages import HtmlPage, compare, run, runs, step

__all__ = ["HtmlPage", "run", "runs", "step", "compare"]

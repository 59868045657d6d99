"""The pieces of `xfer ui` without a browser or a pipeline run: which files the server
gives out (a real ML Metadata store with artifacts inside and outside the root), the
renderer's escaping of what comes from data, the DAG's layout."""
import os
import types

import pytest

from xfer.pipeline.config import load_config

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def site(tmp_path):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    from xfer.pipeline.ui import Site

    root = tmp_path / "root"
    inside = root / "pipeline_root" / "Trainer" / "model_run" / "1"
    inside.mkdir(parents=True)
    (inside / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    (root / "metadata.sqlite.secret").write_text("not an artifact")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (inside / "link.png").symlink_to(outside / "curves.png")
    (inside / "sub").mkdir()
    config = load_config("demo", [f"root={root}"])
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = config.metadata_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(cfg)
    type_id = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="ModelRun"))
    ids = store.put_artifacts([metadata_store_pb2.Artifact(type_id=type_id, uri=str(inside)),
                               metadata_store_pb2.Artifact(type_id=type_id, uri=str(outside))])
    del store
    return types.SimpleNamespace(site=Site(config)), ids, inside


def test_files_are_served_only_from_inside_an_artifact_under_the_root(site):
    from xfer.pipeline.ui import FileHandler

    handler, (inside_id, outside_id), inside = site
    resolve = lambda i, rel: FileHandler._resolve(handler, i, rel)  # noqa: E731
    assert resolve(inside_id, "curves.png") == os.path.realpath(inside / "curves.png")
    for rel in ("../../../../metadata.sqlite.secret", "..%2f..%2f..%2f..%2fmetadata.sqlite.secret",
                "sub/../../1/curves.png", "/etc/passwd", "%2Fetc%2Fpasswd", "link.png", "sub", "",
                "nothing.png", "curves.png\x00.txt", "..\\..\\metadata.sqlite.secret"):
        assert resolve(inside_id, rel) is None, rel
    assert resolve(outside_id, "curves.png") is None  # an artifact outside the root
    assert resolve(999, "curves.png") is None


def test_renderer_escapes_class_names_paths_and_errors():
    from xfer.pipeline import html_views
    from xfer.pipeline.blessing import Blessing

    m = html_views._macros()
    b = Blessing(blessed=True, candidate=0.9, baseline=None)
    html = str(m.blessing(b, f"BLESSED {XSS}", None, [f"report {XSS}"], [(XSS, 3, 0.5, None, False)], []))
    html += str(m.lines([XSS])) + str(m.problem(XSS)) + str(m.image(f'x" onerror="alert(1)', XSS, XSS))
    html += str(m.model_card(XSS, f"<html><body>{XSS}<script>alert(1)</script></body></html>", None))
    assert "<img src=x" not in html and "<script>" not in html and 'onerror="' not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "sandbox" in html  # the model card's frame runs no script


def test_dag_layout_puts_each_step_below_its_inputs():
    from xfer.pipeline.run_graph import layout

    g = layout(["A", "B", "C"], [("A", "B"), ("B", "C"), ("A", "C")], extra=["Old"])
    assert g.boxes["A"].y < g.boxes["B"].y < g.boxes["C"].y < g.boxes["Old"].y
    assert len(g.edges) == 3 and any(" C" in e.path for e in g.edges)  # A->C goes around B

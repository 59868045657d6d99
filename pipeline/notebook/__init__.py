"""The `xfer` package: its parts are xfer.pipeline, xfer.components and xfer.schemas
(pyproject.toml maps them to the repository's top-level folders); this folder adds only
xfer.views, the notebook entry."""

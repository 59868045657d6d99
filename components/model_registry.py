"""Vertex AI Model Registry: a pushed version is also registered as a model version,
so Vertex endpoints and batch prediction can use it. Runs in the Pusher after a new
version is written (never for a re-push of the same model)."""
from __future__ import annotations

from typing import Optional, Union

from xfer.components.settings import ModelRegistryConfig


def register(version_dir: str, registry: Union[ModelRegistryConfig, dict], *, credentials=None,
             api_endpoint: Optional[str] = None) -> str:
    """Upload `version_dir` (a gs:// SavedModel folder) to the registry; returns the
    model resource name. With `parent_model`, it becomes a new version of that model."""
    from google.cloud import aiplatform

    r = ModelRegistryConfig.model_validate(registry)
    if "://" not in version_dir or not version_dir.startswith("gs://"):
        raise ValueError(f"push.vertex_model_registry needs push.destination on gs://; the version "
                         f"was pushed to '{version_dir}', which Vertex AI cannot read")
    init = dict(project=r.project, location=r.region)
    if api_endpoint:
        init.update(api_endpoint=api_endpoint, api_transport="rest")
    aiplatform.init(credentials=credentials, **init)
    model = aiplatform.Model.upload(
        display_name=r.display_name, artifact_uri=version_dir,
        serving_container_image_uri=r.serving_container_image,
        parent_model=r.parent_model, labels=r.labels or None,
        version_aliases=[f"v{version_dir.rstrip('/').rsplit('/', 1)[-1]}"],
        project=r.project, location=r.region, credentials=credentials, sync=True)
    return model.resource_name

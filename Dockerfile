# The image every pipeline step runs in, locally proven and on Kubeflow / Vertex.
#   make image                                   # CPU image on python:3.11-slim
#   docker build --build-arg BASE_IMAGE=xfer-base:bookworm ...   # any Debian 12 base with python3
#   --build-arg VARIANT=gpu                      # CUDA-enabled TensorFlow (uv extra `gpu`, in uv.lock)
#   --build-arg BAKE_WEIGHTS="vgg16 mobilenet_v2" # ImageNet weights in the image, for air-gapped clusters
#   --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt   # a TLS-intercepting proxy's CA, never in a layer
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Build stage: a few locked packages are source-only (pyfarmhash, kfp's own) and need a
# compiler, which the runtime image does not carry.
FROM ${BASE_IMAGE} AS build
ARG VARIANT=cpu
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        g++ python3-dev > /dev/null && rm -rf /var/lib/apt/lists/*

# uv itself, in a throwaway venv (no pip needed in the base, PEP 668 respected).
RUN --mount=type=secret,id=ca,required=false \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir --quiet uv

WORKDIR /opt/xfer
# Dependencies first, from the lock only (no resolution at build time): this layer is
# reused until uv.lock or pyproject.toml change.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=secret,id=ca,required=false --mount=type=cache,target=/root/.cache/uv \
    if [ -f /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi; \
    /opt/uv/bin/uv sync --frozen --no-dev --no-install-project --python "$(command -v python3)" \
        $( [ "$VARIANT" = gpu ] && echo --extra gpu )

COPY pipeline ./pipeline
COPY components ./components
COPY schemas ./schemas
RUN --mount=type=secret,id=ca,required=false --mount=type=cache,target=/root/.cache/uv \
    if [ -f /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi; \
    /opt/uv/bin/uv sync --frozen --no-dev --no-editable --python "$(command -v python3)" \
        $( [ "$VARIANT" = gpu ] && echo --extra gpu ) \
    && rm -rf /opt/xfer/pipeline /opt/xfer/components /opt/xfer/schemas

FROM ${BASE_IMAGE}
ARG BAKE_WEIGHTS=""
ARG BAKE_IMAGE_SIZE=224
ENV VIRTUAL_ENV=/opt/xfer/.venv \
    PATH=/opt/xfer/.venv/bin:$PATH \
    TF_USE_LEGACY_KERAS=1 \
    TF_ENABLE_ONEDNN_OPTS=1 \
    KERAS_HOME=/opt/keras \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/xfer/.venv /opt/xfer/.venv
# The Keras cache belongs to the step user (uid 1000), so `weights: imagenet` can still
# download at run time into it; group 0 may write too (clusters that run steps as an
# arbitrary uid in group root). Baked weights (fetched as root, at build) are handed over.
RUN useradd --create-home --uid 1000 xfer && mkdir -p "$KERAS_HOME/models" \
    && for backbone in $BAKE_WEIGHTS; do \
        xfer weights fetch --backbone "$backbone" --image-size "$BAKE_IMAGE_SIZE"; done \
    && chown -R xfer:0 "$KERAS_HOME" && chmod -R u+rwX,g+rwX,o+rX "$KERAS_HOME"
USER xfer
WORKDIR /home/xfer
# KFP and Vertex give each step its own command (TFX's v2 container entrypoint);
# run by hand, the image is the xfer CLI.
ENTRYPOINT []
CMD ["xfer", "--help"]

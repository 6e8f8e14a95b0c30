# Treeline node engine: telemetry, partition runtime (onnxruntime), tensor data plane.
# Build from the repository root:  docker build -f docker/node.Dockerfile -t treeline-node .
# Contract (docs/contracts.md): the node runs with treeline_common and itself only, so the image
# carries neither orchestrator nor ml_scheduler; node.Dockerfile.dockerignore keeps them out of
# the build context as well.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY treeline_common ./treeline_common
COPY node_engine ./node_engine
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin treeline \
    && mkdir -p /data && chown treeline /data
USER treeline
WORKDIR /data
VOLUME ["/data"]
# The tensor data plane binds one port picked at start (see docker/README.md on fixed ports).
# No HEALTHCHECK: the node has no HTTP endpoint; its liveness is the retained MQTT status/last will.
CMD ["python", "-m", "node_engine", "--help"]

# Treeline cluster orchestrator: node registry, telemetry over MQTT, ML placement, plan apply.
# Build from the repository root:  docker build -f docker/cluster.Dockerfile -t treeline-cluster .

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY treeline_common ./treeline_common
COPY deployment_descriptors ./deployment_descriptors
COPY ml_scheduler ./ml_scheduler
COPY cluster_orchestrator ./cluster_orchestrator
RUN pip install --no-cache-dir --prefix=/install ".[cluster]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin treeline \
    && mkdir -p /data && chown treeline /data
USER treeline
WORKDIR /data
VOLUME ["/data"]
EXPOSE 10100
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10100/api/health', timeout=4)"]
CMD ["python", "-m", "cluster_orchestrator", "--host", "0.0.0.0", "--port", "10100", "--data-dir", "/data"]

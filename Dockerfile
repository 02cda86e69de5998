# The orchestrator's own image: API, console, handler and reconciler (workers run in their own images).
#   docker build -t iot-orchestrator/orchestrator:0.1.0 .
# Machines without a registry pass a local base (scripts/build-images --local-base builds one):
#   --build-arg BASE_IMAGE=iot-orchestrator/base:bookworm
# It talks to an external broker and database (deploy/compose.yaml, charts/iot-orchestrator).
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# Package index settings of the building machine (mirrors, proxies), passed by scripts/build-images.
ARG PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST
RUN python3 -m venv /opt/venv
COPY images/sdk /src/images/sdk
# The images' packages: their configuration checks run before an integration is accepted (templates: `check`).
COPY images/webhook /src/images/webhook
COPY images/google-pubsub /src/images/google-pubsub
COPY images/azure-iot-hub /src/images/azure-iot-hub
COPY images/mqtt-bridge /src/images/mqtt-bridge
COPY pyproject.toml README.md /src/
COPY orchestrator /src/orchestrator
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check /src/images/sdk /src/images/webhook \
      /src/images/google-pubsub /src/images/azure-iot-hub /src/images/mqtt-bridge /src \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools 2>/dev/null; rm -rf /opt/venv/lib/python3*/site-packages/pkg_resources
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends binutils >/dev/null \
 && find /opt/venv -name "*.so" -exec strip --strip-unneeded {} +

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="iot-orchestrator" \
      org.opencontainers.image.description="IoT integration orchestrator: one worker per integration" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/iot-orchestrator/iot-orchestrator"
COPY --from=build /opt/venv /opt/venv
COPY integration_templates /app/integration_templates
# Data (SQLite when no database URL is set, generated secrets, the workers' records) lives on a volume.
RUN mkdir -p /data && chown 65532:65532 /data
VOLUME /data
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORCH_HOST=0.0.0.0 \
    ORCH_PORT=8080 \
    ORCH_DATA_DIR=/data \
    ORCH_TEMPLATES_DIR=/app/integration_templates \
    ORCH_BROKER__MODE=external
USER 65532:65532
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"ORCH_PORT\", \"8080\")}/livez', timeout=4)"]
ENTRYPOINT ["orchestrator"]
CMD ["serve"]

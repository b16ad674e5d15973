# The capture worker beside a legacy database.
#   docker build -t strangler-cdc .
#   docker run --rm --env-file cdc.env strangler-cdc migrate   # one-off: the service's schema
#   docker run --rm --env-file cdc.env strangler-cdc setup     # one-off: capture triggers
#   docker run -d --env-file cdc.env strangler-cdc             # the worker (cdc run)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cdc ./cdc
COPY sync_back ./sync_back
COPY migrations ./migrations
RUN pip install . && rm -rf /src \
    && useradd --system --uid 10001 --create-home --home-dir /data cdc

WORKDIR /data
USER 10001
# In a container: JSON logs, EventBridge unless told otherwise, health and metrics on 8080.
ENV CDC_LOG_FORMAT=json \
    CDC_BUS=eventbridge \
    CDC_HEALTH_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]

ENTRYPOINT ["cdc"]
CMD ["run"]

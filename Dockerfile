# The RateWatch service image: the limiter (`ratewatch serve`, also Envoy's gRPC rate limit
# service and OpenTelemetry tracing when asked), the consumer
# (`ratewatch stream`), the detector (`ratewatch detect`) and the schema tool
# (`ratewatch migrate`) are the same image.  It runs as the unprivileged user `ratewatch`
# (uid 10001); its code is root's and read-only to the service.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 ratewatch \
    && useradd --system --uid 10001 --gid ratewatch --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin ratewatch \
    && mkdir /data && chown ratewatch:ratewatch /data && chmod 0700 /data

WORKDIR /app
COPY pyproject.toml README.md ./
# every top-level package of pyproject's [tool.setuptools.packages.find] (a test checks)
COPY ratewatch ratewatch
COPY control control
COPY webhooks webhooks
COPY limiter limiter
COPY stream stream
COPY detectors detectors
COPY analytics analytics
COPY dashboards dashboards
# with Envoy's rate limit service (`serve --grpc-port`) and tracing (`serve --tracing`).
# xds-protos (grpc) ships a stale copy of opentelemetry-proto's modules (grpc/grpc#42926):
# whichever pip installed last owns them, so the real ones are installed again, last, as
# .ci/run does
RUN pip install '.[server,grpc,otel]' \
    && pip install --force-reinstall --no-deps \
        "opentelemetry-proto==$(python -c 'from importlib.metadata import version; print(version("opentelemetry-proto"))')"

# Inside a container the loopback is the container's own: the API and the metrics ports
# listen on every interface, and what reaches them is decided by the ports compose (or
# docker run -p) publishes.  Every RATEWATCH_* variable is a `ratewatch` option's value.
ENV RATEWATCH_DATA_DIR=/data \
    RATEWATCH_HOST=0.0.0.0 \
    RATEWATCH_METRICS_HOST=0.0.0.0
# a new named volume on /data takes the directory's owner: the user below
VOLUME /data
EXPOSE 8080

USER 10001:10001

# The limiter answers /health on RATEWATCH_PORT; the consumer and the detector serve
# /metrics on RATEWATCH_METRICS_PORT.  The standard library only: no curl in a slim image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; m = os.environ.get('RATEWATCH_METRICS_PORT'); r.urlopen(f'http://127.0.0.1:{m}/metrics' if m else 'http://127.0.0.1:%s/health' % os.environ.get('RATEWATCH_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["ratewatch"]

# The RateWatch service image: the limiter (`ratewatch serve`), the consumer
# (`ratewatch stream`), the detector (`ratewatch detect`) and the schema tool
# (`ratewatch migrate`) are the same image.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ratewatch ratewatch
COPY limiter limiter
COPY stream stream
COPY analytics analytics
COPY detectors detectors
COPY dashboards dashboards
RUN pip install --no-cache-dir '.[server]'
ENV RATEWATCH_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["ratewatch"]

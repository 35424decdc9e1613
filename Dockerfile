# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build --target server  -t sessiond-server .   # the control plane
#   docker build --target sandbox -t sessiond-sandbox .  # a sandbox: hydrator + SDK + CLI
#
# The server image listens on 0.0.0.0:50051 and therefore requires API-key
# auth; point it at PostgreSQL and S3 with SESSIOND_DATABASE_URL and
# SESSIOND_BLOB_URL (the embedded SQLite default works too, on a volume).

FROM python:3.11-slim AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY clients ./clients
COPY hydrator ./hydrator
COPY server ./server

FROM python:3.11-slim AS server
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN --mount=from=source,source=/src,target=/src,rw \
    pip install --no-cache-dir '/src[server,e2b,docker]'
RUN useradd --system --uid 10001 --home-dir /data --create-home sessiond
USER sessiond
WORKDIR /data
ENV SESSIOND_DATA_DIR=/data \
    SESSIOND_LISTEN=0.0.0.0:50051 \
    SESSIOND_AUTH=api-key
VOLUME ["/data"]
EXPOSE 50051
STOPSIGNAL SIGTERM
ENTRYPOINT ["sessiond", "serve"]

FROM python:3.11-slim AS sandbox
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The Claude Code CLI ships inside the claude-agent-sdk wheel; git and a
# shell toolbox make the agent's Bash tool useful.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates procps \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=from=source,source=/src,target=/src,rw \
    pip install --no-cache-dir '/src[hydrator]'
RUN useradd --uid 10002 --create-home agent && mkdir -p /workspace && chown agent /workspace
USER agent
WORKDIR /workspace
ENV CLAUDE_CONFIG_DIR=/home/agent/.claude \
    CLAUDE_CODE_TMPDIR=/home/agent/.tmp
# The provider runs `sessiond-hydrator restore|run|snapshot` with exec.
CMD ["sleep", "infinity"]

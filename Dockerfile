# One image for mrq workers and the dashboard (docker-compose.yml runs both).
#
#   docker build -t mrq:local .
#   docker run --rm mrq:local mrq-worker --help
#
# Your task code goes in /app (the working directory, on the workers' import path), e.g. in an
# image of your own:   FROM mrq:local   COPY --chown=mrq:mrq tasks/ /app/tasks/   COPY mrq-config.py /app/
# docs/deployment.md explains the settings (MRQ_* variables), health checks and signals.

# --- build: the wheels of mrq and its dependencies ----------------------------------------------------
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY mrq ./mrq
COPY dashboard ./dashboard
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[hiredis]"

# --- run ---------------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 mrq \
    && useradd --system --uid 10001 --gid mrq --home-dir /app --shell /usr/sbin/nologin mrq
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels "mrq[hiredis]" && rm -rf /wheels
COPY deploy/healthcheck.py /usr/local/bin/mrq-healthcheck
WORKDIR /app
# The example tasks of the compose stack (examples.tasks.*); replace them with your own.
COPY --chown=mrq:mrq examples/__init__.py examples/tasks.py /app/examples/
USER mrq:mrq
# The admin server of a worker (--admin_port 8000) and the dashboard (mrq-dashboard --port 5555).
EXPOSE 8000 5555
# A worker with MRQ_ADMIN_PORT set: its /report; anything else: Redis and MongoDB answer. The compose
# file and the Kubernetes manifests choose `mrq-healthcheck worker` or `mrq-healthcheck dashboard`.
HEALTHCHECK --interval=15s --timeout=10s --start-period=20s --retries=3 CMD ["mrq-healthcheck"]
CMD ["mrq-worker", "--help"]

# syntax=docker/dockerfile:1
# The relance image: API, worker and simulator (pick one with the command; see docker-compose.yml).
#
#   docker build -t relance .
#   docker run -p 8000:8000 -e RELANCE_DATABASE_URL=... -e TEMPORAL_ADDRESS=... relance

# Build the wheels of relance and of all its dependencies, so the final image holds no sources
# and no build tools.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README* rather than README.md: pyproject names it as the readme, but the build must not depend on it.
COPY pyproject.toml README* worker.py cli.py ./
COPY relance ./relance
COPY workflows ./workflows
COPY activities ./activities
COPY api ./api
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/relance-*.whl
RUN groupadd --system --gid 10001 relance \
 && useradd --no-log-init --uid 10001 --gid 10001 --create-home --home-dir /home/relance relance
# Numeric, so that runtimes enforcing runAsNonRoot can check it.
USER 10001:10001
# Writable by the relance user: the default SQLite ledger (.relance/) lands here when no
# RELANCE_DATABASE_URL is given.
WORKDIR /home/relance
EXPOSE 8000
# Bind to all interfaces: inside a container, 127.0.0.1 cannot be reached from outside.
CMD ["relance", "api", "--host", "0.0.0.0", "--port", "8000"]

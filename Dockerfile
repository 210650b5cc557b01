# syntax=docker/dockerfile:1
# kfmlops: one image for the KFP components, the KServe predictor (`kfmlops serve`),
# the inference-log sink, the drift job and the MLflow tracking server.
# Published as ghcr.io/kfmlops/kfmlops:<package version> (kfmlops.IMAGE), e.g.
#   docker build -t ghcr.io/kfmlops/kfmlops:0.1.0 .
#
# Base (both stages, keep the two FROM lines identical): python:3.11-slim-bookworm
# (Python 3.11.16), pinned by tag and by the digest of its multi-platform index.
# Bump tag and digest together: docker buildx imagetools inspect python:3.11-slim-bookworm

# ---- builder: wheel of this project + every runtime dependency in /opt/venv ----------
FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY pyproject.toml README.m[d] ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
RUN pip wheel --no-deps --wheel-dir /build/dist .
# CPU-only torch first, from the PyTorch index, so `.[serve]` does not pull CUDA wheels.
# Its own layer on purpose (DL3059): torch is large and changes far less than the code.
# hadolint ignore=DL3059
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# The project with its serving extra (KServe), plus what `mlflow server` needs here:
# Postgres driver, S3 client and the basic-auth app's Flask-WTF. The project wheel is
# the one just built (its dependency ranges are in pyproject.toml), hence DL3013.
# hadolint ignore=DL3013,DL3059
RUN whl="$(ls /build/dist/kfmlops-*.whl)" \
 && pip install "${whl}[serve]" \
        psycopg2-binary==2.9.13 \
        boto3==1.44.5 \
        flask-wtf==1.3.0 \
 && pip check

# ---- runtime: same slim base, the venv, a non-root user; no compilers ----------------
FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS runtime
ARG KFMLOPS_VERSION=0.1.0
LABEL org.opencontainers.image.title="kfmlops" \
      org.opencontainers.image.description="Kubeflow-native MLOps components, predictor, sink and drift monitor" \
      org.opencontainers.image.version="${KFMLOPS_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 kfmlops \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/kfmlops --create-home \
        --shell /usr/sbin/nologin kfmlops
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/kfmlops
USER 10001
# checkov:skip=CKV_DOCKER_2:No HEALTHCHECK: the same image runs several commands (components, predictor, sink, drift job, MLflow); Kubernetes liveness/readiness probes in manifests/ check each one.
ENTRYPOINT []
CMD ["kfmlops", "--help"]

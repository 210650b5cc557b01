# syntax=docker/dockerfile:1
# kfmlops: one image for the KFP components, the KServe predictor (`kfmlops serve`),
# the inference-log sink, the drift job and the MLflow tracking server.
# Published as ghcr.io/kfmlops/kfmlops:<package version> (kfmlops.IMAGE), e.g.
#   docker build -t ghcr.io/kfmlops/kfmlops:0.1.0 .      (or `make image`)
#
# Every Python package comes from requirements.lock (pinned, with hashes; `make lock`), the
# project wheel is installed without dependencies, then `pip check`.
#
# Build arguments (the defaults are what a plain `docker build .` gets):
#   BASE_IMAGE    both stages' base: python:3.11-slim-bookworm (Python 3.11.16), pinned by tag and
#                 by the digest of its multi-platform index. Bump tag and digest together:
#                 docker buildx imagetools inspect python:3.11-slim-bookworm
#                 Any Debian-based image with python3 and its venv module will do.
#   TORCH_SOURCE  where pip finds torch==2.13.0+cpu (PyPI's torch is the CUDA build): a package
#                 index URL (the PyTorch CPU index), or an absolute folder holding the wheel,
#                 bind-mounted into the build (podman build --volume DIR:/wheels:ro
#                 --build-arg TORCH_SOURCE=/wheels). The lock's hash is that of the +cpu wheel.
#   PIP_CERT      (unset) a CA bundle for pip, bind-mounted at build time, for builds behind a
#                 TLS-inspecting proxy; nothing of it ends up in the image.
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# ---- builder: every runtime dependency from the lock, then this project, in /opt/venv --------
FROM ${BASE_IMAGE} AS builder
ARG TORCH_SOURCE=https://download.pytorch.org/whl/cpu
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
# The dependencies first, in a layer of their own: it changes with the lock, not with the code.
COPY requirements.lock ./
RUN case "${TORCH_SOURCE}" in \
      /*) torch_source="--find-links=${TORCH_SOURCE}" ;; \
      *) torch_source="--extra-index-url=${TORCH_SOURCE}" ;; \
    esac \
 && pip install --require-hashes --no-deps "${torch_source}" -r requirements.lock
COPY pyproject.toml README.m[d] ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
# The project's wheel, built with the lock's setuptools; it is installed in the runtime stage, so
# that a code change leaves the venv copied there (gigabytes) as it was.
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /build/dist .

# ---- runtime: same base, the venv, the project, a non-root user; no compilers -----------------
FROM ${BASE_IMAGE} AS runtime
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
# COPY, not RUN --mount=from=builder: buildah (podman 4.3) reuses a cached RUN even when the
# mounted wheel changed.
COPY --from=builder /build/dist /tmp/dist
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps /tmp/dist/kfmlops-*.whl \
 && rm -r /tmp/dist \
 && pip check
# The commit the image was built from (`make image` passes it): kfmlops.register records it as
# each model's code_commit, and the provenance record signs it. Late, as it changes every commit.
ARG KFMLOPS_GIT_COMMIT=
ENV KFMLOPS_GIT_COMMIT=${KFMLOPS_GIT_COMMIT}
LABEL org.opencontainers.image.revision="${KFMLOPS_GIT_COMMIT}"
WORKDIR /home/kfmlops
USER 10001
# checkov:skip=CKV_DOCKER_7:FROM ${BASE_IMAGE} names no tag to checkov; the argument's default pins python:3.11-slim-bookworm by tag and digest.
# checkov:skip=CKV_DOCKER_2:No HEALTHCHECK: the same image runs several commands (components, predictor, sink, drift job, MLflow); Kubernetes liveness/readiness probes in manifests/ check each one.
ENTRYPOINT []
CMD ["kfmlops", "--help"]

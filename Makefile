# kfmlops: `make demo` and `make test` are all a fresh clone needs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# checkov pins packaging/networkx below what mlflow needs: it gets a venv of its own.
TOOLS  ?= .venv-tools
export CHECKOV := $(abspath $(TOOLS))/bin/checkov
export GX_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_ASYNC_LOGGING := false

.PHONY: demo drift-demo test test-fast compile compile-check serve bench system-deps lock clean help \
        image container-deps test-containers

help:
	@echo "make demo         set up .venv and run the training pipeline locally (kfp.local) on UCI Adult"
	@echo "make drift-demo   serve the champion, replay Adult as is and shifted: drift fires a retrain through kfp.local"
	@echo "make test         set up, then the whole test suite (cluster tests skip without a kubeconfig)"
	@echo "make test-fast    the suite without tests marked slow"
	@echo "make lock         re-resolve requirements.lock and requirements-tools.lock from pyproject.toml"
	@echo "make compile      regenerate components/*.yaml and pipelines/*.yaml"
	@echo "make serve        serve the demo's champion model on 127.0.0.1:8080"
	@echo "make image        build the image (podman or docker) as \$$KFMLOPS_IMAGE (default $(IMAGE))"
	@echo "make container-deps  (root) install podman, runc, debootstrap; configure podman; import a Debian base"
	@echo "make test-containers build the image, run the training pipeline in it (kfp.local DockerRunner)"

# Installs come from the locks (every package, pinned, with hashes); pyproject.toml keeps the ranges
# for people who install kfmlops into an environment of their own. `make lock` re-resolves both.
# torch is the CPU build: pip finds it on disk here (find-links); elsewhere set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

$(CHECKOV): requirements-tools.lock
	test -x $(TOOLS)/bin/python || python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --require-hashes --no-deps -r requirements-tools.lock
	touch $@

LOCK := pip-compile -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
lock:
	test -x .venv-lock/bin/pip-compile || { python3 -m venv .venv-lock && .venv-lock/bin/pip install -q pip-tools==7.6.2; }
	.venv-lock/bin/$(LOCK) --extra serve --extra server --extra warehouse --extra features --extra test -o requirements.lock pyproject.toml requirements.in
	.venv-lock/bin/$(LOCK) -o requirements-tools.lock requirements-tools.in

# kubectl (with kustomize >= v4) for the manifest checks; the machine image ships one.
# promtool and prometheus (Debian's prometheus package) for tests/test_observability.py, which
# starts its own server on a free loopback port (whatever service the package starts is unused).
# Debian's PostgreSQL server for the warehouse tests (tests/postgres_server.py starts one on loopback).
PG_BIN ?= $(or $(KFMLOPS_PG_BIN),$(lastword $(sort $(patsubst %/initdb,%,$(wildcard /usr/lib/postgresql/*/bin/initdb)))),/usr/lib/postgresql/15/bin)
system-deps: $(CHECKOV)
	@command -v kubectl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && { apt-get install -y -qq kubectl || apt-get install -y -qq kubernetes-client; } >/dev/null; \
	  else echo "kubectl missing: the manifest tests will skip"; fi; }
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else echo "promtool/prometheus missing: the observability tests will skip"; fi; }
	@test -x $(PG_BIN)/initdb || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; \
	  else echo "PostgreSQL server missing ($(PG_BIN)): the warehouse tests will skip"; fi; }

# ---- the image -------------------------------------------------------------------------------
# `make image` builds what a user's `docker build .` gets (the pinned python:3.11-slim base, torch
# from the PyTorch CPU index), tagged $KFMLOPS_IMAGE, the name `kfmlops compile` writes into the YAML.
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' src/kfmlops/__init__.py)
IMAGE   ?= $(or $(KFMLOPS_IMAGE),ghcr.io/kfmlops/kfmlops:$(VERSION))
ENGINE  ?= $(firstword $(foreach e,podman docker,$(shell command -v $(e) 2>/dev/null)))
# Without Docker Hub and the PyTorch index (this VM kind, CI): the Debian base `make container-deps`
# imports, torch from pip's find-links folder, pip trusting the host's CA bundle (a TLS-inspecting
# proxy); both bind-mounted at build time only. Used when that base is in the image store;
# OFFLINE= builds the users' image anyway, IMAGE_BUILD_FLAGS replaces the engine flags.
OFFLINE_BASE ?= localhost/debian-py:bookworm
OFFLINE      ?= $(shell $(ENGINE) image inspect $(OFFLINE_BASE) >/dev/null 2>&1 && echo 1)
TORCH_WHEELS ?= $(or $(PIP_FIND_LINKS),/opt/wheels)
HOST_CA      ?= $(or $(PIP_CERT),/etc/ssl/certs/ca-certificates.crt)
OFFLINE_IMAGE_FLAGS = --network host --build-arg BASE_IMAGE=$(OFFLINE_BASE) \
  --volume $(TORCH_WHEELS):/wheels:ro --build-arg TORCH_SOURCE=/wheels \
  --volume $(HOST_CA):/etc/host-ca.crt:ro --build-arg PIP_CERT=/etc/host-ca.crt
IMAGE_BUILD_FLAGS ?= $(if $(OFFLINE),$(OFFLINE_IMAGE_FLAGS))

image:
	@test -n "$(ENGINE)" || { echo "make image: no podman or docker here (make container-deps installs podman)"; exit 1; }
	$(ENGINE) build $(IMAGE_BUILD_FLAGS) --build-arg KFMLOPS_VERSION=$(VERSION) \
	  --build-arg KFMLOPS_GIT_COMMIT=$(shell git rev-parse HEAD 2>/dev/null) -t $(IMAGE) .

# podman on a fresh Debian VM: runc (crun fails on these cgroups-v1 hosts), rlimits the VM lets a
# container set, and the Debian base (debootstrap; no Docker Hub here) that OFFLINE builds use.
CONTAINERS_CONF := /etc/containers/containers.conf.d/kfmlops.conf
container-deps:
	@test "$$(id -u)" = 0 || { echo "make container-deps installs packages: run it as root"; exit 1; }
	command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq podman runc debootstrap >/dev/null; }
	mkdir -p $(dir $(CONTAINERS_CONF))
	printf '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n\n[engine]\nruntime = "runc"\n' > $(CONTAINERS_CONF)
	podman image exists $(OFFLINE_BASE) || { rootfs="$$(mktemp -d)" \
	  && debootstrap --variant=minbase --include=python3,python3-venv bookworm "$$rootfs" http://deb.debian.org/debian >/dev/null \
	  && tar -C "$$rootfs" -c . | podman import - $(OFFLINE_BASE) && rm -rf "$$rootfs"; }

# Slow (about 10 min on 2 cores; builds the image): opt in with `-m containers`, skips without an engine.
test-containers: $(STAMP)
	$(PY) -m pytest -m containers tests/test_containers.py

demo: $(STAMP)
	$(VENV)/bin/kfmlops run

drift-demo: $(STAMP)
	$(PY) examples/drift_demo.py

test: $(STAMP) system-deps
	$(PY) -m pytest -m "slow or not slow"

test-fast: $(STAMP)
	$(PY) -m pytest

compile: $(STAMP)
	$(VENV)/bin/kfmlops compile

compile-check: $(STAMP)
	$(VENV)/bin/kfmlops compile --check

serve: $(STAMP)
	$(VENV)/bin/kfmlops serve --config pipelines/configs/adult.yaml

bench: $(STAMP)
	$(PY) benchmarks/pipeline_stages.py
	$(PY) benchmarks/serving.py

clean:
	rm -rf .kfmlops local_outputs

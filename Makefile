# kfmlops: `make demo` and `make test` are all a fresh clone needs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# checkov pins packaging/networkx below what mlflow needs: it gets a venv of its own.
TOOLS  ?= .venv-tools
export CHECKOV := $(abspath $(TOOLS))/bin/checkov
export GX_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_ASYNC_LOGGING := false

.PHONY: demo drift-demo test test-fast compile compile-check serve bench system-deps lock clean help

help:
	@echo "make demo         set up .venv and run the training pipeline locally (kfp.local) on UCI Adult"
	@echo "make drift-demo   serve the champion, replay Adult as is and shifted: drift fires a retrain through kfp.local"
	@echo "make test         set up, then the whole test suite (cluster tests skip without a kubeconfig)"
	@echo "make test-fast    the suite without tests marked slow"
	@echo "make lock         re-resolve requirements.lock and requirements-tools.lock from pyproject.toml"
	@echo "make compile      regenerate components/*.yaml and pipelines/*.yaml"
	@echo "make serve        serve the demo's champion model on 127.0.0.1:8080"

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
	.venv-lock/bin/$(LOCK) --extra serve --extra server --extra test -o requirements.lock pyproject.toml requirements.in
	.venv-lock/bin/$(LOCK) -o requirements-tools.lock requirements-tools.in

# kubectl (with kustomize >= v4) for the manifest checks; the machine image ships one.
system-deps: $(CHECKOV)
	@command -v kubectl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && { apt-get install -y -qq kubectl || apt-get install -y -qq kubernetes-client; } >/dev/null; \
	  else echo "kubectl missing: the manifest tests will skip"; fi; }

demo: $(STAMP)
	$(VENV)/bin/kfmlops run

drift-demo: $(STAMP)
	$(VENV)/bin/kfmlops drift-demo

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

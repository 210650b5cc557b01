"""The image, built with `make image`, runs the whole training pipeline through kfp.local's DockerRunner.

Opt in: `make test-containers` (`pytest -m containers`); skipped without podman or a running docker.
Every step runs in the image as uid 10001 on a read-only root filesystem (kfmlops.containers), the
deploy step's predictor included; the registry and artifacts are checked as tests/test_pipeline.py
checks them for the subprocess runner.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import docker
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT
from kfmlops.config import PipelineConfig, ProvenanceConfig
from kfmlops.provenance import PROVENANCE_FILE, verify, verify_key
from kfmlops.register import aliases
from kfmlops.tracking import tracking_uri

pytestmark = [pytest.mark.containers, pytest.mark.slow]

TEST_IMAGE = "localhost/kfmlops:test"
DEMO = ROOT / "pipelines" / "configs" / "adult.yaml"

# Runs in a child interpreter so that the components, which take their image from $KFMLOPS_IMAGE
# when kfmlops is imported, name the image just built.
RUN = """
import json, sys
from kfmlops.config import PipelineConfig
from kfmlops.containers import data_folders, docker_runner
from kfmlops.local_run import run_pipeline
from kfmlops.tracking import kfmlops_home

config = PipelineConfig.from_yaml(sys.argv[1])
with docker_runner(kfmlops_home(), data_folders(config.data)) as runner:
    run = run_pipeline(config.pipeline_arguments(), runner=runner)
print("RESULT " + json.dumps({"version": run.version, "pipeline_root": str(run.pipeline_root), "seconds": run.seconds}))
"""


@pytest.fixture(scope="module")
def docker_api(request, tmp_path_factory):
    """The environment that points the docker SDK at an engine: podman's API service (started
    here, stopped after the module) or a running docker. Skips without either, or unless the run
    opted in with ``-m containers``."""
    if "containers" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("builds the image (minutes): opt in with `make test-containers` (-m containers)")
    if shutil.which("podman") and subprocess.run(["podman", "info"], capture_output=True).returncode == 0:
        sock = tmp_path_factory.mktemp("podman") / "api.sock"
        service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"])
        try:
            _wait_for_socket(sock, service)
            yield {"DOCKER_HOST": f"unix://{sock}"}
        finally:
            service.terminate()
            service.wait(30)
    elif shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        yield {}
    else:
        pytest.skip("no container engine: podman or a running docker (`make container-deps` installs podman)")


def _wait_for_socket(path: Path, service: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and service.poll() is None:
        with socket.socket(socket.AF_UNIX) as s:
            if s.connect_ex(str(path)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"podman system service did not listen on {path} (exit code {service.poll()})")


@pytest.fixture(scope="module")
def image(docker_api) -> str:
    """The image, built by `make image` (podman or docker, whichever make finds) and tagged TEST_IMAGE,
    checked to hold this tree's code (a layer cache that missed a change would not)."""
    sources = _sources()
    started = time.monotonic()
    subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "image", f"IMAGE={TEST_IMAGE}"], check=True)
    print(f"\nmake image: {time.monotonic() - started:.0f} s")
    client = docker.from_env(environment={**os.environ, **docker_api})
    installed = json.loads(client.containers.run(TEST_IMAGE, ["python3", "-c", DIGESTS, json.dumps(sorted(sources))], remove=True))
    assert installed == sources, f"the image's kfmlops differs from this tree in {sorted(k for k in sources if installed.get(k) != sources[k])}"
    return TEST_IMAGE


# The SHA-256 of each named file of the installed kfmlops package (None when missing).
DIGESTS = """
import hashlib, json, pathlib, sys, kfmlops
root = pathlib.Path(kfmlops.__file__).parent.parent
print(json.dumps({r: hashlib.sha256((root / r).read_bytes()).hexdigest() if (root / r).is_file() else None
                  for r in json.loads(sys.argv[1])}))
"""


def _sources() -> dict[str, str]:
    """This tree's Python files as installed (pyproject's package-dir): ``kfmlops/...`` -> SHA-256."""
    trees = {"kfmlops": ROOT / "src" / "kfmlops", "kfmlops/components": ROOT / "components", "kfmlops/pipelines": ROOT / "pipelines"}
    files = {f"{prefix}/{path.relative_to(tree).as_posix()}": path for prefix, tree in trees.items() for path in tree.rglob("*.py")}
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items() if "__pycache__" not in name}


def test_the_pipeline_runs_in_the_image_read_only_as_uid_10001(image, docker_api, tmp_path, monkeypatch):
    home = tmp_path / "home"
    for folder in (home, home / "pipeline_root"):  # the image's user writes the store, keys and outputs here
        folder.mkdir()
        folder.chmod(0o777)
    monkeypatch.setenv("KFMLOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = {**os.environ, **docker_api, "KFMLOPS_IMAGE": image, "GX_ANALYTICS_ENABLED": "false"}
    out = subprocess.run([sys.executable, "-c", RUN, str(DEMO)], env=env, capture_output=True, text=True, timeout=1800)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    result = json.loads(log.split("RESULT ", 1)[1].splitlines()[0])
    print(f"pipeline under DockerRunner: {result['seconds']:.0f} s")
    assert f"running {image}" in log, "the steps did not run in the image just built"

    config = PipelineConfig.from_yaml(DEMO)
    cfg = config.settings.mlflow
    client = MlflowClient(tracking_uri(cfg))
    assert tracking_uri(cfg) == f"sqlite:///{home / 'mlflow.db'}"
    assert (home / "mlflow.db").stat().st_uid == (home / "keys" / "signing.pem").stat().st_uid != os.getuid()
    mv = client.get_model_version(cfg.model_name, result["version"])
    tags = mv.tags
    assert tags["kfmlops.all_gates_passed"] == "true"
    assert len(tags["kfmlops.dataset_fingerprint"]) == 64
    assert tags["kfmlops.config_hash"] == config.settings.digest()
    assert tags["kfmlops.train_data"].endswith("adult.data.gz")
    assert tags["kfmlops.pipeline_run_id"] not in ("", "none")
    revision = docker.from_env(environment={**os.environ, **docker_api}).images.get(image).labels["org.opencontainers.image.revision"]
    assert tags["kfmlops.code_commit"] == revision and len(revision) == 40, "the image names the commit it was built from"
    assert float(tags["kfmlops.metric.roc_auc"]) >= 0.89
    assert aliases(cfg) == {"challenger": result["version"], "champion": result["version"]}
    # The deploy step verified the model with the key the register step signed it with, started the
    # predictor in its container and probed it on 127.0.0.1 there.
    assert tags["kfmlops.deploy.status"] == "promoted", tags.get("kfmlops.deploy.reasons")

    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert {"val_roc_auc", "test_roc_auc", "fairness.sex.equalized_odds_difference"} <= set(run.data.metrics)
    root = Path(result["pipeline_root"])
    assert root.is_relative_to(home)
    for step, output in [("validate", "report"), ("evaluate", "report"), ("fairness", "report"),
                         ("evaluate", "predictions"), ("train", "model"), ("deploy", "rollout")]:
        assert (root / step / output).exists(), f"{step}/{output} missing"
    assert json.loads((root / "deploy" / "rollout").read_text())["status"] == "promoted"

    mlflow.set_tracking_uri(tracking_uri(cfg))
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{cfg.model_name}@champion", dst_path=str(tmp_path / "dl")))
    record = verify(next(local.rglob(PROVENANCE_FILE)).parent, verify_key(ProvenanceConfig()))
    assert record.dataset_fingerprint == tags["kfmlops.dataset_fingerprint"]
    assert {"evaluate", "fairness"} == set(record.gates)

"""The pipeline's steps in the image: a ``kfp.local.DockerRunner`` that sets containers up as a cluster sets up pods.

``with docker_runner(home, data_folders(config.data)) as runner: run_pipeline(arguments, runner=runner)``
(:func:`kfmlops.local_run.run_pipeline`; ``tests/test_containers.py`` does so). Every container
it starts

- runs as uid 10001 on a read-only root filesystem with a tmpfs on ``/tmp`` (the manifests'
  ``securityContext``: ``runAsUser: 10001``, ``readOnlyRootFilesystem: true``, an ``emptyDir``);
- sees ``$KFMLOPS_HOME`` bind-mounted read-write at the same path, with ``$KFMLOPS_HOME`` set to
  it, so every step finds the same MLflow store (the tracking URI the run pins there), pipeline
  root and development signing keys, as every pod mounts the same volumes and Secrets (a step that
  made its own keys would sign models the deploy step refuses);
- sees the local folders the data lies in read-only at the same paths;
- gets the variables that name stores and keys (``MLFLOW_TRACKING_URI``, the signing and verify
  keys) when they are set here, the same for every step.

kfp 2.17 starts each container with ``auto_remove=True``; podman may remove one that ends within
a second before kfp reads its logs and exit code, and answers HTTP 500, which kfp does not catch.
Inside ``with docker_runner(...)`` kfp starts containers with :func:`run_container` instead,
which removes each one only after reading them.

kfp.local mounts the pipeline root itself. The image's user must be able to write to
``$KFMLOPS_HOME`` (and the pipeline root): on a cluster ``fsGroup: 10001`` sees to it, here the
folder must belong to uid 10001 or be writable by it. The container engine is found the way
the ``docker`` SDK finds it (``$DOCKER_HOST``; podman: ``podman system service``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from kfmlops.config import DataSpec
from kfmlops.provenance import SIGNING_KEY_ENV, VERIFY_KEY_ENV

if TYPE_CHECKING:
    from docker import DockerClient
    from kfp.local import DockerRunner

IMAGE_UID = 10001
SHARED_ENV = ("MLFLOW_TRACKING_URI", SIGNING_KEY_ENV, VERIFY_KEY_ENV, "GX_ANALYTICS_ENABLED", "MLFLOW_ENABLE_ASYNC_LOGGING")
"""Variables passed from here into every container when set: stores, keys, switches."""


def data_folders(data: DataSpec) -> list[Path]:
    """The local folders ``data``'s sources lie in (a file's folder, or the folder itself); URIs are left out."""
    sources = [s for s in (data.source, data.test_source) if s and "://" not in s]
    return sorted({p if p.is_dir() else p.parent for p in (Path(s).resolve() for s in sources)})


@contextmanager
def docker_runner(
    home: str | os.PathLike, read_only: Iterable[Path] = (), environ: Mapping[str, str] = os.environ
) -> Iterator["DockerRunner"]:
    """A DockerRunner for the steps (see the module docstring), for use inside the ``with`` block.

    Consumes the local state folder ``home`` (``$KFMLOPS_HOME``), the folders to mount read-only
    (:func:`data_folders`; those under ``home`` are already there) and the environment to pass
    :data:`SHARED_ENV` from. Yields the runner for ``kfmlops.local_run.run_pipeline(runner=...)``.
    """
    from docker.types import Mount
    from kfp import local
    from kfp.local import docker_task_handler

    home = Path(home).resolve()
    folders = sorted({Path(f).resolve() for f in read_only if not Path(f).resolve().is_relative_to(home)})
    mounts = [Mount(target=str(home), source=str(home), type="bind")]
    mounts += [Mount(target=str(f), source=str(f), type="bind", read_only=True) for f in folders]
    environment = {name: environ[name] for name in SHARED_ENV if environ.get(name)} | {"KFMLOPS_HOME": str(home)}
    runner = local.DockerRunner(
        user=f"{IMAGE_UID}:{IMAGE_UID}", read_only=True, tmpfs={"/tmp": "rw"}, mounts=mounts, environment=environment
    )
    kfp_run_container = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_container
    try:
        yield runner
    finally:
        docker_task_handler.run_docker_container = kfp_run_container


def run_container(client: "DockerClient", image: str, command: list[str], volumes: dict, **run_args) -> int:
    """Run one step's container to its end: pull the image if it is not here, print the logs as
    they come, return the exit code, then remove the container (kfp's ``run_docker_container``
    less ``auto_remove``)."""
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        client.images.pull(image)
    print(f"running {image}")
    container = client.containers.run(image, command, detach=True, stdout=True, stderr=True, volumes=volumes, **run_args)
    try:
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="")
        return container.wait()["StatusCode"]
    finally:
        container.remove(force=True)

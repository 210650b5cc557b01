"""A predictor as a local child process on a loopback port: what local deploys, tests and benchmarks start.

``with PredictorProcess(model_uri, model_name=...) as p:`` starts ``python -m kfmlops.serving.server``
bound to 127.0.0.1 on a free port, waits until ``/v2/models/NAME/ready`` answers 200 (``verify_key``, a PEM public key, is handed
to it as ``$KFMLOPS_VERIFY_KEY`` for the provenance check; unset, the child finds its own), yields with
``p.url`` set, and stops the process (SIGTERM, then SIGKILL) on exit. A process that dies or
never gets ready raises :class:`PredictorStartError` with the end of its log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from kfmlops.provenance import VERIFY_KEY_ENV
from kfmlops.serving.config import ServingConfig

LOOPBACK = "127.0.0.1"


class PredictorStartError(RuntimeError):
    """The predictor process exited or did not get ready; the message ends with its log."""


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class PredictorProcess:
    """One ``kfmlops.serving.server`` child process (see the module docstring)."""

    def __init__(
        self,
        model: str,
        *,
        model_name: str,
        tracking_uri: str | None = None,
        serving: ServingConfig = ServingConfig(),
        verify_key: bytes | None = None,
        ready_timeout_s: float = 120.0,
        log_path: str | Path | None = None,
    ):
        self.model = model
        self.model_name = model_name
        self.tracking_uri = tracking_uri
        self.serving = serving
        self.verify_key = verify_key
        self.ready_timeout_s = ready_timeout_s
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="kfmlops-predictor-", suffix=".log")[1])
        self.port: int | None = None
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> "PredictorProcess":
        """Launch the process and wait until it is ready."""
        self.launch()
        return self.wait_ready()

    def launch(self) -> "PredictorProcess":
        """Start the process without waiting for it (it loads its model meanwhile); then :meth:`wait_ready`."""
        self.port = free_port()
        source = ["--model-dir", self.model] if Path(self.model).is_dir() else ["--model-uri", self.model]
        command = [sys.executable, "-m", "kfmlops.serving.server", *source, "--model-name", self.model_name]
        command += ["--host", LOOPBACK, "--http-port", str(self.port), "--serving", self.serving.model_dump_json()]
        if self.tracking_uri:
            command += ["--tracking-uri", self.tracking_uri]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.verify_key is not None:
            env[VERIFY_KEY_ENV] = self.verify_key.decode()
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self) -> "PredictorProcess":
        """Block until the launched process answers ready; stop it and raise :class:`PredictorStartError` if it never does."""
        try:
            self._poll_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _poll_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        ready = f"{self.url}/v2/models/{self.model_name}/ready"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PredictorStartError(f"the predictor exited with code {self._process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(ready, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise PredictorStartError(f"the predictor was not ready after {self.ready_timeout_s:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> int | None:
        """Stop the process (SIGTERM, SIGKILL after 10 s); returns its exit code."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return self._process.returncode

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> "PredictorProcess":
        return self if self.alive() else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

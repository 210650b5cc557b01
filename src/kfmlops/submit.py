"""``kfmlops submit``: the compiled training pipeline started as a run on a Kubeflow Pipelines endpoint.

Consumes a pipeline config (its ``pipeline_arguments()``, passed on as they are), the compiled
package (default: ``training.yaml`` of :mod:`kfmlops.pipelines`) and a :class:`KfpEndpoint` (host,
namespace, bearer token); produces a :class:`SubmittedRun` (run id, experiment, the run's URL)
and, with ``--wait``, the run's final state. :func:`submit_run` is also the drift trigger's kfp
submitter (:func:`kfmlops.monitoring.trigger.kfp_submitter`). Every endpoint failure (unreachable
host, an HTTP error) comes out as a :class:`SubmitError` with a one-line reason.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import yaml

from kfmlops.approval import STARTED_BY_TAG
from kfmlops.audit import actor
from kfmlops.config import PipelineConfig
from kfmlops.typed import ConfigError

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")
DEFAULT_EXPERIMENT = "kfmlops"


class SubmitError(RuntimeError):
    """The run could not be submitted or followed; the message says what the endpoint did and what to check."""


@dataclass(frozen=True)
class KfpEndpoint:
    """Where runs go: the Pipelines API ``host`` (http(s)://HOST[:PORT][/PATH]), the user
    ``namespace`` of a multi-user install, and at most one bearer token source: ``token`` (the
    token itself) or ``token_file`` (re-read on every request, so a kubelet-rotated
    service-account token keeps working). ``ui_host`` is the UI's base URL when it is not ``host``."""

    host: str
    namespace: str | None = None
    token: str | None = None
    token_file: str | None = None
    ui_host: str | None = None

    def run_url(self, run_id: str) -> str:
        return f"{(self.ui_host or self.host).rstrip('/')}/#/runs/details/{run_id}"


@dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    run_name: str
    experiment: str
    experiment_id: str | None
    url: str
    state: str | None = None


def default_package() -> Path:
    """The compiled training pipeline installed with kfmlops (``kfmlops/pipelines/training.yaml``)."""
    return Path(importlib.util.find_spec("kfmlops.pipelines").origin).parent / "training.yaml"


def run_name(prefix: str, arguments: dict[str, Any]) -> str:
    """``PREFIX-<12 hex digits of the arguments' SHA-256>``: the same arguments give the same name."""
    digest = hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()[:12]
    return f"{prefix}-{digest}"


def check_host(host: str) -> str:
    """``host`` without a trailing slash; a SubmitError unless it is an http(s) URL with a host name."""
    parsed = urlparse(host)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SubmitError(
            f"bad host {host!r}: give the Pipelines API as http(s)://HOST[:PORT][/PATH], "
            "e.g. http://ml-pipeline.kubeflow.svc.cluster.local:8888 or https://kubeflow.example.com/pipeline"
        )
    return host.rstrip("/")


def check_arguments(package: str | os.PathLike, arguments: dict[str, Any]) -> None:
    """A SubmitError when ``arguments`` name a parameter the compiled package lacks, or leave out a
    required one: the config and the package come from different kfmlops versions."""
    try:
        spec = next(yaml.safe_load_all(Path(package).read_text()))
        declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    except FileNotFoundError:
        raise SubmitError(f"pipeline package not found: {package}") from None
    except (yaml.YAMLError, StopIteration, TypeError, KeyError) as exc:
        raise SubmitError(f"{package}: not a compiled KFP pipeline ({type(exc).__name__}: {exc})") from None
    unknown = sorted(set(arguments) - set(declared))
    missing = sorted(n for n, p in declared.items() if not p.get("isOptional") and n not in arguments)
    if unknown or missing:
        raise SubmitError(
            f"{package} does not take these arguments (unknown: {', '.join(unknown) or 'none'}; "
            f"missing: {', '.join(missing) or 'none'}): recompile it (`kfmlops compile`) with the kfmlops that reads the config"
        )


@contextlib.contextmanager
def endpoint_errors(host: str) -> Iterator[None]:
    """Turn what kfp and its HTTP stack raise into a one-line :class:`SubmitError`."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as exc:
        raise SubmitError(_http_error(host, exc)) from None
    except urllib3.exceptions.MaxRetryError as exc:
        raise SubmitError(f"cannot reach Kubeflow Pipelines at {host}: {exc.reason}") from None
    except urllib3.exceptions.HTTPError as exc:
        raise SubmitError(f"cannot talk to Kubeflow Pipelines at {host}: {type(exc).__name__}: {exc}") from None


def _http_error(host: str, exc) -> str:
    try:
        body = json.loads(exc.body or "")
        detail = body.get("message") or body.get("error") or exc.body
    except (ValueError, AttributeError):
        detail = exc.body
    hint = {
        401: "; pass a bearer token (--token-env or --token-file)",
        403: "; the token's identity may not use this namespace (--namespace)",
        404: "; is the host the Pipelines API (…/pipeline, or ml-pipeline:8888 in the cluster)?",
    }.get(exc.status, "")
    detail = " ".join(str(detail or "").split())[:300]
    return f"Kubeflow Pipelines at {host} answered HTTP {exc.status} {exc.reason}: {detail or '(no body)'}{hint}"


def connect(endpoint: KfpEndpoint):
    """A ``kfp.Client`` for ``endpoint``. Its start-up health check is tried once (kfp retries it five
    times, five seconds apart, and then drops the HTTP status), so a bad host or token fails at once."""
    import warnings

    import kfp

    class Client(kfp.Client):
        def get_kfp_healthz(self, sleep_duration: int = 5):
            return self._healthz_api.healthz_service_get_healthz()

    credentials = None
    if endpoint.token_file:
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        credentials = ServiceAccountTokenVolumeCredentials(endpoint.token_file)
    with warnings.catch_warnings(), endpoint_errors(endpoint.host):
        warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline", category=FutureWarning)
        return Client(
            host=endpoint.host,
            namespace=endpoint.namespace or "kubeflow",  # kfp's default, which it reads as "not set"
            existing_token=endpoint.token,
            credentials=credentials,
            ui_host=endpoint.ui_host,
        )


def submit_run(
    endpoint: KfpEndpoint, package: str | os.PathLike, arguments: dict[str, Any], *, experiment: str, name: str, client=None
) -> SubmittedRun:
    """Upload ``package`` as a new run named ``name`` in ``experiment`` (created when missing) with
    ``arguments`` as its parameters. ``client`` is a :func:`connect` client to reuse."""
    client = client or connect(endpoint)
    with endpoint_errors(endpoint.host):
        result = client.create_run_from_pipeline_package(
            str(package), arguments=arguments, run_name=name, experiment_name=experiment, namespace=endpoint.namespace
        )
    info = result.run_info
    return SubmittedRun(str(result.run_id), name, experiment, info.experiment_id, endpoint.run_url(str(result.run_id)), info.state)


def wait_for_run(client, endpoint: KfpEndpoint, run_id: str, timeout_s: float, poll_s: float) -> tuple[str, bool]:
    """Poll the run until it reaches a terminal state or ``timeout_s`` passes: (its last state, whether terminal)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with endpoint_errors(endpoint.host):
            state = str(client.get_run(run_id).state or "PENDING")
        if state in TERMINAL_STATES:
            return state, True
        left = deadline - time.monotonic()
        if left <= 0:
            return state, False
        time.sleep(min(poll_s, left))


def read_token(env: str | None, file: str | None) -> str | None:
    """The bearer token from the variable ``env``; a SubmitError when it is unset or empty. A
    ``file`` is only checked here (readable, not empty): the client re-reads it on every request."""
    if env:
        token = os.environ.get(env, "").strip()
        if not token:
            raise SubmitError(f"--token-env {env}: the variable is unset or empty")
        return token
    if file:
        try:
            content = Path(file).read_text().strip()
        except OSError as exc:
            raise SubmitError(f"--token-file {file}: {exc.strerror or exc}") from None
        if not content:
            raise SubmitError(f"--token-file {file}: the file is empty")
    return None


def main(argv: list[str] | None = None) -> int:
    """``kfmlops submit --config FILE --host URL [...]``: 0 when submitted (with ``--wait``: when it
    succeeded), 1 on an endpoint error or a run that did not succeed in time, 2 on a bad config."""
    parser = argparse.ArgumentParser(prog="kfmlops submit", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="pipeline config YAML; its pipeline_arguments() are the run's parameters")
    parser.add_argument("--host", default=os.environ.get("KF_PIPELINES_ENDPOINT"), help="Pipelines API URL (default: $KF_PIPELINES_ENDPOINT)")
    parser.add_argument("--package", default=None, help="compiled pipeline YAML (default: the installed training.yaml)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"experiment, created when missing (default: {DEFAULT_EXPERIMENT})")
    parser.add_argument("--run-name", help="default: kfmlops-training-<hash of the arguments>")
    parser.add_argument("--namespace", help="user namespace of a multi-user install (default: kfp's: from its context or the pod)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-env", metavar="VAR", help="bearer token from this environment variable")
    token.add_argument("--token-file", metavar="PATH", help="bearer token file, e.g. a projected service-account token")
    parser.add_argument("--ui-host", help="the Pipelines UI's base URL for the run's link (default: --host)")
    parser.add_argument("--wait", action="store_true", help="follow the run and exit 0 only when it succeeds")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait waits (default 3600)")
    parser.add_argument("--poll-interval", type=float, default=10.0, help="seconds between --wait's polls (default 10)")
    parser.add_argument("--by", help="who starts the run, recorded as kfmlops.started_by (default: $KFMLOPS_ACTOR, "
                        "else the login name); kfmlops approve refuses them as approver")
    parser.add_argument("--json", action="store_true", help="print the run as JSON")
    args = parser.parse_args(argv)
    try:
        config = PipelineConfig.from_yaml(args.config)
        if not args.host:
            raise SubmitError("no endpoint: pass --host URL or set $KF_PIPELINES_ENDPOINT")
        endpoint = KfpEndpoint(
            host=check_host(args.host),
            namespace=args.namespace,
            token=read_token(args.token_env, args.token_file),
            token_file=args.token_file,
            ui_host=args.ui_host and check_host(args.ui_host),
        )
        # who submits is who started the run (the four-eyes rule of kfmlops approve), not the pod's account
        arguments = config.pipeline_arguments() | {"run_tags": {STARTED_BY_TAG: actor(args.by)}}
        package = args.package or default_package()
        check_arguments(package, arguments)
        if not config.settings.mlflow.tracking_uri:
            print("kfmlops submit: warning: mlflow.tracking_uri is unset, so the run records into a store inside "
                  "its own pods; set it to your MLflow server", file=sys.stderr)
        with contextlib.redirect_stdout(io.StringIO()):  # kfp prints links of its own; ours come below
            client = connect(endpoint)
            name = args.run_name or run_name("kfmlops-training", arguments)
            run = submit_run(endpoint, package, arguments, experiment=args.experiment, name=name, client=client)
            done = None
            if args.wait:
                state, done = wait_for_run(client, endpoint, run.run_id, args.timeout, args.poll_interval)
                run = SubmittedRun(**{**asdict(run), "state": state})
    except ConfigError as exc:
        print(f"kfmlops submit: {exc}", file=sys.stderr)
        return 2
    except SubmitError as exc:
        print(f"kfmlops submit: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**asdict(run), "finished": done}))
    elif not args.wait:
        print(f"submitted run {run.run_id} ({run.run_name}) in experiment {run.experiment}: {run.url}")
    elif done:
        print(f"run {run.run_id} ended {run.state}: {run.url}")
    else:
        print(f"run {run.run_id} still {run.state} after {args.timeout:g} s (--timeout): {run.url}")
    return 0 if not args.wait or run.state == "SUCCEEDED" else 1

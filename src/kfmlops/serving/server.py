"""``kfmlops serve``: one kfmlops model behind KServe's ``ModelServer`` (V1 and V2 REST, health, metrics).

Consumes a model source (``--model-uri``, default the ``champion`` of the configured registered
model in the local MLflow store, or ``--model-dir``, e.g. ``/mnt/models`` in a KServe pod) and
serves it until SIGTERM/SIGINT:

- ``POST /v1/models/NAME:predict`` and ``POST /v2/models/NAME/infer``;
- ``POST /v1/models/NAME:explain``: per-row attributions (:meth:`Predictor.explain
  <kfmlops.serving.predictor.Predictor.explain>`);
- ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2/models/NAME/ready``, ``/v2/models/NAME``
  (metadata from the signature), ``/v1/models/NAME``;
- ``GET /metrics`` (Prometheus; see :mod:`kfmlops.serving.metrics`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import kserve
import kserve.model_server
from fastapi.responses import ORJSONResponse
from pydantic import Field, ValidationError

from kfmlops.config import MlflowConfig, PipelineConfig, ProvenanceConfig
from kfmlops.typed import ConfigError
from kfmlops.typed import SettingsModel
from kfmlops.serving.config import ServingConfig
from kfmlops.serving.metrics import REJECTED, ServingMiddleware
from kfmlops.serving.predictor import REGISTRY_URI, Predictor
from kfmlops.serving.schema import RequestRejected

log = logging.getLogger(__name__)


class ServerSettings(SettingsModel):
    """What one predictor process serves and where it listens."""

    model: str = Field(description="Model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...) or local model directory.")
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="The name in the endpoint paths.")
    tracking_uri: str | None = None
    host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=1, le=65535)
    access_log: bool = False
    verify_provenance: bool = Field(default=True, description="Refuse a model whose signed provenance does not verify.")
    provenance: ProvenanceConfig = ProvenanceConfig()
    serving: ServingConfig = ServingConfig()


def serve(settings: ServerSettings) -> None:
    """Load the model (once), then run KServe's ModelServer until a stop signal."""
    import torch
    from threadpoolctl import threadpool_limits

    # Requests are small: one BLAS/torch thread per process beats contention between threads.
    threadpool_limits(1)
    torch.set_num_threads(1)
    from kfmlops.provenance import verify_key

    key = verify_key(settings.provenance) if settings.verify_provenance else None
    model = Predictor(settings.model_name, settings.model, settings.serving, settings.tracking_uri, key)
    model.load()  # ModelServer silently skips models that are not ready
    app = kserve.model_server.app
    app.add_middleware(ServingMiddleware, models=frozenset({model.name}), max_body_bytes=settings.serving.max_body_bytes)
    app.add_exception_handler(RequestRejected, _rejected)
    server = _ModelServer(settings.host, http_port=settings.http_port, enable_grpc=False, enable_latency_logging=False)
    if not settings.access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    log.info("serving %r on http://%s:%d", model.name, settings.host, settings.http_port)
    server.start([model])


async def _rejected(request, exc: RequestRejected) -> ORJSONResponse:
    REJECTED.labels(request.path_params.get("model_name", "(unknown)"), exc.kind).inc()
    log.info("rejected %s: %s", request.url.path, exc)
    return ORJSONResponse({"error": str(exc)}, status_code=exc.status)


class _ModelServer(kserve.ModelServer):
    """KServe's ModelServer, with its REST server bound to ``host`` (KServe always binds 0.0.0.0)."""

    def __init__(self, host: str, **kwargs):
        super().__init__(**kwargs)
        self._host = host

    def setup_event_loop(self):
        super().setup_event_loop()  # start() calls this after it built the REST server, before it binds
        self._rest_server.config.host = self._host


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kfmlops serve", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model-uri", help="default: models:/<mlflow.model_name>@champion")
    source.add_argument("--model-dir", help="a local MLflow model directory, e.g. /mnt/models")
    p.add_argument("--model-name", help="the name in the endpoint paths (default: the registered model's name)")
    p.add_argument("--config", help="pipeline YAML whose 'mlflow' section names the store and the model")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: from --config, $MLFLOW_TRACKING_URI or $KFMLOPS_HOME)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 in a container")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--verify-key-file", help="Ed25519 public key (PEM) that model provenance must verify against "
                   "(default: from --config, $KFMLOPS_VERIFY_KEY, else the development key under $KFMLOPS_HOME)")
    p.add_argument("--no-verify-provenance", action="store_true", help="serve a model without checking its signed provenance")
    p.add_argument("--serving", default="{}", help='ServingConfig as JSON, e.g. \'{"micro_batching": true}\'')
    return p


def settings_from_args(argv: list[str]) -> ServerSettings:
    """Command-line flags -> validated :class:`ServerSettings` (raises ConfigError naming the field)."""
    from kfmlops.tracking import configured_tracking_uri

    args = parser().parse_args(argv)
    settings = PipelineConfig.from_yaml(args.config).settings if args.config else None
    mlflow_config = settings.mlflow if settings else MlflowConfig()
    provenance = settings.provenance if settings else ProvenanceConfig()
    if args.verify_key_file:
        provenance = provenance.model_copy(update={"verify_key_file": args.verify_key_file})
    if args.tracking_uri:
        mlflow_config = mlflow_config.model_copy(update={"tracking_uri": args.tracking_uri})
    model = args.model_dir or args.model_uri or f"models:/{mlflow_config.model_name}@champion"
    registered = REGISTRY_URI.fullmatch(model)
    try:
        return ServerSettings(
            model=model,
            model_name=args.model_name or (registered["name"] if registered else mlflow_config.model_name),
            tracking_uri=None if args.model_dir else configured_tracking_uri(mlflow_config),
            host=args.host,
            http_port=args.http_port,
            access_log=args.access_log,
            verify_provenance=not args.no_verify_provenance,
            provenance=provenance,
            serving=ServingConfig.model_validate_json(args.serving),
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"kfmlops serve: {problems}") from None


def check_source(settings: ServerSettings) -> None:
    """A ConfigError, before anything is created, for a model directory or a local sqlite MLflow store
    that does not exist (opening a missing store would create an empty one, and a development key pair
    would be made to verify against)."""
    if settings.tracking_uri is None:
        if not Path(settings.model).is_dir():
            raise ConfigError(f"kfmlops serve: --model-dir {settings.model} is not a directory")
    elif settings.tracking_uri.startswith("sqlite:///"):
        path = Path(settings.tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ConfigError(
                f"kfmlops serve: no MLflow store at {path}: train a model first (`kfmlops run`), or point "
                "--config, --tracking-uri or $KFMLOPS_HOME at the store, or serve --model-dir"
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kfmlops serve`` and ``python -m kfmlops.serving.server``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(sys.argv[1:] if argv is None else argv)
        check_source(settings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from mlflow.exceptions import MlflowException

    try:
        serve(settings)
    except (MlflowException, OSError, ValueError) as exc:  # ValueError covers ProvenanceError  # the model cannot be served: say why
        log.error("kfmlops serve: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

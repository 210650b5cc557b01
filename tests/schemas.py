"""Schema validation of the custom resources kfmlops writes (test helper, no cluster needed).

``validate_crd(obj)`` checks one manifest (a dict, as loaded from YAML or built in code)
against the stored JSON Schema for its ``apiVersion``/``kind`` and raises
:class:`CRDValidationError` listing every problem. Kinds covered:

* ``serving.kserve.io/v1beta1`` ``InferenceService``
* ``serving.kserve.io/v1alpha1`` ``ServingRuntime``
* ``trainer.kubeflow.org/v1alpha1`` ``TrainJob``
* ``kubeflow.org/v1`` ``PyTorchJob``
* ``kubeflow.org/v1beta1`` ``Experiment`` (Katib; the upstream CRD carries no schema, so this one
  is the SDK models' plus the enums and required fields of Katib's validating webhook; its
  cross-field rules are :func:`katib_webhook_errors`)
* ``monitoring.coreos.com/v1`` ``PrometheusRule``, ``ServiceMonitor``, ``PodMonitor``
* ``networking.istio.io/v1`` ``VirtualService``
* ``v1`` ``Service`` (Kubernetes core)

The schemas (``tests/schemas/*.json.gz``; where they come from: ``tests/schemas/README.md``)
close every object (``additionalProperties: false``), so a misspelt or misplaced field fails
here the way ``kubectl apply --validate=strict`` fails it against the real CRD.

Use from another test module in ``tests/``::

    from schemas import validate_crd   # or: from tests.schemas import validate_crd

    validate_crd(build_inference_service(...))
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import Any, Mapping

import jsonschema

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

SCHEMA_FILES: dict[tuple[str, str], str] = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io_v1beta1_InferenceService.json.gz",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "serving.kserve.io_v1alpha1_ServingRuntime.json.gz",
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainer.kubeflow.org_v1alpha1_TrainJob.json.gz",
    ("kubeflow.org/v1", "PyTorchJob"): "kubeflow.org_v1_PyTorchJob.json.gz",
    ("kubeflow.org/v1beta1", "Experiment"): "kubeflow.org_v1beta1_Experiment.json.gz",
    **{("monitoring.coreos.com/v1", kind): f"monitoring.coreos.com_v1_{kind}.json.gz"
       for kind in ("PrometheusRule", "ServiceMonitor", "PodMonitor")},
    ("networking.istio.io/v1", "VirtualService"): "networking.istio.io_v1_VirtualService.json.gz",
    ("v1", "Service"): "v1_Service.json.gz",
}

__all__ = ["CRDValidationError", "SCHEMA_FILES", "crd_errors", "crd_schema", "has_schema", "katib_webhook_errors",
           "validate_crd"]


class CRDValidationError(ValueError):
    """The object does not match its CRD schema; ``errors`` holds one line per problem."""

    def __init__(self, kind: str, name: str, errors: list[str]):
        self.kind, self.name, self.errors = kind, name, errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{kind} {name!r} does not match its schema ({len(errors)} problem(s)):\n{lines}")


def has_schema(obj: Mapping[str, Any]) -> bool:
    """True when ``obj``'s apiVersion/kind is one of the kinds a schema is stored for."""
    return (obj.get("apiVersion"), obj.get("kind")) in SCHEMA_FILES


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The stored JSON Schema (draft 2020-12) for ``api_version``/``kind``."""
    try:
        filename = SCHEMA_FILES[(api_version, kind)]
    except KeyError:
        known = ", ".join(f"{a} {k}" for a, k in SCHEMA_FILES)
        raise KeyError(f"no schema stored for {api_version} {kind}; known: {known}") from None
    with gzip.open(SCHEMA_DIR / filename, "rt", encoding="utf-8") as fh:
        return json.load(fh)


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = crd_schema(api_version, kind)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _drop_none(value: Any) -> Any:
    # The API server prunes nulls of non-nullable fields before validating; SDK-built
    # dicts are full of them.
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _where(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) or "<root>"


def crd_errors(obj: Mapping[str, Any]) -> list[str]:
    """Every schema problem of ``obj`` as ``"path: message"`` lines (empty list: valid)."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    validator = _validator(api_version, kind)
    errors = []
    for err in sorted(validator.iter_errors(_drop_none(obj)), key=lambda e: list(map(str, e.absolute_path))):
        # anyOf/oneOf failures: report the branch that got furthest, not the whole alternation.
        best = jsonschema.exceptions.best_match([err, *err.context]) if err.context else err
        errors.append(f"{_where(best)}: {best.message}")
    return errors


def katib_webhook_errors(experiment: Mapping[str, Any]) -> list[str]:
    """The cross-field rules of Katib's validating webhook (kubeflow/katib
    ``pkg/webhook/v1beta1/experiment/validator/validator.go``) that a schema cannot say: count
    bounds, trial parameters that reference spec.parameters, every ``${trialParameters.X}`` in the
    trial spec declared and every declared one used, a trial spec without name or namespace."""
    import re

    spec = experiment.get("spec") or {}
    errors = []
    counts = {k: spec.get(k) for k in ("maxTrialCount", "parallelTrialCount", "maxFailedTrialCount")}
    for key in ("parallelTrialCount", "maxFailedTrialCount"):
        if counts[key] is not None and counts["maxTrialCount"] is not None and counts[key] > counts["maxTrialCount"]:
            errors.append(f"spec.{key}: should be less than or equal to spec.maxTrialCount")
    template = spec.get("trialTemplate") or {}
    declared = [p.get("name") for p in template.get("trialParameters") or []]
    names = {p.get("name") for p in spec.get("parameters") or []}
    for p in template.get("trialParameters") or []:
        if p.get("reference") not in names:
            errors.append(f"spec.trialTemplate.trialParameters: reference {p.get('reference')!r} is not in spec.parameters")
    if len(set(declared)) != len(declared):
        errors.append("spec.trialTemplate.trialParameters: duplicated names")
    text = json.dumps(template.get("trialSpec") or {})
    used = set(re.findall(r"\$\{trialParameters\.([^}]+)\}", text))
    errors += [f"spec.trialTemplate: ${{trialParameters.{n}}} is used but not declared" for n in sorted(used - set(declared))]
    errors += [f"spec.trialTemplate.trialParameters: {n!r} is declared but not used in trialSpec"
               for n in declared if n not in used]
    meta = (template.get("trialSpec") or {}).get("metadata") or {}
    if meta.get("name") or meta.get("namespace"):
        errors.append("spec.trialTemplate: metadata.name and metadata.namespace in trialSpec must be omitted")
    return errors


def validate_crd(obj: Mapping[str, Any]) -> None:
    """Raise :class:`CRDValidationError` unless ``obj`` matches its CRD schema.

    Raises ``KeyError`` for a kind no schema is stored for (see :data:`SCHEMA_FILES`).
    """
    errors = crd_errors(obj)
    if errors:
        name = (obj.get("metadata") or {}).get("name", "<unnamed>")
        raise CRDValidationError(str(obj.get("kind")), str(name), errors)

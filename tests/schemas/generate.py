"""Regenerate the CRD JSON schemas stored beside this file (test data).

Not run by the test suite.  Run it by hand in a throw-away virtualenv that
holds the pinned upstream SDK releases (see README.md in this folder)::

    python -m venv /tmp/schemagen
    /tmp/schemagen/bin/pip install kubernetes==36.0.3 six "pydantic>=2.10,<3"
    /tmp/schemagen/bin/pip install --no-deps kserve==0.21.0 \
        kubeflow-training==1.9.4 kubeflow-trainer-api==2.3.0
    /tmp/schemagen/bin/pip install cloudcoil-models-prometheus-operator==0.80.1.0
    /tmp/schemagen/bin/pip install cloudcoil-models-istio==1.24.2.1
    /tmp/schemagen/bin/python tests/schemas/generate.py

``generate.py NAME ...`` rewrites only the named files (e.g. ``kubeflow.org_v1beta1_Experiment``,
which needs nothing but ``kubeflow-katib-api``).

The upstream projects generate their Python SDK models from the same Go API
types that controller-gen turns into the CRDs' ``openAPIV3Schema``; this script
walks those models and writes one self-contained JSON Schema (draft 2020-12,
``$defs`` + ``$ref``) per kind, gzipped.  Every object schema is closed
(``additionalProperties: false``) so a misspelt field fails, as
``kubectl apply --validate=strict`` would make it fail against the real CRD.
"""

from __future__ import annotations

import gzip
import importlib
import json
import re
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent

INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "number"}, {"type": "string"}]}
# Fields that the swagger-codegen SDKs type as plain strings but the API types
# as resource.Quantity (int or string in YAML).
QUANTITY_FIELDS = {
    ("V1ResourceRequirements", "limits"),
    ("V1ResourceRequirements", "requests"),
    ("V1VolumeResourceRequirements", "limits"),
    ("V1VolumeResourceRequirements", "requests"),
    ("V1EmptyDirVolumeSource", "size_limit"),
    ("V1PodSpec", "overhead"),
}


# Where the SDK's notion of "required" differs from the CRD's, the CRD wins. Each entry
# was checked against the upstream CRD YAML (see README.md).
REQUIRED_OVERRIDES = {
    # kubeflow/training-operator manifests/base/crds/kubeflow.org_pytorchjobs.yaml
    # @04538cc6b1339cba529b512e76e780bdf23c7938: spec.required == [pytorchReplicaSpecs]
    # (runPolicy carries +kubebuilder:validation:Optional; the SDK marks it required).
    "KubeflowOrgV1PyTorchJobSpec": ["pytorchReplicaSpecs"],
}


def _stub_package(name: str) -> None:
    """Import ``name``'s models without running its heavy ``__init__``."""
    spec = importlib.util.find_spec(name.split(".")[0])
    base = Path(spec.submodule_search_locations[0])
    parts = name.split(".")
    for i in range(1, len(parts)):  # parents only; the models package imports for real
        mod = ".".join(parts[:i])
        if mod in sys.modules:
            continue
        m = types.ModuleType(mod)
        m.__path__ = [str(base.joinpath(*parts[1:i]))]
        sys.modules[mod] = m


class SwaggerWalker:
    """Turns swagger-codegen model classes (openapi_types/attribute_map) into $defs."""

    def __init__(self, *modules):
        self.modules = modules
        self.defs: dict[str, dict] = {}
        self.root = ""

    def _cls(self, name):
        for m in self.modules:
            if hasattr(m, name):
                return getattr(m, name)
        # kserve names a few k8s types by Go package (K8sIoApiAutoscalingV2Foo);
        # the kubernetes client calls the same type V2Foo.
        m = re.fullmatch(r"K8sIoApi[A-Z][a-z]+(V\d+(?:(?:alpha|beta)\d+)?)(\w+)", name)
        if m:
            return self._cls(m.group(1) + m.group(2))
        raise KeyError(name)

    def type_schema(self, t: str, owner: str = "", field: str = "") -> dict:
        if (owner, field) in QUANTITY_FIELDS:
            if t.lower().startswith("dict"):
                return {"type": "object", "additionalProperties": QUANTITY}
            return QUANTITY
        m = re.fullmatch(r"[Ll]ist\[(.+)\]", t)
        if m:
            return {"type": "array", "items": self.type_schema(m.group(1))}
        m = re.fullmatch(r"[Dd]ict[(\[]str, (.+)[)\]]", t)
        if m:
            return {"type": "object", "additionalProperties": self.type_schema(m.group(1))}
        prim = {
            "str": {"type": "string"},
            "int": {"type": "integer"},
            "float": {"type": "number"},
            "bool": {"type": "boolean"},
            "datetime": {"type": "string"},
            "date": {"type": "string"},
            "object": {},  # IntOrString, RawExtension, ...: anything
        }
        if t in prim:
            return dict(prim[t])
        if t.endswith("Quantity"):  # e.g. kserve's V1beta1MetricQuantity (no SDK class)
            return QUANTITY
        self.model(t)
        return {"$ref": f"#/$defs/{t}"}

    def model(self, name: str) -> None:
        if name in self.defs:
            return
        self.defs[name] = {}  # recursion guard
        try:
            cls = self._cls(name)
        except KeyError:
            # The SDK names a type it does not ship (e.g. kserve 0.21's
            # V1alpha1WorkerSpec): accept any object there, and say so.
            print(f"  warning: no SDK class for {name}; left open", file=sys.stderr)
            self.defs[name] = {"type": "object"}
            return
        props, required = {}, []
        for attr, t in cls.openapi_types.items():
            key = cls.attribute_map[attr]
            if key == "status" and name == self.root:
                # the root's status is written by controllers; see main()
                continue
            props[key] = self.type_schema(t, name, attr)
            if self._is_required(cls, attr):
                required.append(key)
        schema = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            schema["required"] = sorted(required)
        self.defs[name] = schema

    @staticmethod
    def _is_required(cls, attr) -> bool:
        obj = cls.__new__(cls)
        conf = type("C", (), {"client_side_validation": True})()
        obj.local_vars_configuration = conf
        try:
            setattr(obj, attr, None)
        except ValueError as exc:
            return "must not be `None`" in str(exc)
        return False


def swagger_schema(root: str, *modules) -> dict:
    w = SwaggerWalker(*modules)
    w.root = root
    w.model(root)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": f"#/$defs/{root}", "$defs": w.defs}


def _denull(node):
    """Drop pydantic's ``{"type": "null"}`` alternatives (validate_crd drops None values
    first, as the API server prunes nulls) and unwrap one-branch ``anyOf``s."""
    if isinstance(node, dict):
        alts = node.get("anyOf")
        if isinstance(alts, list):
            alts = [a for a in alts if a != {"type": "null"}]
            if len(alts) == 1:
                del node["anyOf"]
                node.update(alts[0])
            else:
                node["anyOf"] = alts
        for v in node.values():
            _denull(v)
    elif isinstance(node, list):
        for v in node:
            _denull(v)
    return node


def _close(node):
    """Recursively close object schemas and drop descriptions/titles/defaults: annotations of a
    schema, not properties of those names (Katib's trialParameters have a ``description``); a Go
    regexp's inline flags after the anchor (``^(?i)...``, prometheus-operator) move to the front,
    where Python's ``re`` (jsonschema's ``pattern``) takes them."""
    if isinstance(node, dict):
        for k in ("description", "title", "default"):
            node.pop(k, None)
        if isinstance(node.get("pattern"), str) and node["pattern"].startswith("^(?i)"):
            node["pattern"] = "(?i)^" + node["pattern"][len("^(?i)"):]
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for k, v in node.items():
            if k in ("properties", "$defs") and isinstance(v, dict):
                for schema in v.values():
                    _close(schema)
            else:
                _close(v)
    elif isinstance(node, list):
        for v in node:
            _close(v)
    return node


def pydantic_schema(model) -> dict:
    s = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
    defs = s.pop("$defs", {})
    root = model.__name__
    defs[root] = s
    for name in list(defs):
        if name.endswith("ResourceQuantity"):
            defs[name] = dict(QUANTITY)
        elif name.endswith("IntOrString"):
            defs[name] = dict(INT_OR_STRING)
    _denull(defs)
    for schema in defs.values():
        _close(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": f"#/$defs/{root}", "$defs": defs}


def _pin_kind(schema: dict, root: str, api_version: str, kind: str) -> dict:
    d = schema["$defs"][root]
    d["properties"]["apiVersion"] = {"const": api_version}
    d["properties"]["kind"] = {"const": kind}
    d["required"] = sorted(set(d.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return schema


def _k8s():
    import kubernetes.client.models as k8s

    return k8s


def _kserve():
    _stub_package("kserve.models")
    import kserve.models as ks  # noqa: E402

    return ks


def _training():
    _stub_package("kubeflow.training.models")
    import kubeflow.training.models as kt  # noqa: E402

    return kt


def _trainjob() -> dict:
    import kubeflow_trainer_api.models as ktr  # noqa: E402

    return _pin_kind(pydantic_schema(ktr.TrainerV1alpha1TrainJob),
                     "TrainerV1alpha1TrainJob", "trainer.kubeflow.org/v1alpha1", "TrainJob")


# What Katib's validating webhook (pkg/webhook/v1beta1/experiment/validator/validator.go) refuses
# that the SDK models leave open: enums and required fields. Its cross-field rules (every
# ${trialParameters.X} declared, references into spec.parameters, count bounds) are in
# tests/schemas.py (katib_webhook_errors).
KATIB_RULES = {
    "V1beta1ExperimentSpec": {"required": ["algorithm", "objective", "parameters", "trialTemplate"]},
    "V1beta1ObjectiveSpec": {"required": ["objectiveMetricName", "type"],
                             "properties": {"type": {"enum": ["minimize", "maximize"]}}},
    "V1beta1AlgorithmSpec": {"required": ["algorithmName"]},
    "V1beta1EarlyStoppingSpec": {"required": ["algorithmName"]},
    "V1beta1ParameterSpec": {"required": ["feasibleSpace", "name", "parameterType"],
                             "properties": {"parameterType": {"enum": ["int", "double", "categorical", "discrete"]}}},
    "V1beta1FeasibleSpace": {"properties": {"distribution": {"enum": ["uniform", "logUniform", "normal", "logNormal"]}}},
    "V1beta1MetricStrategy": {"properties": {"value": {"enum": ["min", "max", "latest"]}}},
    "V1beta1CollectorSpec": {"properties": {"kind": {"enum": ["StdOut", "File", "TensorFlowEvent", "PrometheusMetric",
                                                              "Custom", "None", "Push"]}}},
    "V1beta1TrialTemplate": {"required": ["failureCondition", "primaryContainerName", "successCondition",
                                          "trialParameters"]},
    "V1beta1TrialParameterSpec": {"required": ["name", "reference"]},
}


def _experiment() -> dict:
    import kubeflow_katib_api.models as katib  # noqa: E402

    schema = _pin_kind(pydantic_schema(katib.V1beta1Experiment), "V1beta1Experiment", "kubeflow.org/v1beta1",
                       "Experiment")
    for model, rules in KATIB_RULES.items():
        d = schema["$defs"][model]
        if "required" in rules:
            d["required"] = sorted(set(d.get("required", [])) | set(rules["required"]))
        for prop, extra in rules.get("properties", {}).items():
            d["properties"][prop] = {**d["properties"][prop], **extra}
    return schema


def _prometheus_operator(kind: str) -> dict:
    from cloudcoil.models.prometheus_operator import v1 as po  # noqa: E402

    return _pin_kind(pydantic_schema(getattr(po, kind)), kind, "monitoring.coreos.com/v1", kind)


def _virtual_service() -> dict:
    from cloudcoil.models.istio.networking import v1 as istio  # noqa: E402

    return _pin_kind(pydantic_schema(istio.VirtualService), "VirtualService", "networking.istio.io/v1", "VirtualService")


KINDS = {
    "serving.kserve.io_v1beta1_InferenceService": lambda: _pin_kind(
        swagger_schema("V1beta1InferenceService", _kserve(), _k8s()),
        "V1beta1InferenceService", "serving.kserve.io/v1beta1", "InferenceService"),
    "serving.kserve.io_v1alpha1_ServingRuntime": lambda: _pin_kind(
        swagger_schema("V1alpha1ServingRuntime", _kserve(), _k8s()),
        "V1alpha1ServingRuntime", "serving.kserve.io/v1alpha1", "ServingRuntime"),
    "kubeflow.org_v1_PyTorchJob": lambda: _pin_kind(
        swagger_schema("KubeflowOrgV1PyTorchJob", _training(), _k8s()),
        "KubeflowOrgV1PyTorchJob", "kubeflow.org/v1", "PyTorchJob"),
    "trainer.kubeflow.org_v1alpha1_TrainJob": _trainjob,
    "kubeflow.org_v1beta1_Experiment": _experiment,
    **{f"monitoring.coreos.com_v1_{kind}": (lambda kind=kind: _prometheus_operator(kind))
       for kind in ("PrometheusRule", "ServiceMonitor", "PodMonitor")},
    "networking.istio.io_v1_VirtualService": _virtual_service,
    "v1_Service": lambda: _pin_kind(swagger_schema("V1Service", _k8s()), "V1Service", "v1", "Service"),
}


def main(names: list[str]) -> None:
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        raise SystemExit(f"unknown schema(s) {unknown}; known: {sorted(KINDS)}")
    out = {name: KINDS[name]() for name in names or KINDS}
    for name, schema in out.items():
        for model, required in REQUIRED_OVERRIDES.items():
            if model in schema["$defs"]:
                schema["$defs"][model]["required"] = required
        # status is written by controllers, never by us: accept anything there.
        root = schema["$ref"].rsplit("/", 1)[1]
        schema["$defs"][root]["properties"]["status"] = {"type": "object"}
        data = json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()
        path = HERE / f"{name}.json.gz"
        with gzip.GzipFile(path, "wb", mtime=0) as fh:  # reproducible bytes
            fh.write(data)
        print(f"{path.name}: {len(schema['$defs'])} defs, {len(data)} bytes json, "
              f"{path.stat().st_size} bytes gz")


if __name__ == "__main__":
    main(sys.argv[1:])

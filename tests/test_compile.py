"""The committed YAML is what the Python compiles to, and loads for teams that don't use our Python."""

import subprocess
import sys

import yaml
from kfp.components import load_component_from_file

from kfmlops import IMAGE
from kfmlops.compile import stale, targets


def test_committed_yaml_is_fresh():
    assert stale() == [], "run `make compile` and commit the YAML"


def test_every_component_yaml_loads_and_runs_on_our_image():
    for path in targets():
        if path.parent.name != "components":
            continue
        component = load_component_from_file(str(path))
        spec = yaml.safe_load(path.read_text())
        executors = spec["deploymentSpec"]["executors"]
        assert [e["container"]["image"] for e in executors.values()] == [IMAGE], path.name
        assert component.description, f"{path.name} has no docstring"


def _tasks_by_name(spec: dict) -> dict[str, list[dict]]:
    """Every task of every DAG in a compiled pipeline, by its display name."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    out: dict[str, list[dict]] = {}
    for dag in dags:
        for task in dag["tasks"].values():
            out.setdefault(task["taskInfo"]["name"], []).append(task)
    return out


def test_pipeline_gates_wrap_promote_and_deploy_on_both_training_backends():
    pipeline, platform = yaml.safe_load_all((next(p for p in targets() if p.name == "training.yaml")).read_text())
    tasks = _tasks_by_name(pipeline)
    branches = {t["triggerPolicy"]["condition"] for name in ("train-in-pod", "train-on-cluster") for t in tasks[name]}
    assert branches == {"inputs.parameter_values['pipelinechannel--training_backend'] == 'in-pod'",
                        "!(inputs.parameter_values['pipelinechannel--training_backend'] == 'in-pod')"}
    assert len(tasks["evaluation-gate"]) == 2 and len(tasks["fairness-gate"]) == 2  # one release per backend
    assert all("evaluate-Output" in t["triggerPolicy"]["condition"] for t in tasks["evaluation-gate"])
    for gate in tasks["fairness-gate"]:
        assert "fairness-Output" in gate["triggerPolicy"]["condition"]
        inside = pipeline["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
        assert {t["taskInfo"]["name"] for t in inside.values()} == {"promote", "deploy"}
        deploy_inputs = inside["deploy"]["inputs"]["parameters"]  # deploy only what promote promoted
        assert deploy_inputs["promotion"]["taskOutputParameter"] == {"producerTask": "promote", "outputParameterKey": "status"}
    assert len(tasks["explain"]) == 2  # one release per backend; register waits for it
    assert all("explain" in t["dependentTasks"] for t in tasks["register"])
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, spec in executors.items():
        if name.startswith("exec-register"):
            assert spec["secretAsVolume"][0]["secretName"] == "kfmlops-signing-key"
        if name.startswith("exec-deploy"):
            assert spec["secretAsVolume"][0]["secretName"] == "kfmlops-verify-key"
    assert executors["exec-train-job"]["pvcMount"][0]["mountPath"] == "/mnt/kfmlops"


def test_importing_components_and_pipelines_loads_no_heavy_library():
    code = ("import sys, kfmlops.components, kfmlops.pipelines; "
            "print(sorted(m for m in ('torch', 'pandas', 'mlflow', 'great_expectations', 'fairlearn', 'sklearn') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_data_spec_is_a_required_pipeline_parameter():
    """Every other pipeline parameter has a default in the compiled YAML, so a run may leave it out;
    none is an Optional with no value (the KFP backend and kfp.local fail on those)."""
    pipeline, _ = yaml.safe_load_all((next(p for p in targets() if p.name == "training.yaml")).read_text())
    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    required = {name for name, p in parameters.items() if not p.get("isOptional")}
    assert required == {"data"}
    assert all("defaultValue" in p for name, p in parameters.items() if name != "data")

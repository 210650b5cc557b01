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


def test_pipeline_gates_are_conditions_around_promote():
    pipeline, platform = yaml.safe_load_all((next(p for p in targets() if p.name == "training.yaml")).read_text())
    spec = pipeline
    outer = spec["root"]["dag"]["tasks"]["condition-1"]
    assert outer["taskInfo"]["name"] == "evaluation-gate"
    assert "evaluate-Output" in outer["triggerPolicy"]["condition"]
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]["condition-2"]
    assert inner["taskInfo"]["name"] == "fairness-gate"
    assert "fairness-Output" in inner["triggerPolicy"]["condition"]
    assert list(spec["components"]["comp-condition-2"]["dag"]["tasks"]) == ["deploy", "promote"]
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert mounts["exec-register"]["secretAsVolume"][0]["secretName"] == "kfmlops-signing-key"
    assert mounts["exec-deploy"]["secretAsVolume"][0]["secretName"] == "kfmlops-verify-key"


def test_importing_components_and_pipelines_loads_no_heavy_library():
    code = ("import sys, kfmlops.components, kfmlops.pipelines; "
            "print(sorted(m for m in ('torch', 'pandas', 'mlflow', 'great_expectations', 'fairlearn', 'sklearn') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

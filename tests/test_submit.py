"""``kfmlops submit`` against a stand-in Kubeflow Pipelines API on 127.0.0.1: what kfp.Client sends
(the uploaded pipeline spec, the config's parameters, the experiment, the bearer token), waiting
for the run's end, and a one-line reason for every failure."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from kfmlops import cli
from kfmlops.config import PipelineConfig
from kfmlops.submit import main

from conftest import ROOT

PACKAGE = ROOT / "pipelines" / "training.yaml"
API = "/apis/v2beta1"


class StandIn:
    """Just enough of the Pipelines v2beta1 REST API: healthz, experiments (listed by name and
    created), runs (created, then read back in ``states`` order). Records every request; answers
    401 to a request without ``Bearer <token>`` when ``token`` is set, and ``fail_runs`` (status,
    body) to the run's creation."""

    def __init__(self, token: str | None = None, states=("RUNNING", "SUCCEEDED"), fail_runs=None, on_run=None):
        self.token, self.states, self.fail_runs, self.on_run = token, list(states), fail_runs, on_run
        self.requests: list[dict] = []
        self.experiments: dict[tuple[str, str], str] = {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                url = urlparse(self.path)
                request = {
                    "method": self.command,
                    "path": url.path,
                    "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                    "auth": self.headers.get("Authorization"),
                    "body": json.loads(self.rfile.read(length)) if length else None,
                }
                stand_in.requests.append(request)
                status, reply = stand_in.answer(request)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, request: dict) -> tuple[int, dict]:
        if self.token and request["auth"] != f"Bearer {self.token}":
            return 401, {"error": "Unauthenticated", "code": 16, "message": "request is not authenticated"}
        method, path = request["method"], request["path"]
        if path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if path == f"{API}/experiments" and method == "GET":
            name = json.loads(request["query"]["filter"])["predicates"][0]["stringValue"]
            key = (name, request["query"].get("namespace", ""))
            found = [{"experiment_id": self.experiments[key], "display_name": name}] if key in self.experiments else []
            return 200, {"experiments": found}
        if path == f"{API}/experiments" and method == "POST":
            key = (request["body"]["display_name"], request["body"].get("namespace") or "")
            self.experiments[key] = f"exp-{len(self.experiments) + 1}"
            return 200, {"experiment_id": self.experiments[key], **request["body"]}
        if path == f"{API}/runs" and method == "POST":
            if self.fail_runs:
                return self.fail_runs
            if self.on_run:
                self.on_run()
            return 200, {"run_id": "run-1", "experiment_id": request["body"]["experiment_id"], "state": "PENDING",
                         "display_name": request["body"]["display_name"]}
        if path == f"{API}/runs/run-1" and method == "GET":
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return 200, {"run_id": "run-1", "state": state}
        return 404, {"error": "Not Found", "code": 5, "message": f"no route {method} {path}"}

    def sent(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == API + path]

    def __enter__(self) -> "StandIn":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "data: {source: gs://bucket/adult/train.csv, test_source: gs://bucket/adult/test.csv, label: Y,\n"
        "       positive_labels: ['>50K'], sensitive_features: [sex]}\n"
        "train: {epochs: 3}\n"
        "mlflow: {tracking_uri: 'http://mlflow.kubeflow.svc:5000', model_name: adult}\n"
    )
    return path


def test_submit_uploads_the_package_with_the_configs_arguments(config, capsys, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "s3cret")
    with StandIn(token="s3cret") as api:
        code = main(["--config", str(config), "--host", api.url + "/", "--experiment", "nightly", "--run-name", "adult-3",
                     "--namespace", "team-a", "--token-env", "KFP_TOKEN", "--by", "alice", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out) == {  # stdout is the JSON alone: kfp's own "Run details" lines went to stderr
        "run_id": "run-1", "run_name": "adult-3", "experiment": "nightly", "experiment_id": "exp-1",
        "url": f"{api.url}/#/runs/details/run-1", "state": "PENDING", "finished": None,
    }
    assert all(r["auth"] == "Bearer s3cret" for r in api.requests)
    assert [r["body"] for r in api.sent("POST", "/experiments")] == [{"display_name": "nightly", "namespace": "team-a"}]
    ((run,),) = [[r["body"] for r in api.sent("POST", "/runs")]]
    assert run["display_name"] == "adult-3" and run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"] == {  # who submitted: the run's kfmlops.started_by (four-eyes)
        **PipelineConfig.from_yaml(config).pipeline_arguments(), "run_tags": {"kfmlops.started_by": "alice"}}
    spec = run["pipeline_spec"]
    spec = spec.get("pipeline_spec", spec)  # nested when the package carries a platform spec too
    assert spec == next(yaml.safe_load_all(PACKAGE.read_text()))


def test_wait_follows_the_run_and_a_token_file_is_reread(config, tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("first\n")

    def rotate():  # the kubelet replaces a projected token while the run goes on
        token.write_text("second\n")
        api.token = "second"

    with StandIn(token="first", states=["RUNNING", "RUNNING", "SUCCEEDED"], on_run=rotate) as api:
        api.experiments[("kfmlops", "")] = "exp-existing"
        code = main(["--config", str(config), "--host", api.url, "--token-file", str(token), "--wait", "--poll-interval", "0.01"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == f"run run-1 ended SUCCEEDED: {api.url}/#/runs/details/run-1\n"
    assert len(api.sent("GET", "/runs/run-1")) == 3 and not api.sent("POST", "/experiments")
    assert api.sent("POST", "/runs")[0]["body"]["experiment_id"] == "exp-existing"
    assert api.sent("POST", "/runs")[0]["body"]["display_name"].startswith("kfmlops-training-")
    assert len(api.sent("GET", "/healthz")) == 1  # no namespace given: kfp asks whether the install is multi-user


@pytest.mark.parametrize(
    ("states", "extra", "line"),
    [
        (["RUNNING", "FAILED"], [], "run run-1 ended FAILED: "),
        (["RUNNING"], ["--timeout", "0"], "run run-1 still RUNNING after 0 s (--timeout): "),
    ],
)
def test_wait_exits_1_unless_the_run_succeeds(config, capsys, states, extra, line):
    with StandIn(states=states) as api:
        code = main(["--config", str(config), "--host", api.url, "--wait", "--poll-interval", "0.01", *extra])
    out, _ = capsys.readouterr()
    assert code == 1 and out == f"{line}{api.url}/#/runs/details/run-1\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("stand_in", "host", "extra", "reason"),
    [
        (None, "ml-pipeline.kubeflow:8888", [], "bad host 'ml-pipeline.kubeflow:8888': give the Pipelines API as http(s)://"),
        (None, "http://127.0.0.1:{free}", [], "cannot reach Kubeflow Pipelines at http://127.0.0.1:{free}: "),
        (dict(token="t"), None, [], "answered HTTP 401 Unauthorized: request is not authenticated; pass a bearer token"),
        (dict(fail_runs=(500, {"error": "x", "code": 13, "message": "quota\nexceeded"})), None, [],
         "answered HTTP 500 Internal Server Error: quota exceeded"),
        (dict(), None, ["--token-env", "KFMLOPS_TEST_UNSET"], "--token-env KFMLOPS_TEST_UNSET: the variable is unset or empty"),
        (dict(), None, ["--token-file", "/nonexistent/token"], "--token-file /nonexistent/token: No such file or directory"),
    ],
)
def test_errors_are_one_line_and_exit_1(config, capsys, monkeypatch, stand_in, host, extra, reason):
    monkeypatch.delenv("KFMLOPS_TEST_UNSET", raising=False)
    free = _free_port()
    api = StandIn(**stand_in) if stand_in is not None else None
    with api or StandIn():
        host = host.format(free=free) if host else api.url
        code = main(["--config", str(config), "--host", host, *extra])
    _, err = capsys.readouterr()
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("kfmlops submit: ") and reason.format(free=free) in line
    if api and api.token:
        assert len(api.sent("GET", "/healthz")) == 1  # tried once, not kfp's five times five seconds


def test_a_package_that_does_not_take_the_arguments_is_refused_before_any_request(config, tmp_path, capsys):
    docs = list(yaml.safe_load_all(PACKAGE.read_text()))
    docs[0]["root"]["inputDefinitions"]["parameters"].pop("data")
    docs[0]["root"]["inputDefinitions"]["parameters"]["source"] = {"parameterType": "STRING"}
    stale = tmp_path / "stale.yaml"
    stale.write_text(yaml.safe_dump_all(docs))
    with StandIn() as api:
        code = main(["--config", str(config), "--host", api.url, "--package", str(stale)])
    _, err = capsys.readouterr()
    assert code == 1 and not api.requests
    assert "does not take these arguments (unknown: data; missing: source): recompile it" in err


def test_bad_config_exits_2_and_the_command_is_wired(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("data: {source: x.csv}\n")
    assert cli.main(["submit", "--config", str(tmp_path / "bad.yaml"), "--host", "http://127.0.0.1:1"]) == 2
    assert "data.label: Field required" in capsys.readouterr().err

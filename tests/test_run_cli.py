"""`kfmlops run` and `kfmlops` as a person types them: mistakes end with one line that says why."""

import json

import pytest

from conftest import ADULT
from kfmlops.cli import main as kfmlops
from kfmlops.local_run import main as run


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _config(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_a_label_the_data_lacks_is_refused_before_any_step_and_creates_nothing(home, capsys):
    config = _config(home, f"data: {{source: {ADULT / 'adult.data.gz'}, label: income}}\ningest: {{format: csv}}\n")
    assert run(["--config", config]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("kfmlops run failed before any step ran: IngestError: ")
    assert "missing columns ['income']" in last
    assert not (home / "home").exists()


def test_json_output_carries_the_same_reason(home, capsys):
    config = _config(home, f"data: {{source: {home / 'nowhere.csv'}, label: y}}\n")
    assert run(["--config", config, "--json"]) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["status"] == "failed" and "nowhere.csv" in summary["error"]["reason"]
    assert err.strip().splitlines()[-1].startswith("kfmlops run failed before any step ran: ")


def test_a_misspelled_setting_names_the_field(home, capsys):
    config = _config(home, f"data: {{source: {ADULT / 'adult.data.gz'}, lable: Y}}\n")
    assert run(["--config", config]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "data.lable" in last and "Extra inputs are not permitted" in last


def test_an_unknown_command_is_named(capsys):
    assert kfmlops(["bogus"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == "kfmlops: unknown command 'bogus'"

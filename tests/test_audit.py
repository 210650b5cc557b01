"""The audit log: real Ed25519 keys, real JSON Lines files in tmp_path, real processes appending."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
from pathlib import Path

import pytest

from kfmlops import audit, provenance
from kfmlops.audit import GENESIS_HASH, AuditConfig, AuditError, AuditRecord, Entry, Event
from kfmlops.cli import main as kfmlops
from kfmlops.config import MlflowConfig, ProvenanceConfig, Settings

EVENTS = [
    (Event.APPROVED, "3", "all gates passed"),
    (Event.ALIAS_MOVED, "3", "champion 2 -> 3"),
    (Event.DEPLOYED, "3", "canary healthy"),
    (Event.ROLLBACK, "2", "latency regression"),
    (Event.REJECTED, "4", "fairness gate failed"),
]


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return provenance.generate_keypair()


@pytest.fixture(scope="module")
def other_keys() -> tuple[bytes, bytes]:
    return provenance.generate_keypair()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """$KFMLOPS_HOME in tmp_path, no key in the environment: the development key pair applies."""
    monkeypatch.setenv("KFMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(provenance.SIGNING_KEY_ENV, raising=False)
    monkeypatch.delenv(provenance.VERIFY_KEY_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the registry is $KFMLOPS_HOME's (an earlier test may set it)
    return tmp_path / "home"


def _entry(event: Event = Event.APPROVED, version: str | None = "3", reason: str = "ok", **overrides) -> Entry:
    fields = dict(event=event, model="adult", version=version, actor="alice", reason=reason, details={"roc_auc": 0.91})
    return Entry(**(fields | overrides))


@pytest.fixture
def log(tmp_path, keys) -> Path:
    """A five-record log signed with ``keys``."""
    path = tmp_path / "audit" / "adult.jsonl"
    for event, version, reason in EVENTS:
        audit.append(path, _entry(event, version, reason), keys[0])
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def _kinds(result: audit.VerifyResult) -> list[tuple[str, int | None]]:
    return [(p.kind, p.seq) for p in result.problems]


def test_appended_records_form_a_signed_chain_that_verifies(log, keys):
    records = audit.read_log(log)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert [(r.event, r.version, r.reason) for r in records] == [(e.value, v, why) for e, v, why in EVENTS]
    assert records[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in records[1:]] == [audit.record_hash(r) for r in records[:-1]]
    assert {r.key_id for r in records} == {provenance.key_id(keys[1])}
    assert records[0].time.endswith("+00:00") and records[0].details == {"roc_auc": 0.91}
    assert all(json.loads(line) == dataclasses.asdict(r) for line, r in zip(_lines(log), records))

    result = audit.verify(log, keys[1])
    assert result.ok and result.records == 5 and result.problems == []


def test_an_edited_field_breaks_its_signature_and_the_next_link(log, keys):
    lines = _lines(log)
    edited = json.loads(lines[2]) | {"reason": "nothing to see here"}
    lines[2] = json.dumps(edited, sort_keys=True, separators=(",", ":")) + "\n"
    _write(log, lines)

    result = audit.verify(log, keys[1])
    assert _kinds(result) == [("signature", 3), ("chain", 4)]
    assert "seq 3" in result.problems[0].message and "changed after signing" in result.problems[0].message
    assert "seq 4" in result.problems[1].message and "hash of seq 3" in result.problems[1].message


def test_a_removed_middle_record_is_a_gap(log, keys):
    lines = _lines(log)
    del lines[2]
    _write(log, lines)

    result = audit.verify(log, keys[1])
    assert _kinds(result) == [("missing", 3)]
    assert str(result.problems[0]) == "line 3: seq 3 missing before seq 4: removed from the log"


def test_removed_records_at_the_start_are_a_gap_too(log, keys):
    _write(log, _lines(log)[2:])
    assert _kinds(audit.verify(log, keys[1])) == [("missing", 1)]
    assert "seq 1 to 2 missing" in audit.verify(log, keys[1]).problems[0].message


def test_swapped_records_are_out_of_order(log, keys):
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    _write(log, lines)

    result = audit.verify(log, keys[1])
    assert _kinds(result) == [("order", 2)]
    assert "seq 2 comes after seq 3" in result.problems[0].message


def test_a_truncated_last_line_is_reported_and_refuses_appends(log, keys):
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 40])

    result = audit.verify(log, keys[1])
    assert result.records == 4 and _kinds(result) == [("truncated", None)]
    assert result.problems[0].line == 5 and "after seq 4" in result.problems[0].message
    with pytest.raises(AuditError, match="cut short"):
        audit.append(log, _entry(), keys[0])


def test_a_corrupted_middle_line_is_malformed(log, keys):
    lines = _lines(log)
    lines[1] = "{not json\n"
    _write(log, lines)
    result = audit.verify(log, keys[1])
    assert _kinds(result) == [("malformed", None), ("missing", 2)]
    assert "after seq 1" in result.problems[0].message


def test_a_record_re_signed_with_another_key_is_named(log, keys, other_keys):
    lines = _lines(log)
    forged = audit.sign(AuditRecord.from_line(lines[1]), other_keys[0])
    lines[1] = forged.to_line()
    _write(log, lines)

    result = audit.verify(log, keys[1])
    assert _kinds(result) == [("key", 2), ("chain", 3)]
    assert f"seq 2 is signed by key {provenance.key_id(other_keys[1])}" in result.problems[0].message
    assert not audit.verify(log, other_keys[1]).ok  # the other key trusts none of the rest


def test_another_keys_signature_under_the_trusted_key_id_is_a_bad_signature(log, keys, other_keys):
    lines = _lines(log)
    forged = audit.sign(AuditRecord.from_line(lines[3]), other_keys[0])
    lines[3] = dataclasses.replace(forged, key_id=provenance.key_id(keys[1])).to_line()
    _write(log, lines)
    assert _kinds(audit.verify(log, keys[1])) == [("signature", 4)]


def test_a_duplicated_record_is_a_fork(log, keys):
    lines = _lines(log)
    _write(log, lines[:3] + [lines[2]] + lines[3:])
    result = audit.verify(log, keys[1])
    assert _kinds(result) == [("duplicate", 3)]
    assert "lines 3, 4" in result.problems[0].message


def test_entries_are_validated_before_anything_is_written(tmp_path, keys):
    with pytest.raises(AuditError, match="expected one of"):
        _entry(event="promoted")
    with pytest.raises(AuditError, match="JSON-safe"):
        _entry(details={"x": float("nan")})
    with pytest.raises(AuditError, match="actor"):
        _entry(actor="")
    with pytest.raises(AuditError, match="model name"):
        audit.log_path(AuditConfig(), "../etc/passwd")
    with pytest.raises(provenance.SigningKeyError):
        audit.append(tmp_path / "a.jsonl", _entry(), keys[1])  # a public key cannot sign
    assert not (tmp_path / "a.jsonl").exists()
    assert _entry(event="rollback", version=None).event is Event.ROLLBACK


def test_audit_config_locates_logs_under_kfmlops_home_by_default(home, tmp_path):
    assert audit.log_path(AuditConfig(), "adult") == home.resolve() / "audit" / "adult.jsonl"
    assert audit.log_path(AuditConfig(directory=str(tmp_path / "shared")), "adult") == tmp_path / "shared" / "adult.jsonl"
    with pytest.raises(ValueError, match="extra"):
        AuditConfig(folder="x")


@pytest.fixture
def registered(home) -> Settings:
    """Settings whose sqlite registry (under $KFMLOPS_HOME, where the CLI looks) holds model 'adult'."""
    from kfmlops.tracking import client

    settings = Settings(mlflow=MlflowConfig(tracking_uri=f"sqlite:///{home / 'mlflow.db'}", model_name="adult"))
    home.mkdir(parents=True, exist_ok=True)
    client(settings.mlflow).create_registered_model("adult")
    return settings


def test_log_event_signs_with_the_provenance_key_and_records_the_head_in_the_registry(registered, home):
    first = audit.log_event(registered, _entry(Event.APPROVED))
    stored = audit.log_event(registered, _entry(Event.DEPLOYED))
    assert (first.seq, stored.seq, stored.event) == (1, 2, "deployed")
    head = audit.registry_head(registered.mlflow, "adult")
    assert head == audit.Head(2, audit.record_hash(stored))
    assert audit.verify(home / "audit" / "adult.jsonl", provenance.verify_key(ProvenanceConfig()), head).ok


def test_records_cut_from_the_end_fail_against_the_registrys_head(registered, home, capsys):
    for event, version, reason in EVENTS:
        audit.log_event(registered, _entry(event, version, reason))
    path = home / "audit" / "adult.jsonl"
    public = provenance.verify_key(ProvenanceConfig())
    head = audit.registry_head(registered.mlflow, "adult")
    path.write_text("".join(_lines(path)[:3]))  # a clean cut: the file alone still verifies
    assert audit.verify(path, public).ok
    (problem,) = audit.verify(path, public, head).problems
    assert problem.kind == "missing" and "records seq 5 as appended, but the log ends at seq 3" in problem.message
    assert kfmlops(["audit", "verify", "--model", "adult"]) == 1  # the CLI finds the registry under $KFMLOPS_HOME
    assert "removed from its end" in capsys.readouterr().out
    wrong = audit.Head(3, "f" * 64)
    assert [p.kind for p in audit.verify(path, public, wrong).problems] == ["chain"]


def _append_many(path: str, private_pem: bytes, worker: int, count: int, start) -> None:
    start.wait()
    for i in range(count):
        audit.append(path, _entry(reason=f"worker {worker} event {i}", actor=f"worker-{worker}"), private_pem)


def test_concurrent_appenders_in_separate_processes_keep_one_chain(tmp_path, keys):
    path, workers, count = tmp_path / "adult.jsonl", 4, 15
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(workers)
    processes = [context.Process(target=_append_many, args=(str(path), keys[0], w, count, start)) for w in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * workers

    result = audit.verify(path, keys[1])
    assert result.ok, [str(p) for p in result.problems]
    records = audit.read_log(path)
    assert [r.seq for r in records] == list(range(1, workers * count + 1))
    assert sorted(r.reason for r in records) == sorted(f"worker {w} event {i}" for w in range(workers) for i in range(count))
    assert len({r.actor for r in records[: count + 1]}) > 1, "the appenders did not interleave"


def test_cli_show_prints_one_line_per_record_or_json(home, keys, capsys):
    path = home / "audit" / "adult.jsonl"
    audit.append(path, _entry(Event.ALIAS_MOVED, "3", "champion 2 -> 3"), keys[0])
    audit.append(path, _entry(Event.ROLLBACK, "2", "latency regression", actor="bob"), keys[0])

    assert kfmlops(["audit", "show", "--model", "adult"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].split()[:1] + lines[1].split()[2:] == ["2", "rollback", "adult", "v2", "bob", "latency", "regression"]

    assert kfmlops(["audit", "show", "--path", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(r["seq"], r["event"], r["actor"]) for r in shown] == [(1, "alias_moved", "alice"), (2, "rollback", "bob")]

    assert kfmlops(["audit", "show"]) == 0  # every log in $KFMLOPS_HOME/audit
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_cli_verify_exit_codes_and_output(home, tmp_path, keys, other_keys, capsys):
    dev = provenance.signing_key(ProvenanceConfig())
    path = home / "audit" / "adult.jsonl"
    for event, version, reason in EVENTS:
        audit.append(path, _entry(event, version, reason), dev)

    assert kfmlops(["audit", "verify"]) == 0  # the development key, every log
    out = capsys.readouterr().out
    assert out.startswith(f"OK {path}: 5 records") and provenance.key_id(provenance.verify_key(ProvenanceConfig())) in out

    other = tmp_path / "other.pem"
    other.write_bytes(other_keys[1])
    assert kfmlops(["audit", "verify", "--model", "adult", "--verify-key-file", str(other)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAILED {path}: 5 problems") and "seq 1 is signed by key" in out

    lines = _lines(path)
    del lines[3]
    _write(path, lines)
    assert kfmlops(["audit", "verify", "--path", str(path), "--json"]) == 1
    [result] = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and result["records"] == 4
    assert result["problems"] == [
        {"line": 4, "seq": 4, "kind": "missing", "message": "seq 4 missing before seq 5: removed from the log"}
    ]

    assert kfmlops(["audit", "verify", "--model", "nope"]) == 1
    assert "no audit log at" in capsys.readouterr().err
    path.unlink()
    assert kfmlops(["audit", "verify"]) == 1
    assert "no audit logs to verify" in capsys.readouterr().err

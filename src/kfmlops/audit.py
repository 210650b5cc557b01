"""A tamper-evident audit log of governance events: who moved which model where, when and why.

Each model has one append-only JSON Lines file, ``<directory>/<model>.jsonl`` (default directory:
``$KFMLOPS_HOME/audit``, beside the local registry store; see :class:`AuditConfig`). Every line is
one :class:`AuditRecord`: a sequence number (1, 2, ...), the UTC time, the :class:`Event`, the model
name and version, the actor, the reason, a details mapping, ``prev_hash`` (the SHA-256 of the
previous record's canonical bytes, :data:`GENESIS_HASH` for the first) and an Ed25519 signature by
the project's provenance key (:func:`kfmlops.provenance.signing_key`) over the record's canonical
bytes (sorted-key compact JSON of every field but the signature).

:func:`append` (or :func:`log_event`, which finds the file and the key from config) adds a record under
an exclusive ``fcntl`` lock on ``<model>.jsonl.lock``, so appenders in separate processes take turns
and never fork the chain; the new file is written beside the old one, fsync'd and renamed over it
(:func:`kfmlops.durable.atomic_path`), so a crash leaves the old log or the new one, never half a line.

:func:`verify` checks a log against the trusted public key and lists every problem it finds (see
:class:`Problem`): an edited record (its signature, and the next record's ``prev_hash``, no longer
match), a removed record (a sequence gap), reordered or duplicated records, a cut-short last line,
a record signed by another key. A clean cut that removes whole records from the end is not
detectable from the file alone, so :func:`log_event` also records each new head (seq and hash) on
the registered model in the registry (:func:`anchor`), and :func:`verify`, given that head, reports
a log that ends before it.

``kfmlops audit show`` prints the records; ``kfmlops audit verify`` checks them, against the heads the
registry records where it has them, and exits 1 on any problem (see :func:`main`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kfmlops.config import AuditConfig, MlflowConfig, ProvenanceConfig, Settings
from kfmlops.durable import atomic_path
from kfmlops.provenance import SigningKeyError, _private_key, _public_key, key_id, signing_key, verify_key
from kfmlops.tracking import kfmlops_home

AUDIT_DIR = "audit"
HEAD_TAG = "kfmlops.audit.head"
"""On the registered model: ``SEQ:SHA256`` of the last record appended to its log (see :func:`anchor`)."""
GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of a log's first record."""

# Signatures cover this prefix plus the canonical record, so an audit signature cannot be passed off
# as a provenance signature (or anything else) made with the same key, nor the other way round.
_SIGNING_CONTEXT = b"kfmlops.audit.v1\x00"
# The registered-model names MlflowConfig.model_name accepts: no path separators, no leading dot.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class AuditError(ValueError):
    """An audit log cannot be read or appended to, or an entry is invalid; the message says what and where."""


class Event(StrEnum):
    """What happened to a model version."""

    ALIAS_MOVED = "alias_moved"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    ROLLBACK = "rollback"
    DEPLOYED = "deployed"


def actor(given: str | None = None) -> str:
    """Who acts: ``given`` (a ``--by`` flag), else ``$KFMLOPS_ACTOR``, else the Kubernetes service
    account the pod runs as (``system:serviceaccount:NAMESPACE:NAME``, from ``$KFMLOPS_SERVICE_ACCOUNT``
    and the mounted namespace), else the login name."""
    import getpass

    if given:
        return given
    if os.environ.get("KFMLOPS_ACTOR"):
        return os.environ["KFMLOPS_ACTOR"]
    namespace = Path(SERVICE_ACCOUNT_NAMESPACE)
    if os.environ.get("KFMLOPS_SERVICE_ACCOUNT") and namespace.is_file():
        return f"system:serviceaccount:{namespace.read_text().strip()}:{os.environ['KFMLOPS_SERVICE_ACCOUNT']}"
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry (a container's 10001)
        return f"uid:{os.getuid()}"


def audit_dir(config: AuditConfig) -> Path:
    """The folder of the audit logs: ``config.directory``, else ``$KFMLOPS_HOME/audit``; creates nothing."""
    return Path(config.directory) if config.directory else kfmlops_home() / AUDIT_DIR


def log_path(config: AuditConfig, model: str) -> Path:
    """The audit log of registered model ``model``: ``<audit_dir>/<model>.jsonl``; a name that is not
    a registered-model name (a path separator, a leading dot) raises :class:`AuditError`."""
    return audit_dir(config) / f"{_model_name(model)}.jsonl"


def _model_name(model: str) -> str:
    if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
        raise AuditError(f"model name {model!r}: expected letters, digits, '_', '.' or '-', starting with a letter or digit")
    return model


@dataclass(frozen=True, kw_only=True)
class Entry:
    """What to record, before it gets its place in the log: the event, the model and version, who
    did it and why, and any JSON-safe ``details`` (from/to versions, gate verdicts, a deploy's
    status...). ``event`` may be given as its string value. Construction validates every field and
    raises :class:`AuditError` naming it."""

    event: Event
    model: str
    version: str | None
    actor: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "event", Event(self.event))
        except ValueError:
            raise AuditError(f"audit event {self.event!r}: expected one of {[e.value for e in Event]}") from None
        _model_name(self.model)
        if self.version is not None and not isinstance(self.version, str):
            raise AuditError(f"audit version: expected a string or None, got {self.version!r}")
        if not isinstance(self.actor, str) or not self.actor:
            raise AuditError(f"audit actor: expected a non-empty string, got {self.actor!r}")
        if not isinstance(self.reason, str):
            raise AuditError(f"audit reason: expected a string, got {self.reason!r}")
        if not isinstance(self.details, dict):
            raise AuditError(f"audit details: expected a mapping, got {type(self.details).__name__}")
        try:
            json.dumps(self.details, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"audit details are not JSON-safe: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """One line of an audit log; ``time`` is ISO-8601 UTC, ``key_id`` the signing key's id
    (:func:`kfmlops.provenance.key_id`) and ``signature`` base64 Ed25519 over :meth:`canonical_bytes`."""

    seq: int
    time: str
    event: str
    model: str
    version: str | None
    actor: str
    reason: str
    details: dict[str, Any]
    prev_hash: str
    key_id: str
    signature: str

    def canonical_bytes(self) -> bytes:
        """What is signed and hashed: every field but ``signature`` as sorted-key, compact, ASCII JSON."""
        fields = dataclasses.asdict(self)
        del fields["signature"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")

    def to_line(self) -> str:
        """The record as it is stored: one line of sorted-key compact JSON, newline included."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"

    @classmethod
    def from_line(cls, line: bytes | str) -> "AuditRecord":
        """Parse one stored line; raises :class:`AuditError` when it is not JSON or not a record
        (a missing or unknown field, a field of the wrong type)."""
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise AuditError(f"not a JSON record ({exc})") from None
        if not isinstance(raw, dict):
            raise AuditError(f"expected a JSON object, got {type(raw).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        if raw.keys() != names:
            found = sorted(raw)
            raise AuditError(f"expected fields {sorted(names)}, got {found}")
        if isinstance(raw["seq"], bool) or not isinstance(raw["seq"], int) or raw["seq"] < 1:
            raise AuditError(f"seq: expected a positive integer, got {raw['seq']!r}")
        bad = sorted(n for n in names - {"seq", "version", "details"} if not isinstance(raw[n], str))
        if raw["version"] is not None and not isinstance(raw["version"], str):
            bad.append("version")
        if bad:
            raise AuditError(f"seq {raw['seq']}: fields {bad} must be strings")
        if not isinstance(raw["details"], dict):
            raise AuditError(f"seq {raw['seq']}: details must be a JSON object")
        record = cls(**raw)
        try:
            record.canonical_bytes()
        except ValueError as exc:
            raise AuditError(f"seq {raw['seq']}: not JSON-safe ({exc})") from None
        return record


def record_hash(record: AuditRecord) -> str:
    """The SHA-256 hex digest of ``record``'s canonical bytes: the next record's ``prev_hash``."""
    return hashlib.sha256(record.canonical_bytes()).hexdigest()


def sign(record: AuditRecord, private_key_pem: bytes | str) -> AuditRecord:
    """``record`` with ``key_id`` set to the Ed25519 private key's (PEM) id and ``signature`` made
    over the resulting canonical bytes; a key that is not Ed25519 raises :class:`SigningKeyError`."""
    private = _private_key(private_key_pem)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    unsigned = dataclasses.replace(record, key_id=key_id(public_pem), signature="")
    signature = private.sign(_SIGNING_CONTEXT + unsigned.canonical_bytes())
    return dataclasses.replace(unsigned, signature=base64.b64encode(signature).decode("ascii"))


def append(path: str | os.PathLike, entry: Entry, private_key_pem: bytes | str) -> AuditRecord:
    """Add ``entry`` to the log at ``path`` (created with its folder when absent), signed with the
    Ed25519 private key (PEM); produces the stored :class:`AuditRecord`.

    Holds an exclusive lock on ``<path>.lock`` from reading the last record to renaming the new log
    into place, so concurrent appenders, in any process or thread, get consecutive sequence numbers
    on one chain. A log whose last line is cut short or is not a record raises :class:`AuditError`
    (run :func:`verify`): nothing is chained onto a record that cannot be read.
    """
    path = Path(path)
    _private_key(private_key_pem)  # a bad key fails before the log is touched
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        data = path.read_bytes() if path.exists() else b""
        seq, prev_hash = _next_link(path, data)
        stored = sign(
            AuditRecord(
                seq=seq, time=datetime.now(timezone.utc).isoformat(timespec="seconds"), event=entry.event.value,
                model=entry.model, version=entry.version, actor=entry.actor, reason=entry.reason,
                details=entry.details, prev_hash=prev_hash, key_id="", signature="",
            ),
            private_key_pem,
        )
        with atomic_path(path) as temporary:
            temporary.write_bytes(data + stored.to_line().encode("ascii"))
    return stored


def log_event(settings: Settings, entry: Entry) -> AuditRecord:
    """:func:`append` ``entry`` to its model's log (:func:`log_path` under ``settings.audit``), signed
    with the provenance signing key (:func:`kfmlops.provenance.signing_key`), then record the new
    head in the registry (:func:`anchor`); produces the stored record."""
    stored = append(log_path(settings.audit, entry.model), entry, signing_key(settings.provenance))
    anchor(settings.mlflow, stored)
    return stored


@dataclass(frozen=True)
class Head:
    """The last record a log is known to hold, as recorded outside the log: its ``seq`` and hash."""

    seq: int
    hash: str

    def to_tag(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def from_tag(cls, value: str) -> "Head":
        seq, _, digest = value.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise AuditError(f"registry tag {HEAD_TAG}={value!r}: expected SEQ:SHA256")
        return cls(int(seq), digest)


def anchor(mlflow_config: MlflowConfig, record: AuditRecord) -> None:
    """Record ``record`` as its log's head on the registered model (tag :data:`HEAD_TAG`), so that
    :func:`verify` given that head catches records cut from the end of the log, which the file
    alone cannot show. Concurrent appenders may leave an older head: it stays a lower bound."""
    from kfmlops.tracking import client

    client(mlflow_config).set_registered_model_tag(record.model, HEAD_TAG, Head(record.seq, record_hash(record)).to_tag())


def registry_head(mlflow_config: MlflowConfig, model: str) -> Head | None:
    """The head the registry records for ``model``'s log; None when it records none."""
    from kfmlops.tracking import client

    value = (client(mlflow_config).get_registered_model(model).tags or {}).get(HEAD_TAG)
    return Head.from_tag(value) if value else None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _next_link(path: Path, data: bytes) -> tuple[int, str]:
    """The sequence number and ``prev_hash`` of the record that follows ``data``'s last line."""
    if not data:
        return 1, GENESIS_HASH
    if not data.endswith(b"\n"):
        raise AuditError(f"{path}: the last line is cut short; run `kfmlops audit verify --path {path}` before appending")
    lines = data[:-1].split(b"\n")
    try:
        last = AuditRecord.from_line(lines[-1])
    except AuditError as exc:
        raise AuditError(f"{path}: line {len(lines)}: {exc}; run `kfmlops audit verify` before appending") from None
    return last.seq + 1, record_hash(last)


def read_log(path: str | os.PathLike) -> list[AuditRecord]:
    """Every record of the log at ``path``, in file order, without checking signatures or the chain
    (that is :func:`verify`); a missing file or a line that is not a record raises :class:`AuditError`."""
    path = Path(path)
    data = _read(path)
    records = []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            records.append(AuditRecord.from_line(line))
        except AuditError as exc:
            raise AuditError(f"{path}: line {number}: {exc}") from None
    return records


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AuditError(f"no audit log at {path}") from None


ProblemKind = Literal["malformed", "truncated", "key", "signature", "chain", "missing", "order", "duplicate"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a log: the 1-based ``line`` it shows on, the ``seq`` it is about (None
    when the line holds no readable record), its ``kind`` and a message naming the sequence numbers."""

    line: int
    seq: int | None
    kind: ProblemKind
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify` found in the log at ``path``: how many lines held readable records, the
    trusted key's id, and every :class:`Problem`, by line; ``ok`` when there are none."""

    path: Path
    records: int
    key_id: str
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-safe data: path, records, key_id, ok and the problems' fields."""
        return {"path": str(self.path), "records": self.records, "key_id": self.key_id, "ok": self.ok,
                "problems": [dataclasses.asdict(p) for p in self.problems]}


def verify(path: str | os.PathLike, public_key_pem: bytes | str, head: Head | None = None) -> VerifyResult:
    """Check the log at ``path`` against the trusted Ed25519 public key (PEM).

    Every line must hold a record (else ``malformed``; a last line without its newline is
    ``truncated``), signed by this key (``key``) with a signature that matches it (``signature``).
    Sequence numbers must run 1, 2, ... in file order with none absent (``missing``), none twice
    (``duplicate``) and none after a higher one (``order``); each record's ``prev_hash`` must be the
    hash of the record one before it in sequence, or :data:`GENESIS_HASH` for seq 1 (``chain``).
    Given the ``head`` recorded outside the log (:func:`registry_head`), the log must reach it:
    ending before its seq is ``missing`` (records cut from the end), a different record at its seq
    is ``chain``. Produces a :class:`VerifyResult` with every problem found; a missing file or a malformed key
    raises (:class:`AuditError`, :class:`SigningKeyError`).
    """
    path = Path(path)
    trusted = key_id(public_key_pem)
    public = _public_key(public_key_pem)
    lines = _read(path).split(b"\n")
    cut = lines.pop()  # empty when the file ends with a newline
    problems: list[Problem] = []
    records: list[tuple[int, AuditRecord]] = []
    for number, line in enumerate(lines, 1):
        try:
            records.append((number, AuditRecord.from_line(line)))
        except AuditError as exc:
            problems.append(Problem(number, None, "malformed", f"{_after(records)}: {exc}"))
    if cut:
        problems.append(Problem(len(lines) + 1, None, "truncated", "the last line is cut short (no newline at the end "
                                f"of the file): the record {_after(records)} is incomplete"))
    for number, rec in records:
        problems += _signature_problems(number, rec, public, trusted)
    problems += _sequence_problems(records)
    if head is not None:
        problems += _head_problems(records, head, len(lines))
    return VerifyResult(path, len(records), trusted, sorted(problems, key=lambda p: p.line))


def _head_problems(records: list[tuple[int, AuditRecord]], head: Head, last_line: int) -> list[Problem]:
    at = [(number, rec) for number, rec in records if rec.seq == head.seq]
    if not at:
        ends = max((rec.seq for _, rec in records), default=0)
        return [Problem(last_line, None, "missing", f"the registry records seq {head.seq} as appended, but the log ends "
                        f"at seq {ends}: records were removed from its end")]
    number, rec = at[-1]
    if record_hash(rec) != head.hash:
        return [Problem(number, rec.seq, "chain", f"seq {rec.seq} is not the record the registry recorded as appended")]
    return []


def _after(records: list[tuple[int, AuditRecord]]) -> str:
    return f"after seq {records[-1][1].seq}" if records else "at the start of the log"


def _signature_problems(number: int, rec: AuditRecord, public: Ed25519PublicKey, trusted: str) -> list[Problem]:
    if rec.key_id != trusted:
        return [Problem(number, rec.seq, "key",
                        f"seq {rec.seq} is signed by key {rec.key_id}, not by the verify key {trusted}")]
    try:
        public.verify(base64.b64decode(rec.signature, validate=True), _SIGNING_CONTEXT + rec.canonical_bytes())
    except (binascii.Error, InvalidSignature):
        return [Problem(number, rec.seq, "signature",
                        f"seq {rec.seq}: the signature does not match the record: it was changed after signing")]
    return []


def _sequence_problems(records: list[tuple[int, AuditRecord]]) -> list[Problem]:
    """Duplicate, out-of-order and missing sequence numbers, and broken ``prev_hash`` links, of
    ``(line number, record)`` pairs in file order."""
    by_seq: dict[int, list[int]] = {}
    for number, rec in records:
        by_seq.setdefault(rec.seq, []).append(number)
    return _duplicates(by_seq) + _out_of_order(records, by_seq) + _gaps(by_seq) + _broken_links(records, by_seq)


def _duplicates(by_seq: dict[int, list[int]]) -> list[Problem]:
    return [
        Problem(number, seq, "duplicate",
                f"seq {seq} appears more than once (lines {', '.join(map(str, numbers))}): the chain forked")
        for seq, numbers in by_seq.items() for number in numbers[1:]
    ]


def _out_of_order(records: list[tuple[int, AuditRecord]], by_seq: dict[int, list[int]]) -> list[Problem]:
    problems, highest = [], 0
    for number, rec in records:
        if rec.seq < highest and len(by_seq[rec.seq]) == 1:
            problems.append(Problem(number, rec.seq, "order",
                                    f"seq {rec.seq} comes after seq {highest}: the records are out of order"))
        highest = max(highest, rec.seq)
    return problems


def _gaps(by_seq: dict[int, list[int]]) -> list[Problem]:
    problems, previous = [], 0
    for seq in sorted(by_seq):
        if seq > previous + 1:
            gap = f"seq {previous + 1}" if seq == previous + 2 else f"seq {previous + 1} to {seq - 1}"
            problems.append(Problem(by_seq[seq][0], previous + 1, "missing",
                                    f"{gap} missing before seq {seq}: removed from the log"))
        previous = seq
    return problems


def _broken_links(records: list[tuple[int, AuditRecord]], by_seq: dict[int, list[int]]) -> list[Problem]:
    """Records whose ``prev_hash`` is not the hash of the (single) record one before them in sequence."""
    hashes = {rec.seq: record_hash(rec) for _, rec in records if len(by_seq[rec.seq]) == 1}
    problems = []
    for number, rec in records:
        expected = GENESIS_HASH if rec.seq == 1 else hashes.get(rec.seq - 1)
        if expected is not None and rec.prev_hash != expected:
            before = "the genesis value" if rec.seq == 1 else f"the hash of seq {rec.seq - 1}"
            problems.append(Problem(number, rec.seq, "chain", f"seq {rec.seq}: prev_hash is not {before}: the chain is broken there"))
    return problems


def main(argv: list[str] | None = None) -> int:
    """``kfmlops audit show|verify``: 0 on success; 1 on any problem, or with a one-line reason."""
    parser = argparse.ArgumentParser(prog="kfmlops audit", description=__doc__.splitlines()[0])
    which = argparse.ArgumentParser(add_help=False)
    group = which.add_mutually_exclusive_group()
    group.add_argument("--model", help="the registered model whose log to read (default: every log in $KFMLOPS_HOME/audit)")
    group.add_argument("--path", help="an audit log file")
    which.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("show", parents=[which], help="the records, one line each (signatures are not checked: see verify)")
    check = sub.add_parser("verify", parents=[which], help="check signatures, sequence and chain; exit 1 on any problem")
    check.add_argument("--verify-key-file", help="PEM public key (default: $KFMLOPS_VERIFY_KEY, else the development key)")
    check.add_argument("--tracking-uri", help="the registry whose recorded heads the logs must reach (default: "
                       "$MLFLOW_TRACKING_URI, else $KFMLOPS_HOME's store)")
    args = parser.parse_args(argv)
    try:
        paths = _logs(args.model, args.path)
        if args.action == "show":
            records = [r for p in paths for r in read_log(p)]
            print(json.dumps([dataclasses.asdict(r) for r in records]) if args.json else _show_text(records))
            return 0
        if not paths:
            raise AuditError(f"no audit logs to verify in {audit_dir(AuditConfig())}: pass --path or --model")
        public = verify_key(ProvenanceConfig(verify_key_file=args.verify_key_file))
        heads = _heads(args.tracking_uri, [p.stem for p in paths])
        results = [verify(p, public, heads.get(p.stem)) for p in paths]
    except (AuditError, SigningKeyError) as exc:
        print(f"kfmlops audit: {exc}", file=sys.stderr)
        return 1
    print(json.dumps([r.to_dict() for r in results]) if args.json else "\n".join(map(_verify_text, results)))
    return 0 if all(r.ok for r in results) else 1


def _heads(tracking_uri: str | None, models: list[str]) -> dict[str, Head]:
    """The heads the registry records for ``models`` (none for a model it does not hold, or when
    there is no registry at all: only the files are checked then)."""
    from mlflow.exceptions import MlflowException

    from kfmlops.registry import RegistryError, registry_uri

    try:
        config = MlflowConfig(tracking_uri=registry_uri(MlflowConfig(), tracking_uri))
    except RegistryError:
        return {}
    heads = {}
    for model in models:
        try:
            head = registry_head(config, model)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            continue
        if head:
            heads[model] = head
    return heads


def _logs(model: str | None, path: str | None) -> list[Path]:
    """The logs the command reads: ``path``, ``model``'s log, or every log in the default folder."""
    if path:
        return [Path(path)]
    if model:
        return [log_path(AuditConfig(), model)]
    return sorted(audit_dir(AuditConfig()).glob("*.jsonl"))


def _show_text(records: list[AuditRecord]) -> str:
    return "\n".join(
        f"{r.seq:>5}  {r.time}  {r.event:<11}  {r.model}{f' v{r.version}' if r.version else ''}  {r.actor}  {r.reason}"
        for r in records
    ) or "no records"


def _verify_text(result: VerifyResult) -> str:
    if result.ok:
        return f"OK {result.path}: {result.records} records, chain unbroken, all signed by key {result.key_id}"
    count = len(result.problems)
    lines = [f"FAILED {result.path}: {count} problem{'s' * (count != 1)} in {result.records} records"]
    return "\n".join(lines + [f"  {p}" for p in result.problems])

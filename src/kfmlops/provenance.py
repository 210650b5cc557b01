"""Signed model provenance: what a model was built from, which gates it passed, and proof of both.

A :class:`Provenance` record names the model, the data fingerprint, the code commit, the config
hash, the pipeline run, the evaluation metrics, every gate verdict, the SHA-256 of every model file
and the data-residency verdicts. :func:`sign` signs its canonical bytes (JSON, sorted keys, no
whitespace) with an Ed25519 key; :func:`sign_model_dir` fills the file digests and writes the signed
record to ``provenance.json`` beside the model files (it is left out of its own digests).

Before a model is served, :func:`verify` checks the signature against the deployment's public key,
recomputes the file digests (a changed byte, an added or a removed file is refused) and, by default,
that every gate passed. Each failure raises a :class:`ProvenanceError` subclass naming what is
wrong. Keys come from a mounted Secret file or an environment variable (:func:`load_private_key`,
:func:`load_public_key`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kfmlops.durable import write_text_atomically

if TYPE_CHECKING:
    from kfmlops.config import ProvenanceConfig

PROVENANCE_FILE = "provenance.json"
SIGNING_KEY_ENV = "KFMLOPS_SIGNING_KEY"
VERIFY_KEY_ENV = "KFMLOPS_VERIFY_KEY"

# Signatures cover this prefix plus the canonical record, so they cannot be replayed as signatures
# over anything else made with the same key.
_SIGNING_CONTEXT = b"kfmlops.provenance.v1\x00"


class ProvenanceError(ValueError):
    """Provenance is missing, malformed or does not match the model; the message says what and where."""


class SigningKeyError(ProvenanceError):
    """A signing or verify key is missing or is not an Ed25519 PEM key."""


class UnsignedModelError(ProvenanceError):
    """The model directory holds no ``provenance.json``."""


class SignatureError(ProvenanceError):
    """The signature is invalid for the record, or was made by another key than the one given."""


class TamperedArtifactError(ProvenanceError):
    """The model files differ from the digests in the signed record.

    ``changed``, ``missing`` and ``extra`` list the relative paths of each kind of difference.
    """

    def __init__(self, message: str, *, changed: list[str], missing: list[str], extra: list[str]):
        super().__init__(message)
        self.changed = changed
        self.missing = missing
        self.extra = extra


class UnblessedModelError(ProvenanceError):
    """At least one gate in the record did not pass; ``failed`` maps each such gate to its reasons."""

    def __init__(self, message: str, *, failed: dict[str, list[str]]):
        super().__init__(message)
        self.failed = failed


def digest_tree(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every regular file under the directory ``path``.

    Consumes a directory (the directory itself may be reached through a link). Produces
    ``{relative posix path: hex digest}`` sorted by path. Files are hashed in streamed chunks, so
    memory does not grow with file size. A top-level ``provenance.json`` is left out (it holds the
    digests). A symlink, or anything that is not a regular file or directory, anywhere under
    ``path`` raises :class:`ProvenanceError`, since what it points to could change after signing.
    """
    root = Path(path)
    if not root.is_dir():
        raise ProvenanceError(f"model directory not found: {root}")
    digests: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=_raise_walk_error):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            mode = full.lstat().st_mode
            rel = full.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise ProvenanceError(f"{root}: {rel} is a symlink; model directories must hold regular files only")
            if stat.S_ISDIR(mode) or (rel == PROVENANCE_FILE and stat.S_ISREG(mode)):
                continue
            if not stat.S_ISREG(mode):
                raise ProvenanceError(f"{root}: {rel} is not a regular file")
            with open(full, "rb") as f:
                digests[rel] = hashlib.file_digest(f, "sha256").hexdigest()
    return dict(sorted(digests.items()))


def _raise_walk_error(exc: OSError) -> None:
    raise ProvenanceError(f"cannot read {exc.filename}: {exc.strerror}") from exc


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """What a model is and how it was made; every field is JSON-safe.

    ``gates`` maps a gate name to ``{"passed": bool, "reasons": [str, ...]}`` (further keys are
    kept). ``artifacts`` maps each model file's relative path to its SHA-256 (see
    :func:`digest_tree`). ``residency`` holds the residency policy and verdicts
    (``kfmlops.residency.residency_record``). ``created_at`` is an ISO-8601 UTC timestamp, now by
    default. Construction validates every field and raises :class:`ProvenanceError` naming the field.
    """

    model_name: str
    model_version: str | None = None
    dataset_fingerprint: str
    code_commit: str | None = None
    config_hash: str
    pipeline_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    residency: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=_utc_now)

    def __post_init__(self) -> None:
        for name in ("model_name", "dataset_fingerprint", "config_hash", "created_at"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ProvenanceError(f"provenance.{name}: expected a non-empty string, got {getattr(self, name)!r}")
        for name in ("model_version", "code_commit", "pipeline_run_id"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ProvenanceError(f"provenance.{name}: expected a string or null, got {getattr(self, name)!r}")
        for name in ("metrics", "gates", "artifacts", "residency"):
            if not isinstance(getattr(self, name), dict):
                raise ProvenanceError(f"provenance.{name}: expected a mapping, got {type(getattr(self, name)).__name__}")
        metrics = {}
        for key, value in self.metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ProvenanceError(f"provenance.metrics.{key}: expected a finite number, got {value!r}")
            metrics[key] = float(value)
        object.__setattr__(self, "metrics", metrics)
        for gate, verdict in self.gates.items():
            if (
                not isinstance(verdict, dict)
                or not isinstance(verdict.get("passed"), bool)
                or not isinstance(verdict.get("reasons"), list)
            ):
                raise ProvenanceError(
                    f"provenance.gates.{gate}: expected {{'passed': bool, 'reasons': [...]}}, got {verdict!r}"
                )
        for rel, digest in self.artifacts.items():
            if not isinstance(digest, str) or len(digest) != 64:
                raise ProvenanceError(f"provenance.artifacts.{rel}: expected a SHA-256 hex digest, got {digest!r}")
        try:
            stamp = datetime.fromisoformat(self.created_at)
        except ValueError:
            raise ProvenanceError(f"provenance.created_at: not an ISO-8601 timestamp: {self.created_at!r}") from None
        if stamp.utcoffset() is None or stamp.utcoffset().total_seconds() != 0:
            raise ProvenanceError(f"provenance.created_at: expected a UTC timestamp, got {self.created_at!r}")
        try:
            self.canonical_bytes()
        except (TypeError, ValueError) as exc:
            raise ProvenanceError(f"provenance is not JSON-safe: {exc}") from None

    def canonical_bytes(self) -> bytes:
        """The signed form: UTF-8 JSON with sorted keys and no whitespace."""
        return self.to_json().encode("utf-8")

    def to_json(self) -> str:
        """The record as canonical JSON text (sorted keys, no whitespace, ASCII only)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Provenance":
        """Parse :meth:`to_json` output (or the same object with any layout); unknown or missing fields raise."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ProvenanceError(f"provenance record is not valid JSON: {exc}") from None
        return cls._from_dict(raw)

    @classmethod
    def _from_dict(cls, raw: Any) -> "Provenance":
        if not isinstance(raw, dict):
            raise ProvenanceError(f"provenance record: expected a JSON object, got {type(raw).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        if unknown := sorted(raw.keys() - names):
            raise ProvenanceError(f"provenance record: unknown fields {unknown}")
        if missing := sorted(required - raw.keys()):
            raise ProvenanceError(f"provenance record: missing fields {missing}")
        return cls(**raw)


@dataclass(frozen=True)
class SignedProvenance:
    """A :class:`Provenance` record, its base64 Ed25519 signature and the signing key's id (see :func:`key_id`)."""

    record: Provenance
    signature: str
    key_id: str

    def to_json(self) -> str:
        """The signed record as indented JSON with sorted keys (the layout of ``provenance.json``)."""
        doc = {"record": dataclasses.asdict(self.record), "signature": self.signature, "key_id": self.key_id}
        return json.dumps(doc, sort_keys=True, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> "SignedProvenance":
        """Parse :meth:`to_json` output; raises :class:`ProvenanceError` when it is not a signed record."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ProvenanceError(f"signed provenance is not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or set(raw) != {"record", "signature", "key_id"}:
            found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise ProvenanceError(f"signed provenance: expected fields ['key_id', 'record', 'signature'], got {found}")
        if not isinstance(raw["signature"], str) or not isinstance(raw["key_id"], str):
            raise ProvenanceError("signed provenance: signature and key_id must be strings")
        return cls(record=Provenance._from_dict(raw["record"]), signature=raw["signature"], key_id=raw["key_id"])


def generate_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as ``(private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)``, unencrypted."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def key_id(public_key_pem: bytes | str) -> str:
    """The id of an Ed25519 public key: the first 16 hex digits of the SHA-256 of its 32 raw bytes."""
    raw = _public_key(public_key_pem).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _as_bytes(pem: bytes | str) -> bytes:
    return pem.encode("ascii") if isinstance(pem, str) else pem


def _private_key(pem: bytes | str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_as_bytes(pem), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise SigningKeyError(f"signing key is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"signing key must be Ed25519, got {type(key).__name__}")
    return key


def _public_key(pem: bytes | str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_as_bytes(pem))
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise SigningKeyError(f"verify key is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"verify key must be Ed25519, got {type(key).__name__}")
    return key


def sign(prov: Provenance, private_key_pem: bytes | str) -> SignedProvenance:
    """Sign ``prov``'s canonical bytes with an Ed25519 private key (PEM); produces a :class:`SignedProvenance`."""
    private = _private_key(private_key_pem)
    signature = private.sign(_SIGNING_CONTEXT + prov.canonical_bytes())
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SignedProvenance(record=prov, signature=base64.b64encode(signature).decode("ascii"), key_id=key_id(public_pem))


def write(signed: SignedProvenance, path: str | os.PathLike) -> None:
    """Write ``signed`` to ``path`` atomically: a temporary file in the same directory, fsync, rename."""
    write_text_atomically(path, signed.to_json())


def read(path: str | os.PathLike) -> SignedProvenance:
    """Read a signed record written by :func:`write`; a missing file raises :class:`UnsignedModelError`."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise UnsignedModelError(f"no signed provenance: {path} does not exist") from None
    try:
        return SignedProvenance.from_json(text)
    except ProvenanceError as exc:
        raise ProvenanceError(f"{path}: {exc}") from None


def sign_model_dir(
    model_dir: str | os.PathLike, prov_without_artifacts: Provenance, private_key_pem: bytes | str
) -> SignedProvenance:
    """Sign a model directory in place.

    Consumes the directory, a record whose ``artifacts`` are replaced by the directory's
    :func:`digest_tree`, and an Ed25519 private key (PEM). Writes ``model_dir/provenance.json`` and
    returns the signed record.
    """
    model_dir = Path(model_dir)
    prov = dataclasses.replace(prov_without_artifacts, artifacts=digest_tree(model_dir))
    signed = sign(prov, private_key_pem)
    write(signed, model_dir / PROVENANCE_FILE)
    return signed


def check_signature(signed: SignedProvenance, public_key_pem: bytes | str, where: Path | str) -> None:
    """Check that ``signed`` was signed by the trusted Ed25519 public key (PEM) and is unchanged since:
    a :class:`SignatureError` naming ``where`` otherwise. The model files are not checked (see :func:`verify`)."""
    public = _public_key(public_key_pem)
    expected = key_id(public_key_pem)
    if signed.key_id != expected:
        raise SignatureError(
            f"{where}: signed by key {signed.key_id}, but the verify key is {expected}; "
            "the model was signed by another key than this deployment trusts"
        )
    try:
        signature = base64.b64decode(signed.signature, validate=True)
        public.verify(signature, _SIGNING_CONTEXT + signed.record.canonical_bytes())
    except (binascii.Error, InvalidSignature):
        raise SignatureError(
            f"{where}: signature by key {expected} does not match the record; it was modified after signing"
        ) from None


def verify(model_dir: str | os.PathLike, public_key_pem: bytes | str, *, require_blessed: bool = True) -> Provenance:
    """Check that a model directory is exactly what was signed, and (by default) blessed.

    Consumes a model directory holding ``provenance.json`` and the trusted Ed25519 public key (PEM).
    Checks, in order: the record exists (:class:`UnsignedModelError`); its signature is valid for
    this key (:class:`SignatureError`); the files' digests equal the signed ones
    (:class:`TamperedArtifactError`, naming every changed, missing and extra file); and, with
    ``require_blessed``, the record holds at least one gate and every gate passed
    (:class:`UnblessedModelError`, naming each failed gate and its reasons). Produces the verified
    :class:`Provenance`.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ProvenanceError(f"model directory not found: {model_dir}")
    where = model_dir / PROVENANCE_FILE
    signed = read(where)
    check_signature(signed, public_key_pem, where)
    record = signed.record

    actual = digest_tree(model_dir)
    expected = record.artifacts
    changed = sorted(p for p in actual.keys() & expected.keys() if actual[p] != expected[p])
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    if changed or missing or extra:
        parts = [f"{label}: {', '.join(paths)}"
                 for label, paths in (("changed", changed), ("missing", missing), ("extra", extra)) if paths]
        raise TamperedArtifactError(
            f"{model_dir}: model files differ from the signed record ({'; '.join(parts)})",
            changed=changed, missing=missing, extra=extra,
        )

    if require_blessed:
        if not record.gates:
            raise UnblessedModelError(f"{model_dir}: the signed record holds no gate verdicts", failed={})
        failed = {name: list(v["reasons"]) for name, v in record.gates.items() if not v["passed"]}
        if failed:
            detail = "; ".join(
                f"{name}: {', '.join(map(str, reasons)) or 'no reason given'}" for name, reasons in sorted(failed.items())
            )
            raise UnblessedModelError(f"{model_dir}: gates not passed ({detail})", failed=failed)
    return record


def load_private_key(path: str | os.PathLike | None = None) -> bytes:
    """The Ed25519 signing key as PEM bytes, from a file (a mounted Secret) or ``$KFMLOPS_SIGNING_KEY``.

    Consumes ``path``; when it is ``None`` the environment variable must hold the PEM text. The key
    is parsed before it is returned, so a malformed key fails here; a missing key raises
    :class:`SigningKeyError` saying where it was looked for.
    """
    pem = _load_pem(path, SIGNING_KEY_ENV, "signing")
    _private_key(pem)
    return pem


def load_public_key(path: str | os.PathLike | None = None) -> bytes:
    """The Ed25519 verify key as PEM bytes, from a file (a mounted Secret) or ``$KFMLOPS_VERIFY_KEY``.

    Same rules as :func:`load_private_key`.
    """
    pem = _load_pem(path, VERIFY_KEY_ENV, "verify")
    _public_key(pem)
    return pem


def _load_pem(path: str | os.PathLike | None, env: str, kind: str) -> bytes:
    if path is not None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            raise SigningKeyError(f"{kind} key file not found: {path} (is the Secret mounted?)") from None
    value = os.environ.get(env, "").strip()
    if not value:
        raise SigningKeyError(f"no {kind} key: pass the path of a mounted Secret file or set ${env} to the PEM key")
    return value.encode("ascii", errors="replace") + b"\n"


DEVELOPMENT_KEY_DIR = "keys"


def signing_key(config: "ProvenanceConfig") -> bytes:
    """The private key to sign with: the configured file, else ``$KFMLOPS_SIGNING_KEY``, else (when
    ``development_keys``) the local development pair, generated on first use."""
    if config.signing_key_file or os.environ.get(SIGNING_KEY_ENV) or not config.development_keys:
        return load_private_key(config.signing_key_file)
    return _development_pair()[0]


def verify_key(config: "ProvenanceConfig") -> bytes:
    """The public key to verify with, by the same rules as :func:`signing_key`."""
    if config.verify_key_file or os.environ.get(VERIFY_KEY_ENV) or not config.development_keys:
        return load_public_key(config.verify_key_file)
    return _development_pair()[1]


def _development_pair() -> tuple[bytes, bytes]:
    from kfmlops.tracking import kfmlops_home

    folder = kfmlops_home() / DEVELOPMENT_KEY_DIR
    private, public = folder / "signing.pem", folder / "verify.pem"
    if not private.exists():
        folder.mkdir(parents=True, exist_ok=True)
        private_pem, public_pem = generate_keypair()
        fd = os.open(folder / "signing.pem.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_pem)
        public.write_bytes(public_pem)
        os.replace(folder / "signing.pem.tmp", private)
    return load_private_key(private), load_public_key(public)

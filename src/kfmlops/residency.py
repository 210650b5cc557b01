"""Data residency: check every storage location a run touches against a policy before anything moves.

A :class:`ResidencyPolicy` lists the regions data may live in, the location prefixes that are
allowed (remote URI prefixes and local directories) and the region of each bucket or host whose
region is known by configuration. :func:`check` decides one URI for one purpose ("read data",
"write artifacts", "mlflow", "model storage", ...) and produces a :class:`ResidencyVerdict`;
:func:`enforce` checks every location of a run at once and raises :class:`ResidencyError` listing
every violation, so a run fails before it reads or writes anything. The verdicts are JSON-safe
(:func:`residency_record`) and go into the model's provenance.

Rules:

* A local path (no scheme, ``file:`` without a remote host, or an ``sqlite:`` tracking URI) is
  allowed iff ``allow_local`` and, when ``allowed_locations`` holds local entries, the path is under
  one of them. Both sides are resolved with :func:`os.path.realpath` first, so ``..`` and symlinks
  cannot escape an allowed directory.
* A remote URI is allowed iff it is under an allowed remote location (same scheme, same host, and
  the location's path as a whole-segment prefix, so ``s3://uae-bucket-evil/`` is not under
  ``s3://uae-bucket/``), or its bucket/host has a configured region in ``allowed_regions``. Remote
  paths with a ``..`` segment are refused.
* A database (``postgresql://`` or ``postgres://``, one scheme for both) is a remote URI whose host
  is the database server and whose first path segment is the database: ``postgresql://db.internal/``
  allows every database there, ``postgresql://db.internal:5432/analytics`` one. A database URI that
  names several hosts, or sets ``host``, ``hostaddr``, ``service``, ``port`` or ``dbname`` in its
  parameters (libpq would connect there instead), is refused.
* Anything else is refused, with a reason naming the URI, the purpose and the allowed set.

Passwords in URIs are masked in verdicts and messages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

# MLflow URIs without "://" that name a hosted remote service, not a local directory.
_BARE_REMOTE = frozenset({"databricks", "databricks-uc"})
_DATABASE_SCHEMES = frozenset({"postgresql", "postgres"})
_REDIRECTS = frozenset({"host", "hostaddr", "service", "port", "dbname"})  # libpq settings that override the URI's place


class ResidencyError(ValueError):
    """At least one location breaks the residency policy; ``violations`` holds every refused verdict.
    The message is one line: each refusal, the allowed set once, and what to do."""

    def __init__(self, violations: list["ResidencyVerdict"], policy: "ResidencyPolicy | None" = None):
        self.violations = violations
        allowed = f" ({policy.describe()})" if policy is not None else ""
        refusals = "; ".join(v.reason.removesuffix(allowed) for v in violations)
        super().__init__(
            f"{len(violations)} location(s) break the data residency policy: {refusals}{allowed}; move the data to an "
            "allowed location or change the residency settings"
        )


class _Unparseable(ValueError):
    """A URI that cannot be placed; the message says why."""


@dataclass(frozen=True)
class _Local:
    path: str  # as written (before resolution)


@dataclass(frozen=True)
class _Remote:
    scheme: str
    host: str
    port: int | None
    segments: tuple[str, ...]


def _parse(uri: str) -> _Local | _Remote:
    """Place a URI: a local path or a remote (scheme, host, port, path segments); raises _Unparseable."""
    if not uri.strip():
        raise _Unparseable("empty location")
    if uri.lower() in _BARE_REMOTE:
        raise _Unparseable(f"{uri!r} names a hosted remote service with no host or region to check")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme:
        return _Local(uri)
    if scheme == "file" and parts.netloc.lower() in ("", "localhost"):
        return _Local(unquote(parts.path))
    if scheme == "sqlite" or scheme.startswith("sqlite+"):
        # SQLAlchemy form: sqlite:///relative.db, sqlite:////absolute/path.db
        if parts.netloc or len(parts.path) < 2:
            raise _Unparseable("sqlite URI names no database file (expected sqlite:///path)")
        return _Local(parts.path[1:])
    if scheme in _DATABASE_SCHEMES:
        scheme = _database_location(uri, parts)
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise _Unparseable(f"malformed URI: {exc}") from None
    if not host:
        raise _Unparseable("remote URI names no host or bucket")
    segments = tuple(s for s in parts.path.split("/") if s)
    if any(unquote(s) == ".." for s in segments):
        raise _Unparseable("remote path has a '..' segment")
    return _Remote(scheme, host.lower(), port, segments)


def _database_location(uri: str, parts) -> str:
    """The scheme a database URI is placed under (``postgres://`` counts as ``postgresql://``); raises
    _Unparseable when the URI could connect anywhere but its one named host."""
    if "," in parts.netloc:
        raise _Unparseable("database URI names several hosts")
    settings = uri.partition("?")[2].split("query=", 1)[0]  # a query's SQL is not a connection setting
    redirects = sorted({key for key, _, _ in (item.partition("=") for item in settings.split("&"))} & _REDIRECTS)
    if redirects:
        raise _Unparseable(f"database URI sets {', '.join(redirects)}, which would connect elsewhere than its host")
    return "postgresql"


def redact(uri: str) -> str:
    """The URI with any password in it replaced by ``***``."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def _under(path: str, prefix: str) -> bool:
    """Whether resolved ``path`` is ``prefix`` or inside it (whole path components only)."""
    return path == prefix or path.startswith(prefix.rstrip(os.sep) + os.sep)


def _prefix_matches(uri: _Remote, prefix: _Remote) -> bool:
    return (
        uri.scheme == prefix.scheme
        and uri.host == prefix.host
        and (prefix.port is None or uri.port == prefix.port)
        and uri.segments[: len(prefix.segments)] == prefix.segments
    )


class ResidencyPolicy(BaseModel):
    """Where a run's data, artifacts, tracking store and models may live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_regions: list[str] = Field(default=[], description="Regions data may live in, e.g. me-central-1, uaenorth.")
    allowed_locations: list[str] = Field(
        default=[],
        description="Allowed URI prefixes (s3://uae-bucket/, http://mlflow.kfmlops.svc) and local directories "
        "(/mnt/, file:///data/). Local entries, when any, confine local paths; relative ones are relative to "
        "the working directory.",
    )
    bucket_regions: dict[str, str] = Field(
        default={},
        description="Region of each bucket or host known by configuration: 'uae-bucket' (any scheme) or "
        "'s3://uae-bucket' (that scheme only).",
    )
    allow_local: bool = Field(default=True, description="Whether local paths (and sqlite tracking stores) are allowed.")

    @field_validator("allowed_regions")
    @classmethod
    def _regions_named(cls, v: list[str]) -> list[str]:
        if any(not r.strip() for r in v):
            raise ValueError("region names must be non-empty")
        return v

    @field_validator("allowed_locations")
    @classmethod
    def _locations_parse(cls, v: list[str]) -> list[str]:
        for location in v:
            try:
                _parse(location)
            except _Unparseable as exc:
                raise ValueError(f"{location!r}: {exc}") from None
        return v

    @field_validator("bucket_regions")
    @classmethod
    def _bucket_keys(cls, v: dict[str, str]) -> dict[str, str]:
        if any(not k.strip() or not r.strip() for k, r in v.items()):
            raise ValueError("bucket names and regions must be non-empty")
        return {k.lower(): r for k, r in v.items()}

    def describe(self) -> str:
        """The allowed set in words, for refusal messages."""
        locations = ", ".join(self.allowed_locations) or "none"
        regions = ", ".join(self.allowed_regions) or "none"
        buckets = ", ".join(f"{k} ({r})" for k, r in sorted(self.bucket_regions.items())) or "none"
        return (
            f"allowed locations: {locations}; allowed regions: {regions}; known bucket regions: {buckets}; "
            f"local paths {'allowed' if self.allow_local else 'not allowed'}"
        )


@dataclass(frozen=True)
class ResidencyVerdict:
    """One location's decision: the URI (password masked), what it is used for, allowed or not, and why."""

    uri: str
    purpose: str
    allowed: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The verdict as a JSON-safe dict (``uri``, ``purpose``, ``allowed``, ``reason``)."""
        return asdict(self)


def check(uri: str, policy: ResidencyPolicy | None, *, purpose: str) -> ResidencyVerdict:
    """Decide whether ``uri`` may be used for ``purpose`` under ``policy`` (see the module rules).

    Consumes a local path or URI, a policy (``None``: no policy, everything allowed) and a short
    purpose such as ``"read data"``. Produces a :class:`ResidencyVerdict`; never raises for a bad URI
    (it is refused, with the reason).
    """
    shown = redact(uri)
    if policy is None:
        return ResidencyVerdict(shown, purpose, True, "no residency policy")

    def refuse(why: str) -> ResidencyVerdict:
        return ResidencyVerdict(shown, purpose, False, f"{purpose}: {shown} refused: {why} ({policy.describe()})")

    try:
        place = _parse(uri)
    except _Unparseable as exc:
        return refuse(str(exc))

    if isinstance(place, _Local):
        if not policy.allow_local:
            return refuse("local paths are not allowed (allow_local is false)")
        resolved = os.path.realpath(place.path)
        local_prefixes = [os.path.realpath(p.path) for p in map(_parse, policy.allowed_locations) if isinstance(p, _Local)]
        if not local_prefixes:
            return ResidencyVerdict(shown, purpose, True, f"{purpose}: local path {resolved} (local paths allowed)")
        for prefix in local_prefixes:
            if _under(resolved, prefix):
                return ResidencyVerdict(shown, purpose, True, f"{purpose}: {resolved} is under allowed location {prefix}")
        return refuse(f"resolves to {resolved}, which is under no allowed local location")

    for location in policy.allowed_locations:
        prefix = _parse(location)
        if isinstance(prefix, _Remote) and _prefix_matches(place, prefix):
            return ResidencyVerdict(shown, purpose, True, f"{purpose}: {shown} is under allowed location {location}")
    region = policy.bucket_regions.get(f"{place.scheme}://{place.host}", policy.bucket_regions.get(place.host))
    if region is None:
        return refuse(f"not under an allowed location, and bucket/host {place.host!r} has no configured region")
    if region not in policy.allowed_regions:
        return refuse(f"bucket/host {place.host!r} is in region {region!r}, which is not an allowed region")
    return ResidencyVerdict(shown, purpose, True, f"{purpose}: bucket/host {place.host!r} is in allowed region {region}")


def enforce(uris: Mapping[str, str | Sequence[str] | None], policy: ResidencyPolicy | None) -> list[ResidencyVerdict]:
    """Check every location of a run before anything is read or written.

    Consumes ``{purpose: uri or list of uris}`` (``None`` entries and list items, e.g. an unset
    optional source, are skipped) and a policy. Produces every verdict, in input order, when all are allowed;
    otherwise raises :class:`ResidencyError` listing every violation.
    """
    verdicts = []
    for purpose, value in uris.items():
        if value is None:
            continue
        for uri in [value] if isinstance(value, str) else value:
            if uri is not None:
                verdicts.append(check(uri, policy, purpose=purpose))
    violations = [v for v in verdicts if not v.allowed]
    if violations:
        raise ResidencyError(violations, policy)
    return verdicts


def residency_record(policy: ResidencyPolicy | None, verdicts: Sequence[ResidencyVerdict]) -> dict[str, Any]:
    """The ``residency`` field of a provenance record: the policy (``None`` when there is none) and every verdict."""
    return {
        "policy": None if policy is None else policy.model_dump(mode="json"),
        "verdicts": [v.to_json() for v in verdicts],
    }

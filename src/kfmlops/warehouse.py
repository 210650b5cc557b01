"""Database sources: a PostgreSQL table or query read as Arrow record batches, memory bounded.

A database source is a URI in ``data.source`` (or ``data.test_source``, or a drift reference)::

    postgresql://USER@HOST[:PORT]/DATABASE?table=[SCHEMA.]NAME[&order_by=COL[,COL...]]
    postgresql://USER@HOST[:PORT]/DATABASE?[sslmode=require&]query=SELECT ... ORDER BY ...

(``postgres://`` is the same). ``table`` names are quoted as written (case matters); ``query=``
comes last and everything after it is the SQL, verbatim (no percent-decoding: write it as in
psql). Other parameters are libpq's connection settings in :data:`LIBPQ_PARAMETERS`; one that
would point elsewhere (``host``, ``hostaddr``, ``service``) or hold a secret is refused, so the
host the residency policy checks is the host connected to.

Credentials never sit in the URI (:class:`~kfmlops.config.DataSpec` refuses a password there): the
password comes from ``ingest.warehouse.password_file`` (a mounted Secret) or the environment
variable ``ingest.warehouse.password_env`` (default ``PGPASSWORD``); it is put into the connection
string only, and scrubbed from any error.

:func:`read_batches` consumes the URI and an :class:`~kfmlops.config.IngestConfig` and produces
record batches of at most ``ingest.block_rows`` rows: ADBC's PostgreSQL driver streams the result
over ``COPY`` in batches of about ``ingest.block_size_bytes``, so memory stays bounded whatever
the result's size. Types ingest does not know come out plain: ``numeric`` as float64, PostgreSQL's
other opaque types (``uuid``, ``json``, ...) as their text. :func:`column_names` gives the
result's columns without reading any row (preflight). Errors (an unknown table, a wrong password,
a host that does not answer) are one-line :class:`~kfmlops.ingest.IngestError` naming the source.

Row order: a query without ``ORDER BY`` (a table without ``order_by``) comes back in whatever
order the server scans it, which decides the seeded test split and the fingerprint (SHA-256 of
the result as :class:`~kfmlops.digest.ArrowDigest` canonicalises it): it is reproducible only while
the server's plan and the data stay the same, and ingest warns. The snapshots a run keeps
(:mod:`kfmlops.snapshots`) are exact either way.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlencode, urlsplit

import pyarrow as pa

from kfmlops.config import IngestConfig, WarehouseConfig
from kfmlops.ingest import IngestError

log = logging.getLogger(__name__)

SCHEMES = frozenset({"postgresql", "postgres"})
LIBPQ_PARAMETERS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "application_name",
                              "options", "target_session_attrs"})
"""libpq connection settings a source URI may carry besides ``table``, ``order_by`` and ``query``."""
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


@dataclass(frozen=True)
class SqlSource:
    """A parsed database source: where it is, who logs in, the SQL that reads it and whether its order is fixed."""

    uri: str
    host: str
    port: int | None
    database: str
    user: str | None
    sql: str
    ordered: bool
    parameters: dict[str, str] = field(default_factory=dict)

    def connection_uri(self, config: WarehouseConfig, password: str | None) -> str:
        """The libpq URI to connect with: the password (when there is one) and the connect timeout added."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = host + (f":{self.port}" if self.port else "")
        login = quote(self.user or "", safe="") + (f":{quote(password, safe='')}" if password else "")
        parameters = {"connect_timeout": str(config.connect_timeout_s), **self.parameters}
        return (f"postgresql://{login + '@' if login else ''}{netloc}/{quote(self.database, safe='')}?"
                f"{urlencode(parameters, quote_via=quote)}")


def is_sql(uri: str | None) -> bool:
    """Whether ``uri`` names a database source (``postgresql://`` or ``postgres://``)."""
    return bool(uri) and "://" in uri and uri.split("://", 1)[0].lower() in SCHEMES


def parse(uri: str) -> SqlSource:
    """The source ``uri`` names (see the module docstring); an IngestError says what is wrong with it."""
    def bad(why: str) -> IngestError:
        return IngestError(f"{_shown(uri)!r}: {why}; the form is postgresql://USER@HOST:PORT/DATABASE?table=SCHEMA.NAME "
                           "or ...?query=SELECT ...")

    base, _, rest = uri.partition("?")
    parts = urlsplit(base)
    try:
        host, port, password = parts.hostname, parts.port, parts.password
    except ValueError as exc:
        raise bad(f"malformed host or port ({exc})") from None
    if password is not None:
        raise bad("it holds a password; give it through $PGPASSWORD or ingest.warehouse.password_file instead")
    if "," in parts.netloc:
        raise bad("it names several hosts; name one")
    if not host:
        raise bad("it names no host (Unix sockets are not supported: name the host, 127.0.0.1 for this machine)")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database or parts.fragment:
        raise bad("it names no database, or more than a database after the host")
    parameters, query = {}, None
    while rest:
        if rest.startswith("query="):
            query = rest.removeprefix("query=")
            break
        item, _, rest = rest.partition("&")
        key, _, value = item.partition("=")
        key, value = unquote(key), unquote(value)
        if key in parameters:
            raise bad(f"parameter {key!r} is given twice")
        parameters[key] = value
    table, order_by = parameters.pop("table", None), parameters.pop("order_by", None)
    unknown = sorted(set(parameters) - LIBPQ_PARAMETERS)
    if unknown:
        raise bad(f"unknown parameters {unknown} (besides table, order_by and query, a source may set "
                  f"{', '.join(sorted(LIBPQ_PARAMETERS))})")
    if (table is None) == (query is None):
        raise bad("give exactly one of table= and query=")
    if query is not None:
        if order_by is not None:
            raise bad("order_by goes with table=; write ORDER BY in the query")
        sql = query.strip().rstrip(";").strip()
        if not sql:
            raise bad("query= is empty")
        ordered = bool(_ORDER_BY.search(sql))
    else:
        sql = f"SELECT * FROM {_quoted(table, bad)}"
        columns = [c.strip() for c in (order_by or "").split(",") if c.strip()]
        if columns:
            sql += " ORDER BY " + ", ".join(_identifier(c) for c in columns)
        ordered = bool(columns)
    return SqlSource(uri, host, port, database, unquote(parts.username) if parts.username else None, sql, ordered,
                     parameters)


def password(config: WarehouseConfig) -> str | None:
    """The database password: ``password_file``'s contents (one trailing newline dropped) when it is set, else
    ``$password_env``; None when neither gives one (libpq then looks in ~/.pgpass)."""
    if config.password_file:
        try:
            return Path(config.password_file).read_text().removesuffix("\n").removesuffix("\r")
        except OSError as exc:
            raise IngestError(f"ingest.warehouse.password_file {config.password_file!r} cannot be read "
                              f"({exc.strerror}); mount the Secret there, or unset it to use ${config.password_env}") from None
    return os.environ.get(config.password_env) or None


def read_batches(uri: str, config: IngestConfig) -> Iterator[pa.RecordBatch]:
    """The rows of the table or query ``uri`` names, in batches of at most ``config.block_rows`` rows."""
    source = parse(uri)
    if not source.ordered:
        log.warning("ingest: %s has no ORDER BY (order_by= for a table): its row order, and so the test split and the "
                    "fingerprint, follow the server's scan and may change between reads", source.uri)
    log.info("ingest: reading %s: %s", source.uri, source.sql[:200])
    with _connected(source, config.warehouse) as connection, connection.cursor() as cursor:
        from adbc_driver_postgresql import StatementOptions

        cursor.adbc_statement.set_options(**{StatementOptions.BATCH_SIZE_HINT_BYTES.value: str(config.block_size_bytes)})
        cursor.execute(source.sql)
        for batch in cursor.fetch_record_batch():
            batch = _plain(batch, source)
            for offset in range(0, batch.num_rows, config.block_rows):
                yield batch.slice(offset, config.block_rows)


def column_names(uri: str, config: IngestConfig) -> list[str]:
    """The columns of the table or query ``uri`` names, as the server describes the result; no row is read."""
    source = parse(uri)
    with _connected(source, config.warehouse) as connection, connection.cursor() as cursor:
        return cursor.adbc_execute_schema(source.sql).names


@contextmanager
def _connected(source: SqlSource, config: WarehouseConfig) -> Iterator:
    """An ADBC connection to ``source``'s database; a driver error inside becomes a one-line IngestError."""
    try:
        import adbc_driver_manager
        from adbc_driver_postgresql import dbapi
    except ImportError:
        raise IngestError(f"{source.uri!r}: reading a database needs the warehouse extra "
                          "(pip install 'kfmlops[warehouse]': adbc-driver-postgresql)") from None
    secret = password(config)
    try:
        with dbapi.connect(source.connection_uri(config, secret)) as connection:
            yield connection
    except adbc_driver_manager.Error as exc:
        connecting = isinstance(exc, adbc_driver_manager.OperationalError)
        hint = (f"; check the host, port, database, user and password (${config.password_env} or "
                "ingest.warehouse.password_file)") if connecting else "; check the table or the query"
        raise IngestError(f"cannot read {source.uri!r}: {_reason(str(exc), secret)}{hint}") from None


def _reason(message: str, secret: str | None) -> str:
    """The server's or libpq's own words from a driver error, on one line, without the password."""
    if secret:
        message = message.replace(secret, "***").replace(quote(secret, safe=""), "***")
    line = " ".join((message.strip().splitlines() or [""])[0].split())
    for marker in ("ERROR: ", "FATAL: "):
        if marker in line:
            return line.split(marker, 1)[1]
    return re.sub(r"^[A-Z_]+: (\[libpq\] )?", "", line)


def _plain(batch: pa.RecordBatch, source: SqlSource) -> pa.RecordBatch:
    """``batch`` with PostgreSQL's opaque extension columns as their text, ``numeric`` as float64."""
    if not any(isinstance(f.type, pa.BaseExtensionType) for f in batch.schema):
        return batch
    columns, names = [], batch.schema.names
    for name, column in zip(names, batch.columns):
        if isinstance(column.type, pa.BaseExtensionType):
            numeric = getattr(column.type, "type_name", None) == "numeric"
            column = column.storage
            if numeric:
                try:
                    column = column.cast(pa.float64())
                except pa.ArrowInvalid as exc:
                    raise IngestError(f"{source.uri!r}: numeric column {name!r} cannot be read as float64: {exc}") from None
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=names)


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quoted(table: str, bad) -> str:
    parts = table.split(".")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise bad(f"table={table!r} is not NAME or SCHEMA.NAME")
    return ".".join(_identifier(p.strip()) for p in parts)


def _shown(uri: str) -> str:
    """``uri`` with any password in it masked (for the error that refuses it)."""
    from kfmlops.residency import redact

    return redact(uri)

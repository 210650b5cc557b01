"""Database sources against a real PostgreSQL server on loopback (tests/postgres_server.py): tables and
queries read in bounded batches into the same normalisation and split as files, the fingerprint of a
result, one-line errors that name the source and never the password, a password in the URI
refused, and residency deciding the database host before anything connects."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from kfmlops import preflight, warehouse
from kfmlops.config import DataSpec, IngestConfig, PipelineConfig, Settings
from kfmlops.ingest import IngestError, ingest, normalised_table, read_batches
from kfmlops.monitoring.lineage import load_reference
from kfmlops.residency import ResidencyError, ResidencyPolicy, check, enforce
from kfmlops.typed import ConfigError
from postgres_server import PASSWORD

ROWS = 50_000
BLOCK = 4096


def _frame(rows: int = ROWS, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    return pa.table({
        "id": pa.array(np.arange(rows), pa.int64()),
        "Amount": x.round(6),
        "Colour": pa.array(rng.choice(["red", "green", "blue", None], size=rows).tolist(), pa.string()),
        "label": pa.array(np.where(x + rng.normal(scale=0.5, size=rows) > 0, "yes", "no").tolist()),
    })


@pytest.fixture(scope="module")
def loaded(postgres, tmp_path_factory):
    """The same rows as a CSV file and as table ``sales`` (plus an empty table ``nothing``)."""
    table = _frame()
    csv = tmp_path_factory.mktemp("warehouse") / "sales.csv"
    pa_csv.write_csv(table, csv)
    postgres.load("sales", table)
    postgres.load("nothing", table.slice(0, 0))
    return postgres, str(csv)


@pytest.fixture
def password(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", PASSWORD)


def _spec(source: str, **extra) -> DataSpec:
    return DataSpec(source=source, label="label", positive_labels=["yes"], **extra)


def test_a_table_larger_than_the_block_reads_in_bounded_batches_and_equals_the_csv(loaded, password):
    server, csv = loaded
    uri = server.uri("table=sales&order_by=id")
    config = IngestConfig(block_rows=BLOCK, block_size_bytes=1 << 16)
    sizes = [b.num_rows for b in read_batches(uri, config)]
    assert sum(sizes) == ROWS and max(sizes) <= BLOCK and len(sizes) >= ROWS // BLOCK

    from_db, task_db = normalised_table(uri, _spec(uri), config)
    from_csv, task_csv = normalised_table(csv, _spec(csv), IngestConfig())
    assert from_db.equals(from_csv) and task_db == task_csv
    assert from_db.column_names == ["id", "amount", "colour", "label"]


def test_table_and_query_sources_ingest_like_the_file_with_a_fingerprint_of_the_rows(loaded, password, tmp_path):
    server, csv = loaded
    table = server.uri("table=sales&order_by=id")
    query = server.uri("query=SELECT id, \"Amount\", \"Colour\", label FROM sales ORDER BY id")
    results = {name: ingest(_spec(uri), IngestConfig(block_rows=rows), tmp_path / f"{name}-train.parquet",
                            tmp_path / f"{name}-test.parquet")
               for name, uri, rows in [("table", table, BLOCK), ("query", query, 1000), ("csv", csv, BLOCK)]}
    for name in ("table", "query"):  # the same rows, the same seeded split as the file
        for split in ("train", "test"):
            assert pq.read_table(tmp_path / f"{name}-{split}.parquet").equals(pq.read_table(tmp_path / f"csv-{split}.parquet"))
    assert results["table"].fingerprint == results["query"].fingerprint  # whatever the batches
    assert len(results["table"].fingerprint) == 64 and results["table"].fingerprint != results["csv"].fingerprint
    assert results["table"].columns == results["csv"].columns

    positive = server.uri("query=SELECT * FROM sales WHERE \"Amount\" > 0 ORDER BY id")
    kept = ingest(_spec(positive), IngestConfig(), tmp_path / "p-train.parquet", tmp_path / "p-test.parquet")
    assert kept.train_rows + kept.test_rows == int(np.sum(_frame()["Amount"].to_numpy() > 0))
    assert kept.fingerprint != results["table"].fingerprint


def test_a_query_without_order_by_is_read_with_a_warning(loaded, password, caplog):
    server, _ = loaded
    rows = sum(b.num_rows for b in read_batches(server.uri("table=sales"), IngestConfig()))
    assert rows == ROWS
    assert "has no ORDER BY" in caplog.text and "may change between reads" in caplog.text


def test_an_empty_result_and_a_missing_table_are_one_line_errors_naming_the_source(loaded, password, tmp_path):
    server, _ = loaded
    cases = {
        server.uri("table=nothing&order_by=id"): "returned no rows",
        server.uri("query=SELECT * FROM sales WHERE false"): "returned no rows",
        server.uri("table=public.missing"): 'relation "public.missing" does not exist; check the table or the query',
    }
    for uri, expected in cases.items():
        with pytest.raises(IngestError) as err:
            ingest(_spec(uri), IngestConfig(), tmp_path / "train.parquet", tmp_path / "test.parquet")
        message = str(err.value)
        assert uri in message and expected in message and "\n" not in message and PASSWORD not in message


def test_wrong_or_absent_credentials_and_an_unreachable_host_fail_in_one_line(loaded, tmp_path, monkeypatch):
    server, _ = loaded
    uri = server.uri("table=sales")
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    with pytest.raises(IngestError, match=r'password authentication failed for user "kfmlops"; check the host') as err:
        list(read_batches(uri, IngestConfig()))
    assert "not-the-password" not in str(err.value) and uri in str(err.value)

    secret = tmp_path / "password"  # a mounted Secret wins over the environment
    secret.write_text(PASSWORD + "\n")
    config = IngestConfig(warehouse={"password_file": str(secret)})
    assert sum(b.num_rows for b in read_batches(uri, config)) == ROWS
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(IngestError, match="ingest.warehouse.password_file .* cannot be read"):
        list(read_batches(uri, IngestConfig(warehouse={"password_file": str(tmp_path / "absent")})))
    monkeypatch.setenv("DB_SECRET", PASSWORD)  # the variable is configurable
    assert warehouse.column_names(uri, IngestConfig(warehouse={"password_env": "DB_SECRET"})) == list(_frame().column_names)

    closed = f"postgresql://kfmlops@127.0.0.1:1/{server.database}?table=sales"
    with pytest.raises(IngestError, match=r"Connection refused; check the host, port"):
        list(read_batches(closed, IngestConfig(warehouse={"connect_timeout_s": 2})))


def test_a_password_in_the_uri_is_refused_without_repeating_it(tmp_path):
    with pytest.raises(ConfigError, match="holds a password") as err:
        DataSpec.parse({"source": "postgresql://reader:hunter2@db.internal/analytics?table=sales", "label": "y"})
    assert "hunter2" not in str(err.value)
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  source: data.csv\n  test_source: s3://u:hunter2@bucket/test.csv\n  label: y\n")
    with pytest.raises(ConfigError, match="data.test_source: .*holds a password") as err:
        PipelineConfig.from_yaml(config)
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("uri, why", [
    ("postgresql://u@db/analytics", "give exactly one of table= and query="),
    ("postgresql://u@db/analytics?table=a&query=SELECT 1", "give exactly one of table= and query="),
    ("postgresql://u@db/analytics?table=a&host=elsewhere", "unknown parameters ['host']"),
    ("postgresql://u@db1,db2/analytics?table=a", "several hosts"),
    ("postgresql://u@/analytics?table=a", "names no host"),
    ("postgresql://u@db/?table=a", "names no database"),
    ("postgresql://u@db/analytics?table=a.b.c", "is not NAME or SCHEMA.NAME"),
    ("postgresql://u@db/analytics?order_by=id&query=SELECT 1", "order_by goes with table="),
])
def test_a_malformed_source_uri_says_what_is_wrong(uri, why):
    with pytest.raises(IngestError, match="the form is postgresql://") as err:
        warehouse.parse(uri)
    assert why in str(err.value)


def test_the_sql_is_taken_verbatim_and_names_are_quoted():
    query = warehouse.parse("postgres://u@db:6432/analytics?sslmode=require&query=SELECT a+b AS c, '%ab%' FROM t ORDER BY c;")
    assert query.sql == "SELECT a+b AS c, '%ab%' FROM t ORDER BY c" and query.ordered
    assert (query.host, query.port, query.database, query.user, query.parameters) == ("db", 6432, "analytics", "u",
                                                                                       {"sslmode": "require"})
    table = warehouse.parse("postgresql://u@db/analytics?table=Sales.Q1&order_by=day, id")
    assert table.sql == 'SELECT * FROM "Sales"."Q1" ORDER BY "day", "id"' and table.ordered
    assert not warehouse.parse("postgresql://u@db/analytics?table=t").ordered
    connection = table.connection_uri(Settings().ingest.warehouse, "p@ss/word")
    assert connection == "postgresql://u:p%40ss%2Fword@db/analytics?connect_timeout=10"


def test_residency_places_the_database_host_and_refuses_one_outside_the_policy_before_connecting(loaded):
    server, _ = loaded
    policy = ResidencyPolicy(allowed_regions=["me-central-1"], allowed_locations=["postgresql://warehouse.uae.internal/"],
                             bucket_regions={"db.eu.internal": "eu-west-1"}, allow_local=False)
    assert check("postgres://r@warehouse.uae.internal:5432/analytics?table=t", policy, purpose="read").allowed
    refused = check("postgresql://r@db.eu.internal/analytics?query=SELECT 1", policy, purpose="read")
    assert not refused.allowed and "region 'eu-west-1', which is not an allowed region" in refused.reason
    redirected = check("postgresql://r@warehouse.uae.internal/analytics?host=db.eu.internal&table=t", policy, purpose="read")
    assert not redirected.allowed and "would connect elsewhere than its host" in redirected.reason
    assert not check("postgresql://r@warehouse.uae.internal,db.eu.internal/a?table=t", policy, purpose="read").allowed

    # the server is up and the password absent: a connection attempt would fail otherwise than with ResidencyError
    config = PipelineConfig(data=_spec(server.uri("table=sales")), settings=Settings(residency=policy))
    with pytest.raises(ResidencyError, match=r"read: postgresql://kfmlops@127.0.0.1:\d+/warehouse\?table=sales refused"):
        preflight.check(config)
    allowed = ResidencyPolicy(allowed_locations=[f"postgresql://127.0.0.1:{server.port}/{server.database}"])
    assert enforce({"read": server.uri("table=sales")}, allowed)[0].allowed


def test_preflight_reads_the_columns_of_a_database_source(loaded, password):
    server, _ = loaded
    good = PipelineConfig(data=_spec(server.uri("table=sales")))
    preflight.check(good)
    wrong = PipelineConfig(data=DataSpec(source=server.uri("query=SELECT id, label FROM sales"), label="outcome"))
    with pytest.raises(IngestError, match=r"is missing columns \['outcome'\]; it has \['id', 'label'\]"):
        preflight.check(wrong)


def test_drift_reads_a_database_reference_back_as_the_train_split(loaded, password):
    server, csv = loaded
    uri = server.uri("table=sales&order_by=id")
    training = PipelineConfig(data=_spec(uri))
    reference, task = load_reference(uri, training)
    expected, _ = load_reference(csv, PipelineConfig(data=_spec(csv)))
    assert reference.equals(expected) and task.kind == "binary" and reference.num_rows == ROWS - ROWS // 5

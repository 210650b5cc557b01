import gzip
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ADULT_INGEST, ADULT_SPEC
from kfmlops.config import DataSpec, IngestConfig
from kfmlops.ingest import IngestError, StratifiedSplit, ingest, normalise_name, in_test_split


def test_adult_is_normalised(adult, adult_train, adult_test):
    assert (adult.train_rows, adult.test_rows) == (32561, 16281)
    assert adult.label == "y"
    assert list(adult_train.columns)[:5] == ["age", "workclass", "fnlwgt", "education", "education_num"]
    assert adult_train["workclass"].isna().sum() == 1836  # the `?` tokens, trimmed of their leading space
    assert not adult_train["workclass"].dropna().str.startswith(" ").any()
    # '>50K' in adult.data and '>50K.' in adult.test both map to 1
    assert adult.label_counts["train"] == {"positive": 7841, "negative": 24720}
    assert adult.label_counts["test"] == {"positive": 3846, "negative": 12435}
    assert adult_test["y"].dtype == np.int8
    assert len(adult.fingerprint) == 64


def test_fingerprint_is_stable_and_content_addressed(tmp_path, adult):
    again = ingest(ADULT_SPEC, ADULT_INGEST, tmp_path / "a.parquet", tmp_path / "b.parquet")
    assert again.fingerprint == adult.fingerprint
    other = ADULT_SPEC.model_copy(update={"test_source": None})
    assert ingest(other, ADULT_INGEST, tmp_path / "c.parquet", tmp_path / "d.parquet").fingerprint != adult.fingerprint


def test_split_is_reproducible_and_independent_of_block_size(tmp_path):
    spec = ADULT_SPEC.model_copy(update={"test_source": None})
    big = ingest(spec, ADULT_INGEST, tmp_path / "1tr.parquet", tmp_path / "1te.parquet")
    small = ingest(spec, ADULT_INGEST.model_copy(update={"block_size_bytes": 1 << 16}),
                   tmp_path / "2tr.parquet", tmp_path / "2te.parquet")
    assert big.test_rows == small.test_rows and 0.18 < big.test_rows / 32561 < 0.22
    pd.testing.assert_frame_equal(pd.read_parquet(big.test_path), pd.read_parquet(small.test_path))
    reseeded = ingest(spec, ADULT_INGEST.model_copy(update={"seed": 7}), tmp_path / "3tr.parquet", tmp_path / "3te.parquet")
    assert not pd.read_parquet(reseeded.test_path).equals(pd.read_parquet(big.test_path))


def test_split_is_stratified_seeded_and_independent_of_batching():
    labels = (np.random.default_rng(0).random(200_001) < 0.07).astype(np.int8)
    mask = in_test_split(labels, 42, 0.25)
    for cls in (0, 1):
        n = int((labels == cls).sum())
        assert int(mask[labels == cls].sum()) in (n // 4, -(-n // 4))  # floor or ceil of n * fraction
    assert (mask == in_test_split(labels, 42, 0.25)).all()
    assert not (mask == in_test_split(labels, 7, 0.25)).all()
    split = StratifiedSplit(42, 0.25)
    assert (np.concatenate([split(part) for part in np.array_split(labels, 37)]) == mask).all()
    rare = np.zeros(200, np.int8)
    rare[[3, 50, 90, 120, 150, 170, 180, 199]] = 1  # 8 positives: the test split gets 2, the train split 6
    assert int(in_test_split(rare, 42, 0.2)[rare == 1].sum()) == 2


def test_parquet_and_jsonl_give_the_same_table_as_csv(tmp_path, adult_train):
    raw = adult_train.rename(columns={"education_num": "Education-Num"}).assign(y=np.where(adult_train.y == 1, "yes", "no"))
    pq.write_table(pa.Table.from_pandas(raw, preserve_index=False), tmp_path / "d.parquet")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        for rec in raw.head(2000).to_dict("records"):
            f.write(json.dumps({k: (None if v is None or v != v else v) for k, v in rec.items()}) + "\n")
    spec = DataSpec(source=str(tmp_path / "d.parquet"), label="y", positive_labels=["yes"])
    out = ingest(spec, IngestConfig(test_fraction=0.5), tmp_path / "ptr.parquet", tmp_path / "pte.parquet")
    back = pd.concat([pd.read_parquet(out.train_path), pd.read_parquet(out.test_path)])
    assert len(back) == len(adult_train) and "education_num" in back.columns
    assert back["y"].sum() == adult_train["y"].sum()
    spec = spec.model_copy(update={"source": str(tmp_path / "d.jsonl.gz")})
    out = ingest(spec, IngestConfig(), tmp_path / "jtr.parquet", tmp_path / "jte.parquet")
    assert out.train_rows + out.test_rows == 2000


def test_reads_fsspec_uris(tmp_path):
    import fsspec

    with fsspec.open("memory://kfmlops/d.csv", "w") as f:
        f.write("a,b,label\n" + "".join(f"{i},{'x' if i % 2 else 'y'},{i % 3 == 0}\n" for i in range(100)))
    spec = DataSpec(source="memory://kfmlops/d.csv", label="label", positive_labels=[True])
    out = ingest(spec, IngestConfig(), tmp_path / "tr.parquet", tmp_path / "te.parquet")
    assert out.train_rows + out.test_rows == 100


@pytest.mark.parametrize(
    "content, spec_update, config_update, message",
    [
        ("a,b,y\n1,2,1\n", {"label": "z"}, {}, "missing columns ['z']"),
        ("a,b,y\n1,2,1\n", {"sensitive_features": ["sex"]}, {}, "missing columns ['sex']"),
        ("", {}, {}, "is empty (0 bytes)"),
        ("a,b,y\n", {}, {}, "no data rows"),
        ("a,b,y\n" + "1,2,0\n" * 50, {}, {}, "one class"),
        ("a,b,y\n1,2,1\n", {}, {"format": "auto"}, "cannot tell the format"),
    ],
)
def test_bad_input_gets_a_clear_error(tmp_path, content, spec_update, config_update, message):
    path = tmp_path / ("data.dat" if config_update.get("format") == "auto" else "data.csv")
    path.write_text(content)
    spec = DataSpec(**{"source": str(path), "label": "y", **spec_update})
    with pytest.raises(IngestError) as err:
        ingest(spec, IngestConfig(**{"format": "csv", **config_update}), tmp_path / "tr.parquet", tmp_path / "te.parquet")
    assert message in str(err.value)


def test_missing_file_and_type_change_are_named(tmp_path):
    with pytest.raises(IngestError, match="no such file"):
        ingest(DataSpec(source=str(tmp_path / "nope.csv"), label="y"), IngestConfig(), tmp_path / "a", tmp_path / "b")
    rows = "".join(f"{i},{i % 2}\n" for i in range(30000)) + "oops,1\n"
    (tmp_path / "t.csv").write_text("a,y\n" + rows)
    with pytest.raises(IngestError, match="could not be parsed|changes type"):
        ingest(DataSpec(source=str(tmp_path / "t.csv"), label="y"), IngestConfig(block_size_bytes=1 << 16),
               tmp_path / "a", tmp_path / "b")


def test_test_file_missing_a_column_is_named(tmp_path):
    (tmp_path / "test.csv").write_text("age,y\n30,1\n")
    spec = ADULT_SPEC.model_copy(update={"test_source": str(tmp_path / "test.csv")})
    with pytest.raises(IngestError, match="test.csv.*missing columns"):
        ingest(spec, ADULT_INGEST, tmp_path / "a.parquet", tmp_path / "b.parquet")


def test_normalise_name():
    assert normalise_name(" Education-Num") == "education_num"
    assert normalise_name("Hours per week (avg)") == "hours_per_week_avg"


def test_normalised_table_matches_ingest_and_its_split(tmp_path):
    from kfmlops.ingest import normalised_table

    spec = ADULT_SPEC.model_copy(update={"test_source": None})
    split = ingest(spec, ADULT_INGEST, tmp_path / "tr.parquet", tmp_path / "te.parquet")
    table, label = normalised_table(spec.source, spec, ADULT_INGEST)
    assert label == "y" and table.num_rows == split.train_rows + split.test_rows
    train = table.filter(pa.array(~in_test_split(table.column(label).to_numpy(), ADULT_INGEST.seed, ADULT_INGEST.test_fraction)))
    assert train.equals(pq.read_table(split.train_path))

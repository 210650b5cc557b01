import gzip
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ADULT_INGEST, ADULT_SPEC
from kfmlops.config import DataSpec, IngestConfig
from kfmlops.ingest import IngestError, StratifiedSplit, held_out_rows, in_test_split, ingest, normalise_name


def test_adult_is_normalised(adult, adult_train, adult_test):
    assert (adult.train_rows, adult.test_rows) == (32561, 16281)
    assert adult.label == "y"
    assert list(adult_train.columns)[:5] == ["age", "workclass", "fnlwgt", "education", "education_num"]
    assert adult_train["workclass"].isna().sum() == 1836  # the `?` tokens, trimmed of their leading space
    assert not adult_train["workclass"].dropna().str.startswith(" ").any()
    # '>50K' in adult.data and '>50K.' in adult.test are one class, named after the first
    assert adult.task == {"kind": "binary", "label": "y", "classes": ["<=50K", ">50K"],
                          "reason": "data.positive_labels is set"}
    assert adult.label_counts["train"] == {">50K": 7841, "<=50K": 24720}
    assert adult.label_counts["test"] == {">50K": 3846, "<=50K": 12435}
    assert adult.label_mapping[">50K"] == {">50K": 7841, ">50K.": 3846}
    assert set(adult_test["y"]) == {"<=50K", ">50K"}
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
    raw = adult_train.rename(columns={"education_num": "Education-Num"}).assign(y=np.where(adult_train.y == ">50K", "yes", "no"))
    pq.write_table(pa.Table.from_pandas(raw, preserve_index=False), tmp_path / "d.parquet")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        for rec in raw.head(2000).to_dict("records"):
            f.write(json.dumps({k: (None if v is None or v != v else v) for k, v in rec.items()}) + "\n")
    spec = DataSpec(source=str(tmp_path / "d.parquet"), label="y", positive_labels=["yes"])
    out = ingest(spec, IngestConfig(test_fraction=0.5), tmp_path / "ptr.parquet", tmp_path / "pte.parquet")
    back = pd.concat([pd.read_parquet(out.train_path), pd.read_parquet(out.test_path)])
    assert len(back) == len(adult_train) and "education_num" in back.columns
    assert (back["y"] == "yes").sum() == (adult_train["y"] == ">50K").sum()
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
    table, task = normalised_table(spec.source, spec, ADULT_INGEST)
    assert task.label == "y" and table.num_rows == split.train_rows + split.test_rows
    train = table.filter(pa.array(~held_out_rows(table.column(task.label), task, ADULT_INGEST.seed, ADULT_INGEST.test_fraction)))
    assert train.equals(pq.read_table(split.train_path))


def _csv(path, header: str, rows: list[str]):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return str(path)


def test_the_task_is_inferred_from_the_label_and_said_why(tmp_path):
    penguins = ingest(DataSpec(source="data/penguins/penguins.csv.gz", label="species"), IngestConfig(),
                      tmp_path / "p1.parquet", tmp_path / "p2.parquet")
    assert penguins.task["kind"] == "multiclass" and penguins.task["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    assert penguins.task["reason"] == "the label has 3 distinct values ('Adelie', 'Chinstrap', 'Gentoo')"
    assert sum(penguins.label_counts["test"].values()) == penguins.test_rows == 68  # 20% of each class
    assert penguins.label_counts["test"] == {"Adelie": 30, "Chinstrap": 13, "Gentoo": 25}
    wages = ingest(DataSpec(source="data/cps1988/cps1988.csv.gz", label="wage"), IngestConfig(),
                   tmp_path / "c1.parquet", tmp_path / "c2.parquet")
    assert wages.task["kind"] == "regression" and wages.task["reason"].startswith("the label has fractional values")
    assert wages.label_counts["train"]["rows"] == wages.train_rows and wages.label_counts["train"]["min"] == 50.05
    assert pd.read_parquet(wages.train_path)["wage"].dtype == np.float64
    source = _csv(tmp_path / "yn.csv", "x,ok", [f"{i},{'yes' if i % 3 else 'no'}" for i in range(60)])
    yes_no = ingest(DataSpec(source=source, label="ok"), IngestConfig(), tmp_path / "y1.parquet", tmp_path / "y2.parquet")
    assert yes_no.task["classes"] == ["no", "yes"]  # the later in sorted order is positive
    grades = _csv(tmp_path / "g.csv", "x,grade", [f"{i},{i % 4}" for i in range(80)])
    assert ingest(DataSpec(source=grades, label="grade"), IngestConfig(), tmp_path / "g1", tmp_path / "g2").task[
        "classes"] == ["0", "1", "2", "3"]
    told = ingest(DataSpec(source=grades, label="grade", task="regression"), IngestConfig(), tmp_path / "g3", tmp_path / "g4")
    assert told.task["kind"] == "regression" and told.task["reason"] == "data.task is 'regression'"


def test_labels_that_do_not_fit_their_task_are_named(tmp_path):
    late = _csv(tmp_path / "late.csv", "x,y", [f"{i},{'a' if i % 2 else 'b'}" for i in range(40_000)] + ["1,c"] * 5)
    with pytest.raises(IngestError, match="looked binary in its first rows but has more values later.*data.task: multiclass"):
        ingest(DataSpec(source=late, label="y"), IngestConfig(block_size_bytes=1 << 16), tmp_path / "a", tmp_path / "b")
    text = _csv(tmp_path / "t.csv", "x,y", [f"{i},v{i}" for i in range(300)])
    with pytest.raises(IngestError, match="300 distinct text values.*set data.task"):
        ingest(DataSpec(source=text, label="y"), IngestConfig(), tmp_path / "a", tmp_path / "b")
    with pytest.raises(IngestError, match="regression label but has values that are not numbers: \\['v0'"):
        ingest(DataSpec(source=text, label="y", task="regression"), IngestConfig(), tmp_path / "a", tmp_path / "b")
    rare = _csv(tmp_path / "r.csv", "x,y", [f"{i},{'a' if i % 2 else 'b'}" for i in range(40)] + ["1,c"])
    with pytest.raises(IngestError, match="class 'c' is too rare to split"):
        ingest(DataSpec(source=rare, label="y", task="multiclass"), IngestConfig(), tmp_path / "a", tmp_path / "b")
    flat = _csv(tmp_path / "f.csv", "x,y", [f"{i},2.5" for i in range(40)])
    with pytest.raises(IngestError, match="is 2.5 in every train row"):
        ingest(DataSpec(source=flat, label="y", task="regression"), IngestConfig(), tmp_path / "a", tmp_path / "b")

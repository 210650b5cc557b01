"""Data mistakes end in one typed error whose one line says what is wrong, where and what to do.

One test per class of bad input, calling the stage functions (ingest, train, validate, fairness)
and the preflight check directly, on real files.
"""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from conftest import ADULT
from kfmlops.config import DataSpec, Expectation, IngestConfig, PipelineConfig, TrainConfig, ValidateConfig
from kfmlops.ingest import IngestError, ingest
from kfmlops.preflight import check
from kfmlops.residency import ResidencyError
from kfmlops.tasks import Task
from kfmlops.train import TrainDataError, train
from kfmlops.typed import ConfigError
from kfmlops.validate import validate

BINARY_Y = Task("binary", "y", ("0", "1"))
ROWS = "".join(f"{i},{'x' if i % 3 else 'z'},{i % 2}\n" for i in range(60))


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def write(tmp_path, text: str, name: str = "data.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_ingest(tmp_path, source: str, **spec) -> object:
    data = DataSpec(**{"source": source, "label": "y", **spec})
    return ingest(data, IngestConfig(format="csv", na_values=["?"]), tmp_path / "train.parquet", tmp_path / "test.parquet")


def config(source: str, **sections) -> PipelineConfig:
    data = sections.pop("data", {})
    return PipelineConfig.model_validate({"data": {"source": source, "label": "y", **data}, **sections})


def test_missing_label_column_is_named_before_the_run_and_at_ingest(tmp_path):
    source = write(tmp_path, "a,b,income_usd\n" + ROWS)
    for call in (lambda: check(config(source)), lambda: run_ingest(tmp_path, source)):
        with pytest.raises(IngestError) as err:
            call()
        assert one_line(err) == (
            f"{source!r} is missing columns ['y']; it has ['a', 'b', 'income_usd'] ('y' is named by data.label; "
            "names are compared after normalising to snake_case)"
        )


def test_empty_and_header_only_files(tmp_path):
    empty = write(tmp_path, "", "empty.csv")
    with pytest.raises(IngestError) as err:
        check(config(empty))
    assert one_line(err) == f"{empty!r} is empty (0 bytes); name a file with a header and data rows"
    header_only = write(tmp_path, "a,b,y\n", "header.csv")
    check(config(header_only))  # its header is fine; that it has no rows only ingest can tell
    with pytest.raises(IngestError) as err:
        run_ingest(tmp_path, header_only)
    assert one_line(err) == f"{header_only!r} has a header but no data rows; name a file with data rows"


def test_ragged_csv_names_the_row_and_the_delimiter(tmp_path):
    source = write(tmp_path, "a,b,y\n1,x,1\n2,y\n3,z,0\n")
    with pytest.raises(IngestError) as err:
        run_ingest(tmp_path, source)
    assert one_line(err) == (
        f"{source!r} could not be parsed as csv: CSV parse error: Expected 3 columns, got 2: 2,y; "
        "check ingest.delimiter (',') and quoting"
    )


def test_duplicate_column_is_named_before_the_run(tmp_path):
    source = write(tmp_path, "a,a,y\n" + ROWS)
    with pytest.raises(IngestError) as err:
        check(config(source))
    assert one_line(err) == (
        f"{source!r}: column names collide ('a' appears 2 times); rename columns so each name is unique"
    )


def test_unicode_column_names_keep_their_letters_and_collisions_name_the_originals(tmp_path):
    source = write(tmp_path, "職業,Catégorie,Cat-gorie,y\n" + "".join(f"u{i % 3},c{i % 2},d,{i % 2}\n" for i in range(60)))
    result = run_ingest(tmp_path, source)
    assert list(result.columns) == ["職業", "catégorie", "cat_gorie", "y"]
    assert list(pd.read_parquet(result.train_path).columns) == ["職業", "catégorie", "cat_gorie", "y"]

    clash = write(tmp_path, "Catégorie,CATÉGORIE,y\n" + ROWS, "clash.csv")
    with pytest.raises(IngestError) as err:
        check(config(clash))
    assert one_line(err) == (
        f"{clash!r}: column names collide ('Catégorie', 'CATÉGORIE' all become 'catégorie'); "
        "rename columns so each name is unique"
    )
    nameless = write(tmp_path, "a,???,y\n" + ROWS, "nameless.csv")
    with pytest.raises(IngestError) as err:
        check(config(nameless))
    assert one_line(err) == (
        f"{nameless!r}: column 2 ('???') has no letter or digit to name it by; give it a name in the header"
    )


def test_a_label_with_one_class_names_its_values(tmp_path):
    source = write(tmp_path, "a,y\n" + "".join(f"{i},<=50K\n" for i in range(50)))
    with pytest.raises(IngestError) as err:
        run_ingest(tmp_path, source, positive_labels=[">50k"])
    assert one_line(err) == (
        "label 'y' has one class: every row is '<=50K' (50 rows); check positive_labels=['>50k'] against them"
    )


def small_adult(tmp_path, positives: int) -> str:
    """200 Adult rows, ``positives`` of them >50K, with the header the Adult docs give."""
    lines = gzip.open(ADULT / "adult.data.gz", "rt").read().splitlines()
    rich = [line for line in lines if line.endswith(">50K")][:positives]
    rest = [line for line in lines if line.endswith("<=50K")][: 200 - positives]
    header = ("age, workclass, fnlwgt, education, education-num, marital-status, occupation, relationship, race, sex, "
              "capital-gain, capital-loss, hours-per-week, native-country, income")
    return write(tmp_path, "\n".join([header, *rest[:100], *rich, *rest[100:]]) + "\n", f"adult{positives}.csv")


def test_small_imbalanced_data_is_split_stratified_and_trains(tmp_path):
    source = small_adult(tmp_path, 8)
    data = DataSpec(source=source, label="income", positive_labels=[">50K"])
    result = ingest(data, IngestConfig(na_values=["?"]), tmp_path / "tr.parquet", tmp_path / "te.parquet")
    assert result.label_counts == {"train": {">50K": 6, "<=50K": 154}, "test": {">50K": 2, "<=50K": 38}}
    trained = train(result.train_path, Task.from_json(result.task), TrainConfig(epochs=1), tmp_path / "model")
    assert trained.val_rows == 16 and 0.0 <= trained.val_score <= 1.0


def test_a_class_too_rare_to_split_or_train_on_is_named_with_its_count(tmp_path):
    source = small_adult(tmp_path, 2)
    data = DataSpec(source=source, label="income", positive_labels=[">50K"])
    with pytest.raises(IngestError) as err:
        ingest(data, IngestConfig(na_values=["?"]), tmp_path / "tr.parquet", tmp_path / "te.parquet")
    assert one_line(err) == (
        f"label 'income': class '>50K' is too rare to split: 2 rows in {source!r}, 0 of them in the test split, "
        "which needs at least 1 (ingest.test_fraction 0.2 puts about one row of each class in 5 in the test split): "
        "add '>50K' rows, drop them (ingest.na_values), or give data.test_source"
    )
    frame = pd.DataFrame({"a": np.arange(40.0), "y": np.where(np.arange(40) == 39, "1", "0")})
    frame.to_parquet(tmp_path / "one.parquet")
    with pytest.raises(TrainDataError) as err:
        train(tmp_path / "one.parquet", BINARY_Y, TrainConfig(epochs=1), tmp_path / "model")
    assert one_line(err) == (
        "label 'y': class '1' has 1 row(s) in the train split of 40; training needs at least 2 of each "
        "class (one to fit, one to validate): add rows of that class"
    )


def test_blank_labels_are_missing_and_the_label_mapping_is_recorded(tmp_path):
    rows = ["a,y"] + [f"{i},{'>50K' if i % 4 == 0 else '<=50K'}" for i in range(80)] + ["80,", "81, ", "82,?", "83,maybe"]
    source = write(tmp_path, "\n".join(rows) + "\n")
    result = run_ingest(tmp_path, source, positive_labels=[">50K"])
    assert result.dropped_unlabelled == 3  # blank, blank after trimming, and the NA token
    assert result.label_mapping == {">50K": {">50K": 20}, "<=50K": {"<=50K": 60, "maybe": 1}}
    assert result.train_rows + result.test_rows == 81
    with pytest.raises(IngestError) as err:
        run_ingest(tmp_path, source, positive_labels=[">50K"], negative_labels=["<=50K"])
    assert one_line(err) == (
        f"{source!r}: label 'y' has values in neither positive_labels ['>50K'] nor negative_labels ['<=50K']: "
        "'maybe' (1 rows); add each to one of the lists, or to ingest.na_values to drop its rows"
    )


def test_missing_source_and_directory_as_source_fail_before_the_run(tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(IngestError) as err:
        check(config(missing))
    assert one_line(err) == (
        f"no such file: {missing!r}; check the path (a config file's relative paths are relative to it)"
    )
    (tmp_path / "folder.csv").mkdir()
    folder = str(tmp_path / "folder.csv")
    for call in (lambda: check(config(folder)), lambda: run_ingest(tmp_path, folder)):
        with pytest.raises(IngestError) as err:
            call()
        assert one_line(err) == f"{folder!r} is a directory; name one data file (CSV, Parquet or JSON Lines) instead"


def test_residency_refusal_fails_before_the_run_on_one_line(tmp_path):
    source = write(tmp_path, "a,b,y\n" + ROWS)
    policy = {"allowed_locations": [str(tmp_path / "uae")], "allowed_regions": ["me-central-1"]}
    with pytest.raises(ResidencyError) as err:
        check(config(source, residency=policy, mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'uae' / 'm.db'}"}))
    message = one_line(err)
    assert message.startswith(f"1 location(s) break the data residency policy: read: {source} refused: resolves to ")
    assert message.endswith("; move the data to an allowed location or change the residency settings")


def test_all_null_label_and_all_null_column_are_named(tmp_path):
    null_label = write(tmp_path, "a,y\n" + "".join(f"{i},?\n" for i in range(50)), "nolabel.csv")
    with pytest.raises(IngestError) as err:
        run_ingest(tmp_path, null_label)
    assert one_line(err) == (
        f"{null_label!r}: every row's label 'y' is missing (50 rows null, blank or one of ingest.na_values ['?']); "
        "check data.label names the label column"
    )
    null_column = write(tmp_path, "a,b,y\n" + "".join(f"{i},?,{i % 2}\n" for i in range(50)), "nullcol.csv")
    with pytest.raises(IngestError) as err:
        run_ingest(tmp_path, null_column)
    assert one_line(err) == (
        f"{null_column!r}: columns ['b'] have no values (every row is null or an NA token); drop them with "
        "ingest.drop_columns or fill them in"
    )


def test_expectations_and_excluded_features_naming_missing_columns_fail_before_the_run(tmp_path):
    source = write(tmp_path, "Age,b,y\n" + ROWS)
    expectations = [{"type": "expect_column_values_to_be_between", "kwargs": {"column": "agee", "min_value": 0}}]
    with pytest.raises(ConfigError) as err:
        check(config(source, validate={"expectations": expectations}))
    assert one_line(err) == (
        f"validate.expectations[0] expect_column_values_to_be_between names column 'agee', which {source!r} does not "
        "have; it has ['age', 'b', 'y'] (expectations name columns by their normalised snake_case names)"
    )
    with pytest.raises(ConfigError) as err:
        check(config(source, train={"exclude_features": ["B"]}))
    assert one_line(err) == (
        f"train.exclude_features names ['B'], which {source!r} does not have; it has ['age', 'b', 'y'] "
        "(use the normalised snake_case names)"
    )
    # the validate stage says the same before Great Expectations runs
    frame = pd.DataFrame({"age": [1, 2], "y": [0, 1]})
    with pytest.raises(ConfigError, match="names column 'agee', which the reference \\(train\\) split does not have"):
        validate({"train": frame}, ValidateConfig(expectations=[Expectation(**expectations[0])]), BINARY_Y)


def test_a_test_source_lacking_train_columns_fails_before_the_run(tmp_path):
    source = write(tmp_path, "a,b,y\n" + ROWS)
    test_source = write(tmp_path, "a,y\n1,0\n", "test.csv")
    with pytest.raises(IngestError) as err:
        check(config(source, data={"test_source": test_source}))
    assert one_line(err) == (
        f"{test_source!r} is missing columns ['b']; it has ['a', 'y'] ('b' is named by the train source; names are "
        "compared after normalising to snake_case)"
    )


def test_a_stage_that_raises_marks_the_mlflow_run_failed_with_the_error(tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    from kfmlops.tracking import ERROR_TAG, failed_on_error, start_run

    frame = pd.DataFrame({"age": np.arange(40.0), "y": np.where(np.arange(40) == 39, "1", "0")})
    frame.to_parquet(tmp_path / "one.parquet")
    bad = ValidateConfig(expectations=[Expectation(type="expect_column_to_exist", kwargs={"column": "agee"})])
    crashes = {
        "ConfigError": lambda: validate({"train": frame}, bad, BINARY_Y),
        "TrainDataError": lambda: train(tmp_path / "one.parquet", BINARY_Y, TrainConfig(epochs=1), tmp_path / "model"),
    }
    client = MlflowClient(mlflow_store.tracking_uri)
    for name, crash in crashes.items():
        run_id = start_run(mlflow_store, run_name=name, tags={})
        with pytest.raises(Exception, match=".") as err:
            with failed_on_error(mlflow_store, run_id):
                crash()
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags[ERROR_TAG] == f"{name}: {err.value}"


def test_serve_with_no_store_fails_without_creating_anything(tmp_path, monkeypatch, capsys):
    from kfmlops.serving.server import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KFMLOPS_HOME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main([]) == 2
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.strip() == (
        f"kfmlops serve: no MLflow store at {tmp_path / '.kfmlops' / 'mlflow.db'}: train a model first "
        "(`kfmlops run`), or point --config, --tracking-uri or $KFMLOPS_HOME at the store, or serve --model-dir"
    )

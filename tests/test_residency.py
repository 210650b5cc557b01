"""Data residency: local and remote locations, prefix confusion, '..' escapes, all-or-nothing enforcement."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from kfmlops.residency import ResidencyError, ResidencyPolicy, ResidencyVerdict, check, enforce, residency_record


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def policy(data_root) -> ResidencyPolicy:
    return ResidencyPolicy(
        allowed_regions=["me-central-1", "uaenorth"],
        allowed_locations=["s3://uae-bucket/", "http://mlflow.kfmlops.svc", f"file://{data_root}/", "/mnt/"],
        bucket_regions={"uae-models": "me-central-1", "us-bucket": "us-east-1", "gs://uae-gcs": "me-central2"},
    )


@pytest.mark.parametrize(
    "uri",
    [
        "s3://uae-bucket/adult/train.csv",
        "s3://uae-bucket",
        "S3://UAE-BUCKET/x",
        "http://mlflow.kfmlops.svc",
        "http://mlflow.kfmlops.svc:5000/api/2.0/mlflow",
        "s3://uae-models/registry/model/1",
        "/mnt/models/adult",
        "/mnt",
    ],
)
def test_allowed_locations(uri, policy):
    verdict = check(uri, policy, purpose="read data")
    assert verdict.allowed, verdict.reason


def test_local_paths_under_an_allowed_directory(data_root, policy, monkeypatch):
    assert check(str(data_root / "train.csv"), policy, purpose="read data").allowed
    assert check(f"file://{data_root}/train.parquet", policy, purpose="read data").allowed
    assert check(f"sqlite:///{data_root}/mlflow.db", policy, purpose="mlflow").allowed
    monkeypatch.chdir(data_root)
    assert check("relative/train.csv", policy, purpose="read data").allowed
    assert check("sqlite:///mlflow.db", policy, purpose="mlflow").allowed


@pytest.mark.parametrize(
    "uri, why",
    [
        ("s3://uae-bucket-evil/adult.csv", "no configured region"),
        ("s3://uae-bucket.attacker.com/adult.csv", "no configured region"),
        ("http://mlflow.kfmlops.svc@evil.example.com/", "'evil.example.com' has no configured region"),
        ("https://mlflow.kfmlops.svc/", "no configured region"),  # scheme differs from the allowed prefix
        ("gs://uae-bucket/adult.csv", "no configured region"),
        ("s3://us-bucket/adult.csv", "region 'us-east-1', which is not an allowed region"),
        ("gs://uae-gcs/x", "region 'me-central2'"),
        ("s3://uae-bucket/../other/x", "'..' segment"),
        ("s3://uae-bucket/a/%2E%2E/x", "'..' segment"),
        ("s3:///no-host", "names no host"),
        ("databricks", "hosted remote service"),
        ("", "empty location"),
        ("/etc/passwd", "under no allowed local location"),
        ("/mntx/data", "under no allowed local location"),
        ("/mnt/../etc/shadow", "resolves to /etc/shadow"),
        ("sqlite:////var/lib/mlflow.db", "resolves to /var/lib/mlflow.db"),
        ("file://fileserver/share/x.csv", "'fileserver' has no configured region"),
    ],
)
def test_denied_locations(uri, why, policy):
    verdict = check(uri, policy, purpose="write artifacts")
    assert not verdict.allowed
    assert why in verdict.reason
    # The reason names the purpose, the URI and the allowed set.
    assert verdict.reason.startswith(f"write artifacts: {uri} refused")
    assert "allowed locations: s3://uae-bucket/, http://mlflow.kfmlops.svc" in verdict.reason
    assert "allowed regions: me-central-1, uaenorth" in verdict.reason


def test_prefix_confusion_on_a_path_prefix():
    policy = ResidencyPolicy(allowed_locations=["s3://shared/uae/"])
    assert check("s3://shared/uae/train.csv", policy, purpose="read data").allowed
    assert not check("s3://shared/uae-evil/train.csv", policy, purpose="read data").allowed
    assert not check("s3://shared/uaex", policy, purpose="read data").allowed


def test_dotdot_escape_from_an_allowed_directory(data_root, tmp_path, policy):
    (tmp_path / "secret").mkdir()
    escape = f"{data_root}/../secret/x.csv"
    verdict = check(escape, policy, purpose="read data")
    assert not verdict.allowed and str(tmp_path / "secret" / "x.csv") in verdict.reason
    assert not check(f"file://{escape}", policy, purpose="read data").allowed


def test_symlink_escape_from_an_allowed_directory(data_root, tmp_path, policy):
    (tmp_path / "secret").mkdir()
    (data_root / "link").symlink_to(tmp_path / "secret", target_is_directory=True)
    assert not check(str(data_root / "link" / "x.csv"), policy, purpose="read data").allowed


def test_local_paths_refused_when_not_allowed(data_root):
    policy = ResidencyPolicy(allowed_locations=[str(data_root)], allow_local=False)
    verdict = check(str(data_root / "x.csv"), policy, purpose="read data")
    assert not verdict.allowed and "allow_local is false" in verdict.reason


def test_local_paths_free_when_no_local_location_is_listed():
    policy = ResidencyPolicy(allowed_locations=["s3://uae-bucket/"])
    assert check("/anywhere/x.csv", policy, purpose="read data").allowed
    assert check("sqlite:///mlflow.db", policy, purpose="mlflow").allowed


def test_no_policy_allows_everything():
    verdict = check("s3://anywhere/x", None, purpose="read data")
    assert verdict == ResidencyVerdict("s3://anywhere/x", "read data", True, "no residency policy")
    assert enforce({"read data": ["s3://a/x", "/b"]}, None)[1].reason == "no residency policy"


def test_empty_policy_allows_local_and_refuses_remote():
    policy = ResidencyPolicy()
    assert check("/tmp/x", policy, purpose="read data").allowed
    assert not check("s3://uae-bucket/x", policy, purpose="read data").allowed


def test_passwords_are_masked(policy):
    verdict = check("postgresql://mlflow:hunter2@db.us.example.com:5432/mlflow", policy, purpose="mlflow")
    assert not verdict.allowed
    assert "hunter2" not in verdict.uri and "hunter2" not in verdict.reason
    assert verdict.uri == "postgresql://mlflow:***@db.us.example.com:5432/mlflow"


def test_enforce_returns_every_verdict_when_all_allowed(data_root, policy):
    verdicts = enforce(
        {
            "read data": [str(data_root / "train.csv"), str(data_root / "test.csv")],
            "test data": None,
            "mlflow": "http://mlflow.kfmlops.svc",
            "model storage": "s3://uae-models/adult/3",
        },
        policy,
    )
    assert [(v.purpose, v.allowed) for v in verdicts] == [
        ("read data", True), ("read data", True), ("mlflow", True), ("model storage", True)
    ]


def test_enforce_lists_every_violation_before_anything_is_written(data_root, tmp_path, policy):
    out = tmp_path / "artifacts"  # outside the allowed data root
    with pytest.raises(ResidencyError) as exc:
        enforce(
            {
                "read data": [str(data_root / "train.csv"), "s3://uae-bucket-evil/test.csv"],
                "write artifacts": str(out),
                "mlflow": "https://tracking.us.example.com",
                "model storage": "s3://uae-bucket/models/adult",
            },
            policy,
        )
    refused = [(v.purpose, v.uri) for v in exc.value.violations]
    assert refused == [
        ("read data", "s3://uae-bucket-evil/test.csv"),
        ("write artifacts", str(out)),
        ("mlflow", "https://tracking.us.example.com"),
    ]
    message = str(exc.value)
    assert message.startswith("3 location(s) break the data residency policy")
    assert "\n" not in message and message.count(policy.describe()) == 1
    assert message.endswith("; move the data to an allowed location or change the residency settings")
    for _, uri in refused:
        assert uri in message
    assert not out.exists()


def test_verdicts_are_json_safe_for_provenance(policy):
    verdicts = [check("s3://uae-bucket/x", policy, purpose="read data"), check("/etc", policy, purpose="mlflow")]
    assert verdicts[0].to_json() == {
        "uri": "s3://uae-bucket/x", "purpose": "read data", "allowed": True,
        "reason": "read data: s3://uae-bucket/x is under allowed location s3://uae-bucket/",
    }
    record = residency_record(policy, verdicts)
    assert json.loads(json.dumps(record)) == record
    assert record["policy"]["allowed_regions"] == ["me-central-1", "uaenorth"]
    assert [v["allowed"] for v in record["verdicts"]] == [True, False]
    assert residency_record(None, [])["policy"] is None


def test_policy_is_strict():
    with pytest.raises(ValidationError, match="allowed_location"):
        ResidencyPolicy(allowed_location=["s3://x/"])
    with pytest.raises(ValidationError, match="names no host"):
        ResidencyPolicy(allowed_locations=["s3:///x"])
    with pytest.raises(ValidationError, match=r"'\.\.' segment"):
        ResidencyPolicy(allowed_locations=["s3://b/../c"])
    with pytest.raises(ValidationError, match="non-empty"):
        ResidencyPolicy(bucket_regions={"b": ""})
    policy = ResidencyPolicy(bucket_regions={"UAE-Bucket": "me-central-1"}, allowed_regions=["me-central-1"])
    assert policy.bucket_regions == {"uae-bucket": "me-central-1"}
    assert check("s3://uae-bucket/x", policy, purpose="read data").allowed
    with pytest.raises(ValidationError):
        policy.allow_local = False  # frozen
    assert ResidencyPolicy.model_validate(policy.model_dump(mode="json")) == policy

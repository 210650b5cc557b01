"""Signed provenance: real Ed25519 keys, real model files in tmp_path."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os

import pytest

from kfmlops import provenance as pv
from kfmlops.provenance import (
    PROVENANCE_FILE,
    Provenance,
    ProvenanceError,
    SignatureError,
    SignedProvenance,
    SigningKeyError,
    TamperedArtifactError,
    UnblessedModelError,
    UnsignedModelError,
)


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return pv.generate_keypair()


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    (d / "data").mkdir(parents=True)
    (d / "MLmodel").write_text("flavors: {}\n")
    (d / "data" / "model.pth").write_bytes(os.urandom(4096) + b"weights")
    (d / "requirements.txt").write_text("torch\n")
    return d


def _record(**overrides) -> Provenance:
    base = dict(
        model_name="adult-income",
        model_version="3",
        dataset_fingerprint="ab" * 32,
        code_commit="8beb4fe",
        config_hash="cd" * 32,
        pipeline_run_id="run-123",
        metrics={"roc_auc": 0.91, "pr_auc": 0.77},
        gates={
            "evaluate": {"passed": True, "reasons": []},
            "fairness": {"passed": True, "reasons": []},
        },
        residency={"policy": None, "verdicts": []},
    )
    return Provenance(**(base | overrides))


def test_digest_tree_streams_every_file_sorted_and_skips_its_own_record(model_dir):
    (model_dir / PROVENANCE_FILE).write_text("{}")
    digests = pv.digest_tree(model_dir)
    assert list(digests) == ["MLmodel", "data/model.pth", "requirements.txt"]
    assert digests["data/model.pth"] == hashlib.sha256((model_dir / "data" / "model.pth").read_bytes()).hexdigest()
    assert pv.digest_tree(model_dir) == digests


def test_digest_tree_refuses_symlinks(model_dir, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    (model_dir / "data" / "link.bin").symlink_to(outside)
    with pytest.raises(ProvenanceError, match=r"data/link\.bin is a symlink"):
        pv.digest_tree(model_dir)


def test_digest_tree_refuses_symlinked_directory(model_dir, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (model_dir / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ProvenanceError, match="sub is a symlink"):
        pv.digest_tree(model_dir)


def test_record_json_round_trip_and_canonical_bytes():
    prov = _record()
    assert Provenance.from_json(prov.to_json()) == prov
    canonical = prov.canonical_bytes()
    assert b" " not in canonical and b"\n" not in canonical
    assert canonical == json.dumps(json.loads(canonical), sort_keys=True, separators=(",", ":")).encode()
    assert prov.created_at.endswith("+00:00")


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"metrics": {"roc_auc": float("nan")}}, "metrics.roc_auc"),
        ({"gates": {"evaluate": {"passed": "yes", "reasons": []}}}, "gates.evaluate"),
        ({"model_name": ""}, "model_name"),
        ({"created_at": "2026-01-01T00:00:00+04:00"}, "created_at"),
        ({"artifacts": {"a": "short"}}, "artifacts.a"),
    ],
)
def test_record_validation_names_the_field(overrides, field):
    with pytest.raises(ProvenanceError, match=field.replace(".", r"\.")):
        _record(**overrides)


def test_from_json_refuses_unknown_and_missing_fields():
    raw = json.loads(_record().to_json())
    with pytest.raises(ProvenanceError, match="unknown fields"):
        Provenance.from_json(json.dumps(raw | {"approved_by": "me"}))
    del raw["config_hash"]
    with pytest.raises(ProvenanceError, match=r"missing fields \['config_hash'\]"):
        Provenance.from_json(json.dumps(raw))


def test_sign_verify_round_trip(model_dir, keys):
    private, public = keys
    signed = pv.sign_model_dir(model_dir, _record(), private)
    assert signed.key_id == pv.key_id(public) and len(signed.key_id) == 16
    assert set(signed.record.artifacts) == {"MLmodel", "data/model.pth", "requirements.txt"}
    assert pv.read(model_dir / PROVENANCE_FILE) == signed
    assert SignedProvenance.from_json(signed.to_json()) == signed
    assert not [p.name for p in model_dir.iterdir() if p.name.endswith(".tmp")]

    verified = pv.verify(model_dir, public)
    assert verified == signed.record
    assert verified.metrics == {"roc_auc": 0.91, "pr_auc": 0.77}


def test_tampered_byte_is_refused_naming_the_file(model_dir, keys):
    private, public = keys
    pv.sign_model_dir(model_dir, _record(), private)
    weights = model_dir / "data" / "model.pth"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(TamperedArtifactError, match=r"changed: data/model\.pth") as exc:
        pv.verify(model_dir, public)
    assert exc.value.changed == ["data/model.pth"] and exc.value.missing == [] and exc.value.extra == []


def test_added_file_is_refused(model_dir, keys):
    private, public = keys
    pv.sign_model_dir(model_dir, _record(), private)
    (model_dir / "data" / "backdoor.py").write_text("import os\n")
    with pytest.raises(TamperedArtifactError, match=r"extra: data/backdoor\.py") as exc:
        pv.verify(model_dir, public)
    assert exc.value.extra == ["data/backdoor.py"]


def test_removed_file_is_refused(model_dir, keys):
    private, public = keys
    pv.sign_model_dir(model_dir, _record(), private)
    (model_dir / "requirements.txt").unlink()
    with pytest.raises(TamperedArtifactError, match=r"missing: requirements\.txt"):
        pv.verify(model_dir, public)


def test_unsigned_model_is_refused(model_dir, keys):
    with pytest.raises(UnsignedModelError, match="provenance.json does not exist"):
        pv.verify(model_dir, keys[1])


def test_wrong_key_is_refused_naming_both_key_ids(model_dir, keys):
    private, _ = keys
    _, other_public = pv.generate_keypair()
    signed = pv.sign_model_dir(model_dir, _record(), private)
    expected = pv.key_id(other_public)
    with pytest.raises(SignatureError, match=f"signed by key {signed.key_id}, but the verify key is {expected}"):
        pv.verify(model_dir, other_public)


def test_key_id_swapped_to_the_trusted_key_is_still_refused(model_dir, keys):
    # An attacker signs with their own key but writes the trusted key's id into the file.
    private, public = keys
    attacker_private, _ = pv.generate_keypair()
    forged = pv.sign(dataclasses.replace(_record(), artifacts=pv.digest_tree(model_dir)), attacker_private)
    pv.write(dataclasses.replace(forged, key_id=pv.key_id(public)), model_dir / PROVENANCE_FILE)
    with pytest.raises(SignatureError, match="does not match the record"):
        pv.verify(model_dir, public)


def test_modified_record_is_refused(model_dir, keys):
    private, public = keys
    pv.sign_model_dir(model_dir, _record(gates={"fairness": {"passed": False, "reasons": ["eo diff 0.31 > 0.2"]}}), private)
    path = model_dir / PROVENANCE_FILE
    doc = json.loads(path.read_text())
    doc["record"]["gates"]["fairness"] = {"passed": True, "reasons": []}
    path.write_text(json.dumps(doc))
    with pytest.raises(SignatureError, match="modified after signing"):
        pv.verify(model_dir, public)
    with pytest.raises(SignatureError):
        pv.verify(model_dir, public, require_blessed=False)


def test_modified_digest_in_record_is_refused(model_dir, keys):
    # Re-pointing a digest at swapped weights must break the signature, not pass the file check.
    private, public = keys
    pv.sign_model_dir(model_dir, _record(), private)
    (model_dir / "data" / "model.pth").write_bytes(b"other weights")
    path = model_dir / PROVENANCE_FILE
    doc = json.loads(path.read_text())
    doc["record"]["artifacts"]["data/model.pth"] = hashlib.sha256(b"other weights").hexdigest()
    path.write_text(json.dumps(doc))
    with pytest.raises(SignatureError):
        pv.verify(model_dir, public)


def test_garbled_signature_is_refused(model_dir, keys):
    private, public = keys
    signed = pv.sign_model_dir(model_dir, _record(), private)
    pv.write(dataclasses.replace(signed, signature="not base64!"), model_dir / PROVENANCE_FILE)
    with pytest.raises(SignatureError):
        pv.verify(model_dir, public)
    flipped = bytearray(base64.b64decode(signed.signature))
    flipped[0] ^= 0x80
    pv.write(dataclasses.replace(signed, signature=base64.b64encode(bytes(flipped)).decode()), model_dir / PROVENANCE_FILE)
    with pytest.raises(SignatureError):
        pv.verify(model_dir, public)


def test_unblessed_model_refused_unless_blessing_not_required(model_dir, keys):
    private, public = keys
    gates = {
        "evaluate": {"passed": True, "reasons": []},
        "fairness": {"passed": False, "reasons": ["equalized_odds_difference 0.31 > 0.2 (sex)"]},
    }
    pv.sign_model_dir(model_dir, _record(gates=gates), private)
    with pytest.raises(UnblessedModelError, match=r"fairness: equalized_odds_difference 0\.31 > 0\.2 \(sex\)") as exc:
        pv.verify(model_dir, public)
    assert exc.value.failed == {"fairness": ["equalized_odds_difference 0.31 > 0.2 (sex)"]}
    assert pv.verify(model_dir, public, require_blessed=False).gates == gates


def test_record_without_gates_is_not_blessed(model_dir, keys):
    private, public = keys
    pv.sign_model_dir(model_dir, _record(gates={}), private)
    with pytest.raises(UnblessedModelError, match="no gate verdicts"):
        pv.verify(model_dir, public)
    assert pv.verify(model_dir, public, require_blessed=False).gates == {}


def test_resigning_replaces_the_record(model_dir, keys):
    private, public = keys
    pv.sign_model_dir(model_dir, _record(), private)
    (model_dir / "extra.json").write_text("{}")
    pv.sign_model_dir(model_dir, _record(model_version="4"), private)
    assert pv.verify(model_dir, public).model_version == "4"


def test_malformed_provenance_file_is_refused(model_dir, keys):
    (model_dir / PROVENANCE_FILE).write_text("not json")
    with pytest.raises(ProvenanceError, match="not valid JSON"):
        pv.verify(model_dir, keys[1])
    (model_dir / PROVENANCE_FILE).write_text('{"record": {}}')
    with pytest.raises(ProvenanceError, match="expected fields"):
        pv.verify(model_dir, keys[1])


def test_missing_model_dir_is_refused(tmp_path, keys):
    with pytest.raises(ProvenanceError, match="model directory not found"):
        pv.verify(tmp_path / "nope", keys[1])


def test_keys_load_from_secret_file(tmp_path, keys, monkeypatch):
    private, public = keys
    monkeypatch.delenv(pv.SIGNING_KEY_ENV, raising=False)
    (tmp_path / "signing.pem").write_bytes(private)
    (tmp_path / "verify.pem").write_bytes(public)
    assert pv.load_private_key(tmp_path / "signing.pem") == private
    assert pv.load_public_key(str(tmp_path / "verify.pem")) == public


def test_keys_load_from_env(model_dir, keys, monkeypatch):
    private, public = keys
    monkeypatch.setenv(pv.SIGNING_KEY_ENV, private.decode())
    monkeypatch.setenv(pv.VERIFY_KEY_ENV, public.decode())
    pv.sign_model_dir(model_dir, _record(), pv.load_private_key())
    assert pv.verify(model_dir, pv.load_public_key()).model_name == "adult-income"


def test_missing_or_bad_keys_have_clear_errors(tmp_path, keys, monkeypatch):
    monkeypatch.delenv(pv.SIGNING_KEY_ENV, raising=False)
    monkeypatch.delenv(pv.VERIFY_KEY_ENV, raising=False)
    with pytest.raises(SigningKeyError, match=r"no signing key.*\$KFMLOPS_SIGNING_KEY"):
        pv.load_private_key()
    with pytest.raises(SigningKeyError, match=r"no verify key.*\$KFMLOPS_VERIFY_KEY"):
        pv.load_public_key()
    with pytest.raises(SigningKeyError, match="signing key file not found"):
        pv.load_private_key(tmp_path / "absent.pem")
    monkeypatch.setenv(pv.VERIFY_KEY_ENV, "garbage")
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        pv.load_public_key()
    # A public key where the private one belongs (and vice versa) is refused, not misused.
    (tmp_path / "swapped.pem").write_bytes(keys[1])
    with pytest.raises(SigningKeyError):
        pv.load_private_key(tmp_path / "swapped.pem")


def test_non_ed25519_key_is_refused():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(SigningKeyError, match="must be Ed25519"):
        pv.sign(_record(), pem)


def test_write_is_atomic_on_failure(tmp_path, keys, monkeypatch):
    signed = pv.sign(_record(), keys[0])
    target = tmp_path / PROVENANCE_FILE
    pv.write(signed, target)
    before = target.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pv.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        pv.write(pv.sign(_record(model_version="9"), keys[0]), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [PROVENANCE_FILE]

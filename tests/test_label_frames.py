"""Label frames and signatures (pure code): decoding subscribeLabels frames, checking
labels against a labeler key on both curves, and refusing what atproto refuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from atcdn.ingest.frames import ErrorFrame, FrameError, Info
from atcdn.ingest.label_frames import Labels, decode
from atcdn.ingest.label_keys import LabelKeyError, label_key, parse_multikey, verify
from libipld import encode_dag_cbor

from tests.helpers.labeler import Signer, info_frame, labels_frame, now_iso

LABELER = "did:plc:labelerlabelerlabelerlab"
ALICE = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
POST = f"at://{ALICE}/app.bsky.feed.post/3kabc"


@pytest.mark.parametrize("curve", ["secp256k1", "p256"])
def test_good_signature_verifies_on_both_curves(curve: str) -> None:
    signer = Signer(curve)
    key = label_key(signer.did_document(LABELER), LABELER)
    assert verify(key, signer.label(LABELER, POST))
    assert verify(key, signer.label(LABELER, ALICE, neg=True))


def test_bad_signatures_are_refused() -> None:
    signer, other = Signer(), Signer()
    key = label_key(signer.did_document(LABELER), LABELER)
    assert not verify(key, signer.label(LABELER, POST, tamper=True))
    assert not verify(key, other.label(LABELER, POST))  # another key
    assert not verify(key, signer.label(LABELER, POST, high_s=True))  # malleated
    label = signer.label(LABELER, POST)
    assert not verify(key, {**label, "val": "!hide"})  # changed after signing
    assert not verify(key, {**label, "sig": label["sig"][:63]})
    assert not verify(key, {**label, "sig": "not bytes"})
    assert not verify(key, {k: v for k, v in label.items() if k != "sig"})


def test_neg_false_is_accepted_either_way() -> None:
    """Ozone omits ``neg: false`` before signing; a label that carries it still verifies."""
    signer = Signer()
    key = label_key(signer.did_document(LABELER), LABELER)
    label = signer.label(LABELER, POST)
    assert verify(key, {**label, "neg": False})


def test_key_from_did_document() -> None:
    signer = Signer("p256")
    doc = signer.did_document(LABELER)
    with pytest.raises(LabelKeyError):
        label_key(doc, "did:plc:someoneelse")
    with pytest.raises(LabelKeyError):
        label_key({**doc, "verificationMethod": []}, LABELER)
    assert parse_multikey("did:key:" + signer.multikey())
    for bad in ("", "zzzz", "f00", "z" + "1" * 300):
        with pytest.raises(LabelKeyError):
            parse_multikey(bad)


def test_decode_labels_info_and_errors() -> None:
    signer = Signer()
    good = signer.label(LABELER, POST)
    batch = decode(labels_frame(7, good, {"src": LABELER}, "junk",
                                {**good, "uri": "at://alice.example/app.bsky.feed.post/x"},
                                {**good, "cts": "yesterday"}))
    assert isinstance(batch, Labels) and batch.seq == 7
    assert [label.uri for label in batch.labels] == [POST]
    assert batch.rejected == ["bad_label"] * 4
    label = batch.labels[0]
    assert label.is_record and label.subject_did == ALICE
    assert isinstance(decode(info_frame("OutdatedCursor")), Info)
    error = decode(encode_dag_cbor({"op": -1}) + encode_dag_cbor({"error": "FutureCursor"}))
    assert isinstance(error, ErrorFrame) and error.error == "FutureCursor"
    for frame, reason in [(b"\xff\x00", "bad_cbor"), ("text", "not_binary"),
                          (encode_dag_cbor({"op": 1, "t": "#labels"}), "bad_shape"),
                          (encode_dag_cbor({"op": 1, "t": "#labels"}) + encode_dag_cbor(
                              {"seq": -1, "labels": []}), "bad_seq"),
                          (encode_dag_cbor({"op": 1, "t": "#future"}) + encode_dag_cbor(
                              {"seq": 1}), "unknown_kind")]:
        with pytest.raises(FrameError) as info:
            decode(frame)  # type: ignore[arg-type]
        assert info.value.reason == reason


def test_expired_labels_count_as_negated() -> None:
    signer = Signer()
    now = datetime.now(UTC)
    live = decode(labels_frame(1, signer.label(LABELER, POST, exp=now_iso(3600))))
    gone = decode(labels_frame(2, signer.label(LABELER, POST, exp=now_iso(-1))))
    neg = decode(labels_frame(3, signer.label(LABELER, POST, neg=True)))
    assert isinstance(live, Labels) and live.labels[0].active(now)
    assert isinstance(gone, Labels) and not gone.labels[0].active(now)
    assert isinstance(neg, Labels) and not neg.labels[0].active(now)


def test_legacy_key_types_in_plc_documents() -> None:
    """PLC documents list keys as ``EcdsaSecp256k1VerificationKey2019`` with the bare
    (uncompressed) point, as the reference network's Ozone DID shows."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from multiformats import multibase

    signer = Signer()
    point = signer.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    doc = signer.did_document(LABELER)
    doc["verificationMethod"] = [{"id": "#atproto_label",
                                  "type": "EcdsaSecp256k1VerificationKey2019",
                                  "controller": LABELER,
                                  "publicKeyMultibase": multibase.encode(point, "base58btc")}]
    assert verify(label_key(doc, LABELER), signer.label(LABELER, POST))
    doc["verificationMethod"][0]["publicKeyMultibase"] = "z111"
    with pytest.raises(LabelKeyError):
        label_key(doc, LABELER)

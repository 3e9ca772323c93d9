"""Label signatures: the labeler's ``#atproto_label`` key and checking a label against it.

Pure code, no I/O. A labeler signs each label over the DAG-CBOR encoding of the label
without its ``sig`` field (``packages/ozone/src/mod-service/util.ts`` ``signLabel``): the
SHA-256 of those bytes, ECDSA on secp256k1 or P-256, the signature as 64 bytes ``r || s``
with a low ``s`` (atproto refuses high-S and DER signatures: ``@atproto/crypto`` verifies
with ``lax: false``). Keys are multibase (``z`` + base58btc) multicodec-prefixed compressed
points, as ``publicKeyMultibase`` of a ``Multikey`` verification method or a ``did:key``.
"""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from libipld import encode_dag_cbor
from multiformats import multibase, multicodec

LabelKey = ec.EllipticCurvePublicKey

_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    # multicodec name -> (curve, group order n)
    "secp256k1-pub": (ec.SECP256K1(),
                      0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141),
    "p256-pub": (ec.SECP256R1(),
                 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551),
}


class LabelKeyError(ValueError):
    """A DID document or key string that yields no usable label key."""


def parse_multikey(text: str) -> LabelKey:
    """The public key in a ``z...`` multibase string or a ``did:key:z...``."""
    if text.startswith("did:key:"):
        text = text[len("did:key:"):]
    if not text.startswith("z") or len(text) > 200:
        raise LabelKeyError("label key is not base58btc multibase")
    try:
        codec, raw = multicodec.unwrap(multibase.decode(text))
    except (ValueError, KeyError) as exc:
        raise LabelKeyError(f"label key does not decode: {exc}") from None
    if codec.name not in _CURVES:
        raise LabelKeyError(f"label key type {codec.name} is not secp256k1 or P-256")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[codec.name][0], bytes(raw))
    except ValueError as exc:
        raise LabelKeyError(f"label key is not a point on its curve: {exc}") from None


# Legacy verification method types (PLC documents still use them): the multibase value
# is the bare point, compressed or not, with no multicodec prefix.
_LEGACY_TYPES = {"EcdsaSecp256k1VerificationKey2019": "secp256k1-pub",
                 "EcdsaSecp256r1VerificationKey2019": "p256-pub"}


def label_key(doc: Any, did: str) -> LabelKey:
    """The ``#atproto_label`` key of ``did``'s document (pure), read as
    ``@atproto/identity`` reads it: ``Multikey`` or one of the legacy types."""
    if not isinstance(doc, dict) or doc.get("id") != did:
        raise LabelKeyError(f"DID document is not {did}'s")
    for method in doc.get("verificationMethod") or ():
        if (isinstance(method, dict)
                and method.get("id") in ("#atproto_label", f"{did}#atproto_label")
                and isinstance(method.get("publicKeyMultibase"), str)):
            value = method["publicKeyMultibase"]
            codec = _LEGACY_TYPES.get(method.get("type"))  # type: ignore[arg-type]
            return parse_multikey(value) if codec is None else _point(codec, value)
    raise LabelKeyError(f"{did} has no #atproto_label key")


def _point(codec: str, text: str) -> LabelKey:
    try:
        raw = multibase.decode(text) if len(text) <= 200 else b""
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[codec][0], bytes(raw))
    except (ValueError, KeyError) as exc:
        raise LabelKeyError(f"legacy label key does not decode: {exc}") from None


def signed_bytes(label: dict[str, Any]) -> bytes:
    """What the labeler signed: the label without ``sig``, as DAG-CBOR."""
    return encode_dag_cbor({k: v for k, v in label.items() if k != "sig"})


def verify(key: LabelKey, label: dict[str, Any]) -> bool:
    """Whether ``label['sig']`` is ``key``'s compact low-S signature of the label."""
    sig = label.get("sig")
    if not isinstance(sig, bytes) or len(sig) != 64:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    order = next(n for curve, n in _CURVES.values() if curve.name == key.curve.name)
    if not (0 < r < order and 0 < s <= order // 2):  # high-S is refused, as atproto does
        return False
    variants = [label]
    if label.get("neg") is False:  # Ozone signs without neg:false; others may keep it
        variants.append({k: v for k, v in label.items() if k != "neg"})
    for variant in variants:
        try:
            data = signed_bytes(variant)
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
            return True
        except (InvalidSignature, ValueError, OverflowError):
            continue
    return False


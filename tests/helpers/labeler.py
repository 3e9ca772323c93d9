"""A stand-in labeler for tests: a signing key (secp256k1 or P-256), signed labels as the
reference labeler (Ozone) signs them, ``subscribeLabels`` frames, and the labeler's DID
document. The stream itself is served by ``StandinFirehose`` (tests/helpers/firehose.py):
a websocket that replays ``(seq, frame)`` after the client's cursor. The real labeler is
tested in tests/test_labels_ozone.py."""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from atcdn.core import cid as cids
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from libipld import encode_dag_cbor
from multiformats import multibase, multicodec
from PIL import Image

from tests.helpers.env import ROOT, TOKEN
from tests.helpers.ingest import Follower
from tests.helpers.pictures import encode
from tests.helpers.servers import Process, atcdn

ORDERS = {"secp256k1": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
          "p256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551}


def now_iso(delta: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta)).isoformat(timespec="milliseconds")\
        .replace("+00:00", "Z")


class Signer:
    def __init__(self, curve: str = "secp256k1") -> None:
        self.curve = curve
        self.key = ec.generate_private_key(ec.SECP256K1() if curve == "secp256k1"
                                           else ec.SECP256R1())

    def multikey(self) -> str:
        point = self.key.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        codec = "secp256k1-pub" if self.curve == "secp256k1" else "p256-pub"
        return multibase.encode(multicodec.wrap(codec, point), "base58btc")

    def sign(self, data: bytes, *, high_s: bool = False) -> bytes:
        r, s = decode_dss_signature(self.key.sign(data, ec.ECDSA(hashes.SHA256())))
        n = ORDERS[self.curve]
        s = min(s, n - s)  # low-S, as atproto requires
        if high_s:
            s = n - s  # the same signature, malleated: atproto refuses it
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def label(self, src: str, uri: str, val: str = "!takedown", *, neg: bool = False,
              exp: str | None = None, cid: str | None = None, high_s: bool = False,
              tamper: bool = False) -> dict[str, Any]:
        """A label signed like Ozone's ``signLabel`` (``neg`` only when true).
        ``tamper``: the signature is of other bytes (a bad signature)."""
        label: dict[str, Any] = {"ver": 1, "src": src, "uri": uri, "val": val,
                                 "cts": now_iso()}
        if cid:
            label["cid"] = cid
        if neg:
            label["neg"] = True
        if exp:
            label["exp"] = exp
        signed = {**label, "cts": "1999-01-01T00:00:00.000Z"} if tamper else label
        label["sig"] = self.sign(encode_dag_cbor(signed), high_s=high_s)
        return label

    def did_document(self, did: str) -> dict[str, Any]:
        return {"@context": ["https://www.w3.org/ns/did/v1"], "id": did,
                "verificationMethod": [{"id": f"{did}#atproto_label", "type": "Multikey",
                                        "controller": did,
                                        "publicKeyMultibase": self.multikey()}],
                "service": [{"id": "#atproto_labeler", "type": "AtprotoLabeler",
                             "serviceEndpoint": "https://labeler.invalid"}]}


def labels_frame(seq: int, *labels: dict[str, Any]) -> bytes:
    return encode_dag_cbor({"op": 1, "t": "#labels"}) + encode_dag_cbor(
        {"seq": seq, "labels": list(labels)})


def info_frame(name: str, message: str = "") -> bytes:
    return encode_dag_cbor({"op": 1, "t": "#info"}) + encode_dag_cbor(
        {"name": name, "message": message})


class LabelFollower(Follower):
    """``atcdn ingest labels`` as a real process (start, kill -9, metrics, health)."""

    def __init__(self, source: str, labeler_did: str, origin_url: str, data_dir: Path, *,
                 plc_url: str, env: dict[str, str] | None = None) -> None:
        super().__init__(source, origin_url, data_dir, plc_url=plc_url,
                         env={"ATCDN_INGEST_LABEL_SWEEP_INTERVAL": "0.5", **(env or {})})
        self.labeler_did = labeler_did
        self.log = data_dir.parent / f"{data_dir.name}-labels.log"

    def start(self, wait_subscribed: bool = True) -> LabelFollower:
        self.proc = Process(
            atcdn("ingest", "labels", "--from", self.source, "--labeler-did", self.labeler_did,
                  "--origin", self.origin_url, "--data-dir", str(self.data_dir),
                  "--status-port", str(self.port)),
            env=self.env, log=self.log, cwd=ROOT)
        if wait_subscribed:
            self.proc.wait_http(self.url + "/metrics")
        return self


def takedown_feed(moto: dict[str, str]) -> dict[str, str]:
    """A fresh AWS takedown feed on moto_server (polled every 0.5 s): the env for the
    origin, the edge and the followers that publish to it."""
    env = {**moto, "ATCDN_TAKEDOWN_FOLLOW": "1", "ATCDN_TAKEDOWN_POLL_INTERVAL": "0.5",
           "ATCDN_TAKEDOWN_TABLE": f"atcdn-takedowns-{uuid.uuid4().hex}"}
    done = subprocess.run(atcdn("control", "init-feed"), env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return env


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small JPEG, different for each seed."""
    return encode(Image.new("RGB", size, (seed * 40 % 256, 90, 160)), quality=80)


def push(origin_url: str, did: str, data: bytes) -> str:
    """Store a blob in the origin for ``did`` (as an operator's PUT ?did= does); its CID."""
    cid = cids.compute(data)
    r = httpx.put(f"{origin_url}/blob/{cid}", params={"did": did}, content=data,
                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code in (200, 201), r.text
    return cid

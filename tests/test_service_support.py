"""Shared helpers of the service tests (no tests here): a real uvicorn server on 127.0.0.1 in a thread over a real
SQLite store, tenants and API keys made through the admin API, and a key-set registration that answers the proof
of possession with the client's own keys (decrypt, round, hash) — driven with httpx directly."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from cryptoface.backends.protocol import CkksParameters
from cryptoface.client import ClientKeys
from cryptoface.match.clear import encrypt_embedding_for_tests, synthetic_embedding
from cryptoface.service import create_app
from cryptoface.service.proof import answer_challenge
from cryptoface.store import SQLiteStore

ADMIN_KEY = "test-admin-key-0123456789abcdef"
PARAMS = CkksParameters(log_ring=12, levels=24)  # 2048 slots: 8 templates per gallery ciphertext
LEVEL = 21  # a stand-in for the engine's output level (leaves room for decision mode)
PARAMS_JSON = {k: getattr(PARAMS, k) for k in ("log_ring", "levels", "scale_bits", "first_mod_bits",
                                               "special_mod_bits", "key_switch_digits")}


class Server:
    """create_app over a SQLite file, served by uvicorn on a free loopback port in a daemon thread."""

    def __init__(self, db: Path, *, access_log: bool = False, **kw: Any) -> None:
        kw.setdefault("admin_key", ADMIN_KEY)
        self.store = SQLiteStore(db)
        self.app = create_app(self.store, **kw)
        self.service = self.app.state.service
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, access_log=access_log,
                                log_level="info" if access_log else "warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, headers={"authorization": f"Bearer {ADMIN_KEY}"})

    def anonymous(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def tenant(self, name: str) -> tuple[str, httpx.Client]:
        """A new tenant and an httpx client carrying one of its API keys."""
        with self.admin() as a:
            r = a.post("/v1/admin/tenants", json={"name": name})
            assert r.status_code == 201, r.text
            tid = r.json()["tenant_id"]
            r = a.post(f"/v1/admin/tenants/{tid}/api-keys")
            assert r.status_code == 201, r.text
            token = r.json()["token"]
        return tid, httpx.Client(base_url=self.url, timeout=120, headers={"x-api-key": token})

    def snapshot(self) -> tuple[dict[str, int], list[Any]]:
        """What a rejected request must leave unchanged: the store's row counts and its audit rows."""
        return self.store.counts(), self.store.audit(None, 0, 10_000)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.store.close()


@contextmanager
def running(db: Path, **kw: Any) -> Iterator[Server]:
    srv = Server(db, **kw)
    try:
        yield srv
    finally:
        srv.stop()


def hold_heavy_slot(srv: Server) -> None:
    """Take the server's only heavy slot as a running inference would (the last key upload may still hold it)."""
    from cryptoface.errors import CryptoFaceError

    deadline = time.time() + 10
    while True:
        try:
            srv.service.slots.acquire()
            return
        except CryptoFaceError:
            assert time.time() < deadline, "the heavy slot stayed taken"
            time.sleep(0.02)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def make_keys(**kw: Any) -> ClientKeys:
    return ClientKeys.generate("simulator", PARAMS, stride=1, noise=1e-7, **kw)


def register_body(keys: ClientKeys) -> dict[str, Any]:
    public = dict(keys.evaluation_keys())["public"]
    return {"backend": keys.backend_name, "params": PARAMS_JSON, "keys": {"public": b64(public)}}


def prove(http: httpx.Client, keys: ClientKeys, registered: dict[str, Any]) -> httpx.Response:
    """Answer the registration challenge as the client does: decrypt, round, hash with the nonce."""
    ch = registered["challenge"]
    values = keys.backend.decrypt(keys.backend.deserialize(base64.b64decode(ch["ciphertext"])))
    proof = answer_challenge(values, ch["count"], ch["nonce"])
    return http.post(f"/v1/keysets/{registered['key_id']}/proof", json={"proof": proof})


def register(http: httpx.Client, keys: ClientKeys) -> str:
    """Register the public key, prove possession, upload every evaluation key; returns the key id."""
    r = http.post("/v1/keysets", json=register_body(keys))
    assert r.status_code == 201, r.text
    reg = r.json()
    assert reg["status"] == "pending" and reg["key_id"] == keys.key_id
    r = prove(http, keys, reg)
    assert r.status_code == 200 and r.json()["status"] == "active", r.text
    for kind, data in keys.evaluation_keys():
        if kind != "public":
            r = http.put(f"/v1/keysets/{keys.key_id}/keys/{kind}", content=data,
                         headers={"content-type": "application/octet-stream"})
            assert r.status_code == 201, (kind, r.text)
    return keys.key_id


embedding = synthetic_embedding  # one definition: cryptoface.match.clear


def probe(keys: ClientKeys, e: np.ndarray, level: int = LEVEL) -> dict[str, Any]:
    """A template probe as the JSON body carries it."""
    ct = encrypt_embedding_for_tests(keys.backend, e, keys.layout, level)
    return {"ciphertext": b64(keys.backend.serialize(ct)), "stride": 1, "replicas": 1}


def enrol(http: httpx.Client, key_id: str, name: str, probes: list[dict[str, Any]]) -> httpx.Response:
    return http.post(f"/v1/keysets/{key_id}/subjects", json={"subject": name, "probes": probes})


def scores(keys: ClientKeys, response: httpx.Response) -> list[float]:
    """The client's decryption of a verify answer: slot 0 of each result ciphertext."""
    assert response.status_code == 200, response.text
    return [float(keys.backend.decrypt(keys.backend.deserialize(base64.b64decode(c)))[0])
            for c in response.json()["results"]]


def identify_scores(keys: ClientKeys, response: httpx.Response) -> dict[str, float]:
    """The client's decryption of an identify answer: each subject's best score."""
    assert response.status_code == 200, response.text
    out: dict[str, float] = {}
    for chunk in response.json()["chunks"]:
        values = keys.backend.decrypt(keys.backend.deserialize(base64.b64decode(chunk["ciphertext"])))
        for slot, name in zip(chunk["slots"], chunk["subjects"], strict=True):
            out[name] = max(out.get(name, -9.0), float(values[slot]))
    return out

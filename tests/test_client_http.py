"""The client against a scripted server (httpx.MockTransport): what it sends, in which order, and what it refuses.

The fake server speaks the issue-22 API exactly (routes, bodies, status codes), so these tests pin the client's
side of the contract without a running service: the API key on every request, the proof of possession (a hash
of rounded integers and nothing else), names in bodies and checked before any computation, create vs add.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from urllib.parse import unquote

import httpx
import numpy as np
import pytest

from cryptoface.backends.protocol import CkksParameters
from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.client import (
    AuthError,
    Client,
    ClientKeys,
    HTTPTransport,
    SubjectExistsError,
    TamperingError,
    UnknownSubjectError,
)
from cryptoface.errors import CryptoFaceError
from cryptoface.match.clear import encrypt_embedding_for_tests
from cryptoface.names import InvalidNameError
from cryptoface.store.base import key_fingerprint

PARAMS = CkksParameters(log_ring=12, levels=8)
TOKEN = "cf_0123456789ab_" + "A" * 43


class FakeServer:
    """The issue-22 routes over an in-memory state, recording every request."""

    def __init__(self, *, challenge_values: np.ndarray | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.key_sets: dict[str, dict] = {}
        self.subjects: dict[int, dict] = {}
        self.challenge_values = challenge_values
        self.expected_proof = ""
        self.fail: dict[tuple[str, str], tuple[int, dict]] = {}  # (method, path regex) -> response
        self.next_id = 1

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle), base_url="http://127.0.0.1:9")

    def handle(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        path, m = req.url.path, req.method
        for (fm, fp), (status, body) in self.fail.items():
            if fm == m and re.fullmatch(fp, path):
                return httpx.Response(status, json=body)
        if path != "/v1/health" and req.headers.get("x-api-key") != TOKEN:
            return httpx.Response(401, json={"error": "unauthorized", "detail": "a valid API key is required"})
        if m == "GET" and path == "/v1/health":
            return httpx.Response(200, json={"status": "ok"})
        if m == "POST" and path == "/v1/keysets":
            return self.register(json.loads(req.content))
        g = re.fullmatch(r"/v1/keysets/([0-9a-f]+)(/.*)?", path)
        if not g or g.group(1) not in self.key_sets:
            return httpx.Response(404, json={"error": "unknown_key_set", "detail": "no such key set"})
        ks, rest = self.key_sets[g.group(1)], g.group(2) or ""
        if m == "GET" and rest == "":
            return httpx.Response(200, json={k: ks[k] for k in ("key_id", "backend", "status", "key_kinds")})
        if m == "DELETE" and rest == "":
            del self.key_sets[g.group(1)]
            self.subjects.clear()
            return httpx.Response(204)
        if m == "POST" and rest == "/proof":
            if json.loads(req.content)["proof"] != self.expected_proof:
                return httpx.Response(403, json={"error": "proof_failed", "detail": "wrong proof"})
            ks["status"] = "active"
            return httpx.Response(200, json={"key_id": ks["key_id"], "status": "active"})
        if m == "PUT" and rest.startswith("/keys/"):
            ks["key_kinds"].append(rest.removeprefix("/keys/").replace("%3A", ":"))
            return httpx.Response(200, json={"key_id": ks["key_id"]})
        if ks["status"] != "active":
            return httpx.Response(409, json={"error": "key_set_pending", "detail": "pending"})
        if m == "GET" and rest == "/subjects":
            return httpx.Response(200, json=list(self.subjects.values()))
        if m == "POST" and rest == "/subjects":
            body = json.loads(req.content)
            if any(s["subject"] == body["subject"] for s in self.subjects.values()):
                return httpx.Response(409, json={"error": "conflict", "detail": "subject exists"})
            sid = self.next_id
            self.next_id += 1
            self.subjects[sid] = {"subject_id": sid, "subject": body["subject"],
                                  "template_ids": list(range(100 * sid, 100 * sid + len(body["probes"])))}
            return httpx.Response(201, json=self.subjects[sid])
        t = re.fullmatch(r"/subjects/(\d+)/templates", rest)
        if m == "POST" and t:
            s = self.subjects[int(t.group(1))]
            s["template_ids"] += [max(s["template_ids"]) + 1 + i for i in range(len(json.loads(req.content)["probes"]))]
            return httpx.Response(201, json=s)
        t = re.fullmatch(r"/subjects/(\d+)", rest)
        if m == "DELETE" and t:
            del self.subjects[int(t.group(1))]
            return httpx.Response(204)
        return httpx.Response(400, json={"error": "bad_request", "detail": f"{m} {path} not scripted"})

    def register(self, body: dict) -> httpx.Response:
        assert set(body["keys"]) == {"public"}, "registration sends the public key alone"
        public = base64.b64decode(body["keys"]["public"])
        key_id = key_fingerprint(public)
        server = SimulatorBackend.from_public_keys(PARAMS, {"public": public})
        ints = np.random.default_rng(3).integers(0, 1000, 16)
        values = ints.astype(float) if self.challenge_values is None else self.challenge_values
        nonce = "5a" * 16
        self.expected_proof = hashlib.sha256(bytes.fromhex(nonce) + ",".join(map(str, ints)).encode()).hexdigest()
        ct = server.serialize(server.encrypt(values))
        self.key_sets[key_id] = {"key_id": key_id, "backend": body["backend"], "status": "pending",
                                 "key_kinds": ["public"]}
        return httpx.Response(201, json={"key_id": key_id, "backend": body["backend"], "key_kinds": ["public"],
                                         "status": "pending", "challenge": {
                                             "ciphertext": base64.b64encode(ct).decode(), "count": len(values),
                                             "nonce": nonce}})

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


@pytest.fixture(scope="module")
def keys():
    return ClientKeys.generate("simulator", PARAMS, extra_rotations=[1, 2], noise=1e-7)


def client_for(server: FakeServer, keys: ClientKeys, token: str | None = TOKEN) -> Client:
    return Client(keys, HTTPTransport("http://127.0.0.1:9", api_key=token, client=server.client()), threshold=0.3)


def probe(client: Client, keys: ClientKeys, seed: int = 0):
    e = np.random.default_rng(seed).standard_normal(256)
    return client.template_probe(encrypt_embedding_for_tests(keys.backend, e * 15 / np.linalg.norm(e), keys.layout, 6))


def test_every_request_carries_the_api_key_and_registration_proves_with_a_hash_only(keys):
    srv = FakeServer()
    c = client_for(srv, keys)
    assert c.register() is True
    assert all(r.headers["x-api-key"] == TOKEN for r in srv.requests)
    assert srv.key_sets[keys.key_id]["status"] == "active"
    proof = next(r for r in srv.requests if r.url.path.endswith("/proof"))
    # nothing decrypted travels: the body is the 64-hex digest of the rounded integers and nothing else
    assert json.loads(proof.content) == {"proof": srv.expected_proof}
    assert len(proof.content) < 80 and not re.search(rb"\d\.\d|\[", proof.content)
    order = srv.paths()
    assert order.index(f"POST /v1/keysets/{keys.key_id}/proof") < min(
        i for i, p in enumerate(order) if p.startswith("PUT "))  # proof before gigabytes of keys
    assert {unquote(p.split("/keys/")[1]) for p in order if p.startswith("PUT ")} == set(keys.key_kinds) - {"public"}
    assert c.register() is False  # active and complete: nothing uploaded again
    assert not any(p.startswith(("PUT", "POST")) for p in srv.paths()[len(order):])


def test_a_challenge_that_is_not_integers_is_refused_unanswered(keys):
    srv = FakeServer(challenge_values=np.full(16, 3.5))  # rounding 3.5 +- noise would leak the noise's sign
    c = client_for(srv, keys)
    with pytest.raises(TamperingError, match="small integers"):
        c.register()
    assert not any(p.endswith("/proof") for p in srv.paths())
    assert keys.key_id not in srv.key_sets  # the half-made registration is withdrawn


def test_a_pending_key_set_is_registered_again(keys):
    srv = FakeServer()
    c = client_for(srv, keys)
    srv.fail[("POST", r".*/proof")] = (503, {"error": "busy", "detail": "try later"})
    with pytest.raises(CryptoFaceError):
        c.register()
    srv.fail.clear()
    srv.key_sets[keys.key_id] = {"key_id": keys.key_id, "backend": "simulator", "status": "pending",
                                 "key_kinds": ["public"]}  # as an interrupted run leaves it
    assert c.register() is True
    assert "DELETE /v1/keysets/" + keys.key_id in srv.paths()
    assert srv.key_sets[keys.key_id]["status"] == "active"


def test_create_versus_add_and_names_in_bodies_only(keys):
    srv = FakeServer()
    c = client_for(srv, keys)
    s = c.enroll("Zoë Ångström", [probe(c, keys)])
    assert s.name == "Zoë Ångström" and s.template_ids == (100,)
    with pytest.raises(SubjectExistsError, match="--add"):
        c.enroll("Zoë Ångström", [probe(c, keys)])
    s = c.enroll("Zoë Ångström", [probe(c, keys, 1)], add=True)
    assert s.template_ids == (100, 101)
    assert f"POST /v1/keysets/{keys.key_id}/subjects/{s.subject_id}/templates" in srv.paths()
    with pytest.raises(UnknownSubjectError, match="without --add"):
        c.enroll("nobody", [probe(c, keys)], add=True)
    assert [x.name for x in c.subjects()] == ["Zoë Ångström"]
    assert c.delete_subject("Zoë Ångström").subject_id == s.subject_id
    assert c.subjects() == []
    assert not any("Zo" in str(r.url) or "%C3" in str(r.url) for r in srv.requests)  # names never in a URL


def test_a_409_on_create_says_use_add(keys):
    srv = FakeServer()
    c = client_for(srv, keys)
    c.register()
    # another client of this key set enrolled the name between our lookup and our request
    srv.fail[("POST", rf"/v1/keysets/{keys.key_id}/subjects")] = (409, {"error": "conflict", "detail": "exists"})
    with pytest.raises(SubjectExistsError, match="use --add"):
        c.enroll("alice", [probe(c, keys)])


def test_names_are_checked_before_any_computation_or_request(keys, monkeypatch):
    srv = FakeServer()
    c = client_for(srv, keys)
    encrypted = []
    monkeypatch.setattr(c, "encrypt_photo", lambda *a, **k: encrypted.append(a))
    for bad in ["a/b", "..", " alice", "al\u200bice", "x\n", "", "a" * 101, "%2e%2e/x"]:
        for call in (lambda n: c.enroll(n, ["photo.jpg"]), lambda n: c.verify(n, "photo.jpg"),
                     lambda n: c.enroll(n, ["photo.jpg"], add=True)):
            with pytest.raises(InvalidNameError):
                call(bad)
    assert encrypted == [] and srv.requests == []


def test_a_failed_enrolment_withdraws_the_registration_it_made(keys):
    srv = FakeServer()
    c = client_for(srv, keys)
    srv.fail[("POST", rf"/v1/keysets/{keys.key_id}/subjects")] = (400, {"error": "bad_ciphertext", "detail": "x"})
    with pytest.raises(CryptoFaceError, match="bad_ciphertext"):
        c.enroll("alice", [probe(c, keys)])
    assert keys.key_id not in srv.key_sets and srv.paths()[-1] == f"DELETE /v1/keysets/{keys.key_id}"


def test_credentials_are_refused_or_reported(keys):
    with pytest.raises(CryptoFaceError, match="in the clear"):
        HTTPTransport("http://example.org:8000", api_key=TOKEN)
    HTTPTransport("http://example.org:8000", api_key=TOKEN, insecure_http=True).close()
    HTTPTransport("http://example.org:8000").close()  # nothing secret to send
    srv = FakeServer()
    c = client_for(srv, keys, token="cf_000000000000_" + "B" * 43)
    with pytest.raises(AuthError, match="cryptoface login"):
        c.register()


def test_a_busy_server_is_asked_again_after_retry_after(keys, monkeypatch):
    srv = FakeServer()
    slept = []
    monkeypatch.setattr("cryptoface.client.http.time.sleep", slept.append)
    calls = {"n": 0}
    real = srv.handle

    def busy_once(req):
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(503, json={"error": "busy", "detail": "full"}, headers={"retry-after": "2"})
        return real(req)

    c = Client(keys, HTTPTransport("http://127.0.0.1:9", api_key=TOKEN, client=httpx.Client(
        transport=httpx.MockTransport(busy_once), base_url="http://127.0.0.1:9")), threshold=0.3)
    assert c.transport.health()["status"] == "ok" and slept == [2.0]


def test_login_file_is_private_and_its_key_goes_to_its_server_only(tmp_path, monkeypatch):
    from cryptoface.cli import main
    from cryptoface.client.settings import SERVER_FILE, resolve_settings

    for env in ("CRYPTOFACE_SERVER", "CRYPTOFACE_API_KEY", "CRYPTOFACE_CA_CERT"):
        monkeypatch.delenv(env, raising=False)
    home = tmp_path / "home"
    assert main(["login", "--server", "https://faces.example:8443/", "--api-key", TOKEN, "--home", str(home),
                 "--no-check"]) == 0
    path = home / SERVER_FILE
    assert path.stat().st_mode & 0o777 == 0o600 and home.stat().st_mode & 0o777 == 0o700
    s = resolve_settings(home=home)
    assert (s.server, s.api_key) == ("https://faces.example:8443", TOKEN) and TOKEN not in repr(s)
    assert resolve_settings("https://other.example", home=home).api_key is None
    monkeypatch.setenv("CRYPTOFACE_API_KEY", "cf_ffffffffffff_" + "C" * 43)
    assert resolve_settings(home=home).api_key.startswith("cf_ffff")
    assert resolve_settings(home=home, api_key="explicit").api_key == "explicit"
    path.chmod(0o644)
    with pytest.raises(CryptoFaceError, match="chmod 600"):
        resolve_settings(home=home)


def test_the_cli_checks_names_before_encrypting(tmp_path, capsys, monkeypatch):
    from cryptoface.cli import main

    monkeypatch.setattr(Client, "connect", lambda *a, **k: pytest.fail("connected before checking the name"))
    assert main(["enroll", "bad/name", str(Path(__file__)), "--home", str(tmp_path)]) == 2
    assert "must not contain /" in capsys.readouterr().err

"""Several OpenFHE key sets in one server process: unloading one frees it and leaves the others working, and
loading or unloading keys while another tenant's rotations run neither crashes nor corrupts results.

OpenFHE keeps rotation keys in process-wide maps keyed by tag and its binding can only flush all of them, so
these are the properties the server's key cache relies on when it evicts a tenant (runs in ``.venv-openfhe``).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("openfhe")

from cryptoface.backends import (
    backend_class,
    create_backend,
    openfhe_keys,
)
from cryptoface.backends.protocol import CkksParameters
from cryptoface.errors import MissingKeyError

PARAMS = CkksParameters(log_ring=14, levels=4)
STEPS = [1, 2, 5]


def _tenant() -> tuple[object, object]:
    """(client holding the secret key, server backend from its exported keys)."""
    client = create_backend("openfhe", PARAMS)
    client.generate_keys(STEPS)
    server = backend_class("openfhe").from_public_keys(PARAMS, client.export_evaluation_keys())
    return client, server


def _rotates(client, server, step: int) -> bool:
    values = np.arange(16.0)
    ct = server.deserialize(client.serialize(client.encrypt(values)))
    out = client.decrypt(client.deserialize(server.serialize(server.rotate(ct, step))))
    return bool(np.allclose(out[:8], np.roll(values, -step)[:8], atol=1e-3))


def test_unloading_one_key_set_leaves_the_others_working():
    (ca, sa), (cb, sb) = _tenant(), _tenant()
    assert _rotates(ca, sa, 1) and _rotates(cb, sb, 2)
    sa.unload_keys()
    assert sa not in openfhe_keys.LOADED and sb in openfhe_keys.LOADED
    with pytest.raises(MissingKeyError):
        sa.rotate(sa.encrypt(np.zeros(4)), 1)
    assert all(_rotates(cb, sb, k) for k in STEPS)  # re-inserted after the flush
    ca.release_rotation_keys()  # a client in the same process dropping its own keys spares the server's
    assert _rotates(cb, sb, 5)


def test_loading_and_unloading_while_another_tenant_rotates():
    client, server = _tenant()
    stop = threading.Event()
    failures: list[str] = []

    def rotate_forever() -> None:
        while not stop.is_set():
            if not _rotates(client, server, 1):
                failures.append("wrong rotation")

    worker = threading.Thread(target=rotate_forever)
    worker.start()
    try:
        for _ in range(6):  # other tenants come and go meanwhile
            _, other = _tenant()
            other.unload_keys()
    finally:
        stop.set()
        worker.join(60)
    assert failures == [] and _rotates(client, server, 2)


def test_uploading_a_key_does_not_leave_it_in_the_server_process(tmp_path):
    """The server checks an uploaded rotation key by loading it; that check used to leave the key in OpenFHE's
    process-wide map for good (4.5 GB per full-size tenant, found by the full-size load test)."""
    import base64

    from cryptoface.service.proof import answer_challenge
    from test_service_support import Server, b64

    client = create_backend("openfhe", PARAMS)
    client.generate_keys(STEPS)
    keys = client.export_evaluation_keys()
    pjson = {k: getattr(PARAMS, k) for k in ("log_ring", "levels", "scale_bits", "first_mod_bits",
                                             "special_mod_bits", "key_switch_digits")}
    srv = Server(tmp_path / "keys.db")
    try:
        _, http = srv.tenant("acme")
        reg = http.post("/v1/keysets", json={"backend": "openfhe", "params": pjson,
                                             "keys": {"public": b64(keys["public"])}}).json()
        values = client.decrypt(client.deserialize(base64.b64decode(reg["challenge"]["ciphertext"])))
        proof = answer_challenge(values, reg["challenge"]["count"], reg["challenge"]["nonce"])
        assert http.post(f"/v1/keysets/{reg['key_id']}/proof", json={"proof": proof}).status_code == 200
        for kind in ("relin", "rotation:1", "rotation:2"):
            r = http.put(f"/v1/keysets/{reg['key_id']}/keys/{kind}", content=keys[kind])
            assert r.status_code == 201, r.text
        assert not any(b._tag == client._tag for b in openfhe_keys.LOADED)
        with pytest.raises(Exception):  # noqa: B017 - the binding raises a bare RuntimeError: no keys for the tag
            client.cc.GetEvalAutomorphismKeyMap(client._tag)
    finally:
        srv.stop()


def test_a_loaded_key_sets_relinearisation_key_is_counted_for_good(tmp_path):
    """The binding cannot flush one key set's relinearisation key, so it outlives eviction (the full-size load
    test's RSS stood above its budget): the budget counts it as held for good, once per key set."""
    from cryptoface.client import Client, ClientKeys
    from cryptoface.match.clear import encrypt_embedding_for_tests, synthetic_embedding
    from cryptoface.params import LEVELS, secure_parameters
    from cryptoface.service import MatchService
    from cryptoface.service.budget import switching_key_bytes
    from cryptoface.store import SQLiteStore

    params = secure_parameters(LEVELS.matching_reserve, 14)
    store = SQLiteStore(tmp_path / "residue.db")
    service = MatchService(store)
    keys = ClientKeys.generate("openfhe", params, stride=1)
    client = Client.in_process(keys, service, threshold=0.2)
    e = synthetic_embedding(np.random.default_rng(3))
    probe = client.template_probe(encrypt_embedding_for_tests(keys.backend, e, keys.layout, LEVELS.matching_reserve))
    before = service.budget.baseline
    client.enroll("alice", [probe])
    assert service.budget.baseline == before + switching_key_bytes(params)
    service.cache.forget(keys.key_id)  # evicted: its rotation keys go, its relinearisation key stays
    assert client.verify("alice", probe).accepted
    assert service.budget.baseline == before + switching_key_bytes(params)  # counted once
    store.close()

"""identify packs the enrolled templates into galleries once and keeps them in the store until the next enrolment."""

from __future__ import annotations

import numpy as np

from cryptoface.backends.protocol import CkksParameters
from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.match import homomorphic as hm
from cryptoface.match.layout import TemplateLayout, place
from cryptoface.params import params_to_json
from cryptoface.service.auth import Caller
from cryptoface.service.core import MatchService
from cryptoface.service.proof import answer_challenge
from cryptoface.store.sqlite import SQLiteStore


def test_identify_keeps_packed_galleries(tmp_path):
    params = CkksParameters(log_ring=13, levels=30)
    be = SimulatorBackend(params)
    lay = TemplateLayout(1, be.slots // 256)  # the engine's replicated template (stride 1)
    be.generate_keys(hm.rotation_steps(lay, be.slots))
    svc = MatchService(SQLiteStore(tmp_path / "s.db"))
    tenant = svc.create_tenant(Caller(None, "admin"), "t")
    me = Caller(tenant.tenant_id, "k1")
    keys = be.export_evaluation_keys()
    record, ch = svc.register(me, "simulator", params_to_json(params), keys.pop("public"))
    svc.prove(me, record.key_id, answer_challenge(be.decrypt(be.deserialize(ch.ciphertext)), ch.count, ch.nonce))
    for kind, data in keys.items():
        svc.add_key(me, record.key_id, kind, data)
    kid = record.key_id
    rng = np.random.default_rng(0)

    def probe() -> dict:
        ct = be.encrypt(place(rng.standard_normal(256) * 1.2, lay, be.slots), 7)
        return {"ciphertext": be.serialize(ct), "stride": 1, "replicas": lay.replicas}

    for name in ("a", "b", "c"):
        svc.create_subject(me, kid, name, [probe()])
    first = svc.identify(me, kid, probe())
    assert svc.store.counts()["galleries"] == 1  # packed once and kept
    kept = svc.store.galleries(kid, 1, svc.model_id)[0]
    assert sorted(kept.template_ids) == sorted(r.id for r in svc.store.templates(kid))
    second = svc.identify(me, kid, probe())
    assert [names for _, _, names in second] == [names for _, _, names in first]
    svc.create_subject(me, kid, "d", [probe()])
    assert svc.store.counts()["galleries"] == 0  # stale galleries dropped on enrolment
    (_, _, names), = svc.identify(me, kid, probe())
    assert sorted(names) == ["a", "b", "c", "d"]
    assert svc.store.counts()["galleries"] == 1
    d = next(s for s in svc.subjects(me, kid) if s.name == "d")
    svc.delete_subject(me, kid, d.id)
    assert svc.store.counts()["galleries"] == 0  # and on deletion
    (_, _, names), = svc.identify(me, kid, probe())
    assert sorted(names) == ["a", "b", "c"]

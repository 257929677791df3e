"""Inference as jobs: 202 + id, progress per layer, cancel, result, ownership and limits — over real HTTP (uvicorn,
SQLite) with a simulator key set and a random Net4, and the queue's semantics on their own."""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest

from cryptoface.client import Client, ClientKeys
from cryptoface.client.http import HTTPTransport
from cryptoface.client.transport import ServerError
from cryptoface.engine import plan_for
from cryptoface.errors import CryptoFaceError
from cryptoface.model.random import random_model
from cryptoface.params import default_parameters
from cryptoface.service.errors import BusyError
from cryptoface.service.jobs import (
    JobLimitError,
    JobNotDoneError,
    JobNotFoundError,
    JobQueue,
    JobTimeoutError,
    Progress,
)
from test_service_support import hold_heavy_slot, running


@pytest.fixture(scope="module")
def net_keys():
    return ClientKeys.generate("simulator", default_parameters(64), resolution=64)


@pytest.fixture(scope="module")
def model():
    return random_model(64, 0)


def _client(srv, keys, name="acme", **kw) -> Client:
    _, http = srv.tenant(name)
    return Client(keys, HTTPTransport(srv.url, api_key=http.headers["x-api-key"]), threshold=0.3, **kw)


def _wait(client: Client, job_id: str, states=("done", "failed", "cancelled"), timeout=120.0):
    deadline = time.time() + timeout
    while True:
        job = client.transport.job(job_id)
        if job.state in states:
            return job
        assert time.time() < deadline, job
        time.sleep(0.05)


def test_a_job_reports_every_layer_and_returns_the_synchronous_template(tmp_path, net_keys, model, faces_dir):
    seen = []
    with running(tmp_path / "s.db", model=model, model_id="random-0") as srv:
        client = _client(srv, net_keys, progress=seen.append)
        client.register()
        probe = client.encrypt_photo(faces_dir / "obama3.jpg")
        r = client.transport.http.post(f"/v1/keysets/{client.key_id}/jobs",
                                       json={"probe": {"images": [base64.b64encode(c).decode() for c in probe.images]}})
        assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['job_id']}"
        assert r.json()["state"] in ("queued", "running", "done")
        job = _wait(client, r.json()["job_id"])
        layers = len(plan_for(64, net_keys.backend.slots, net_keys.backend.params.levels).layers)
        assert job.state == "done" and job.done == job.total == layers and job.error is None
        by_job = client.transport.job_result(job.job_id)
        direct = client.transport.infer(client.key_id, probe)  # the synchronous route, same inputs
        be = net_keys.backend
        a, b = (be.decrypt(be.deserialize(t.ciphertext)) for t in (by_job, direct))
        np.testing.assert_allclose(a, b, atol=1e-6 * np.abs(b).max())

        assert by_job.trunk and by_job.inferred and by_job.tail_digest == direct.tail_digest != ""  # clear tail
        template = client.infer(probe)  # the client's own path: submit, poll with progress, collect, forget
        assert template.trunk and template.inferred and template.tail_digest == direct.tail_digest
        assert np.allclose(be.decrypt(be.deserialize(template.ciphertext)), b, atol=1e-6 * np.abs(b).max())
        done = [j.done for j in seen]
        assert done == sorted(done) and done[-1] == layers and seen[-1].state == "done"
        assert [j.job_id for j in client.transport.jobs()] == [job.job_id]  # its own job was deleted


def test_a_queued_job_can_be_cancelled_and_has_no_result(tmp_path, net_keys, model, faces_dir):
    with running(tmp_path / "s.db", model=model, model_id="random-0") as srv:
        client = _client(srv, net_keys)
        client.register()
        probe = client.encrypt_photo(faces_dir / "obama3.jpg")
        before = srv.service.budget.in_use()
        hold_heavy_slot(srv)  # another inference holds the only heavy slot: the job waits, it does not fail
        try:
            job = client.transport.submit_infer(client.key_id, probe)
            time.sleep(1.5)
            assert client.transport.job(job.job_id).state == "queued"
            # the waiting images are charged to the memory budget, and released when the job ends
            assert srv.service.budget.in_use() - before >= sum(len(c) for c in probe.images)
            assert client.cancel_job(job.job_id).state == "cancelled"
            assert srv.service.budget.in_use() == before
        finally:
            srv.service.slots.release()
        with pytest.raises(ServerError) as err:
            client.transport.job_result(job.job_id)
        assert err.value.status == 409 and err.value.code == "job_not_done"


def test_a_job_whose_key_set_is_deleted_fails_with_the_routes_error(tmp_path, net_keys, model, faces_dir):
    with running(tmp_path / "s.db", model=model, model_id="random-0") as srv:
        client = _client(srv, net_keys)
        client.register()
        hold_heavy_slot(srv)
        try:
            job = client.transport.submit_infer(client.key_id, client.encrypt_photo(faces_dir / "obama3.jpg"))
            client.delete_key_set()
        finally:
            srv.service.slots.release()
        ended = _wait(client, job.job_id)
        assert ended.state == "failed" and ended.error.startswith("unknown_key_set")
        with pytest.raises(ServerError) as err:
            client.transport.job_result(job.job_id)
        assert err.value.status == 404 and err.value.code == "unknown_key_set"


def test_jobs_are_invisible_to_other_tenants_and_bounded_per_tenant(tmp_path, net_keys, model, faces_dir):
    with running(tmp_path / "s.db", model=model, model_id="random-0") as srv:
        owner = _client(srv, net_keys, "owner")
        owner.register()
        probe = owner.encrypt_photo(faces_dir / "obama3.jpg")
        other = _client(srv, ClientKeys.generate("simulator", default_parameters(64), resolution=64), "other")
        hold_heavy_slot(srv)
        try:
            jobs = [owner.transport.submit_infer(owner.key_id, probe) for _ in range(8)]
            with pytest.raises(ServerError) as err:
                owner.transport.submit_infer(owner.key_id, probe)
            assert err.value.status == 429 and err.value.code == "too_many_jobs"
            target = jobs[0].job_id
            for call in (other.transport.job, other.transport.job_result, other.transport.cancel_job,
                         other.transport.delete_job):
                with pytest.raises(ServerError) as err:
                    call(target)
                assert err.value.status == 404 and err.value.code == "unknown_job"
            assert other.transport.jobs() == []
            with pytest.raises(ServerError) as err:  # another tenant's key set: no job is even made
                other.transport.submit_infer(owner.key_id, probe)
            assert err.value.status == 404
            assert owner.transport.job(target).state == "queued"  # untouched by the other tenant's attempts
            for j in jobs:
                owner.transport.delete_job(j.job_id)
            assert owner.transport.jobs() == []
        finally:
            srv.service.slots.release()
        http = owner.transport.http
        for bad in ("x" * 21 + "!", "%00" * 8, "a" * 200, "x" * 22 + "/result/.."):
            assert http.get(f"/v1/jobs/{bad}").status_code in (404, 422), bad


def test_interrupting_the_client_cancels_the_servers_work(tmp_path, net_keys, model, faces_dir):
    def stop(job):
        if job.state != "queued":  # running (or, on a fast machine, already done): the user presses Ctrl-C
            raise KeyboardInterrupt

    with running(tmp_path / "s.db", model=model, model_id="random-0") as srv:
        client = _client(srv, net_keys, progress=stop)
        client.register()
        probe = client.encrypt_photo(faces_dir / "obama3.jpg")
        hold_heavy_slot(srv)
        threading.Timer(0.5, srv.service.slots.release).start()
        with pytest.raises(KeyboardInterrupt):
            client.infer(probe)
        assert client.transport.jobs() == []  # cancelled and forgotten: nothing left running for nobody


# -- the queue on its own ----------------------------------------------------------------------------------
def test_a_running_job_stops_at_its_next_progress_report():
    queue = JobQueue(1)
    started, steps = threading.Event(), []

    def work(report):
        for i in range(1000):
            report(Progress(i, 1000, f"layer {i}"))
            steps.append(i)
            started.set()
            time.sleep(0.01)
        return "finished"

    job = queue.submit("t1", "k", "infer", work)
    assert started.wait(5)
    queue.cancel("t1", job.job_id)
    deadline = time.time() + 5
    while queue.get("t1", job.job_id).state != "cancelled":
        assert time.time() < deadline
        time.sleep(0.01)
    n = len(steps)
    time.sleep(0.1)
    assert len(steps) == n < 1000  # stopped, and stays stopped
    with pytest.raises(JobNotDoneError):
        queue.result("t1", job.job_id)
    with pytest.raises(JobNotFoundError):
        queue.get("t2", job.job_id)
    queue.close()


def test_ended_jobs_expire_and_unexpected_failures_say_nothing_internal():
    queue = JobQueue(1, keep_seconds=0.2, per_tenant=2)

    def boom(report):
        raise RuntimeError("secret internal detail /path/to/key")

    job = queue.submit("t", "k", "infer", boom)
    deadline = time.time() + 5
    while queue.get("t", job.job_id).state != "failed":
        assert time.time() < deadline
        time.sleep(0.01)
    view = queue.get("t", job.job_id)
    assert "secret" not in str(view.error) and "RuntimeError" in str(view.error)
    with pytest.raises(CryptoFaceError):
        queue.result("t", job.job_id)
    queue.submit("t", "k", "infer", lambda report: 1)
    with pytest.raises(JobLimitError):
        queue.submit("t", "k", "infer", lambda report: 1)
    time.sleep(0.4)
    assert queue.list("t") == []  # both ended and expired: the tenant may submit again
    queue.submit("t", "k", "infer", lambda report: 1)
    queue.close()


def test_a_failed_jobs_error_keeps_no_frames_and_busy_waits_end():
    queue = JobQueue(1, max_wait=0.5)

    def fails(report):
        big = bytearray(10**6)  # noqa: F841  (a frame local the stored error must not keep alive)
        raise JobNotDoneError("refused for a reason the caller can act on")

    job = queue.submit("t", "k", "infer", fails)
    busy = queue.submit("t", "k", "infer", lambda report: (_ for _ in ()).throw(BusyError("busy", 7)))
    deadline = time.time() + 10
    while {queue.get("t", j.job_id).state for j in (job, busy)} != {"failed"}:
        assert time.time() < deadline
        time.sleep(0.02)
    stored = queue.get("t", job.job_id).error
    assert stored.__traceback__ is None and stored.__context__ is None
    with pytest.raises(JobNotDoneError) as raised:
        queue.result("t", job.job_id)
    assert raised.value is not stored and stored.__traceback__ is None  # a copy is raised, the stored one stays bare
    with pytest.raises(JobTimeoutError) as raised:  # waited past max_wait: over, a new job may succeed
        queue.result("t", busy.job_id)
    assert "busy for" in str(raised.value)
    queue.close()


def test_closing_the_queue_ends_waiting_jobs_and_releases_what_they_hold():
    released = []
    queue = JobQueue(1)
    gate = threading.Event()
    first = queue.submit("t", "k", "infer", lambda report: gate.wait(5), on_end=lambda: released.append(1))
    second = queue.submit("t", "k", "infer", lambda report: 1, on_end=lambda: released.append(2))
    time.sleep(0.1)
    queue.close()
    gate.set()
    deadline = time.time() + 5
    while len(released) < 2:
        assert time.time() < deadline, released
        time.sleep(0.02)
    assert sorted(released) == [1, 2] and queue.get("t", second.job_id).state == "cancelled"
    assert queue.get("t", first.job_id).state == "cancelled"
    with pytest.raises(JobLimitError):
        queue.submit("t", "k", "infer", lambda report: 1)


def test_the_cli_draws_the_servers_progress_as_a_bar(capsys):
    from cryptoface.cli.service_cmd import _JobBar
    from cryptoface.client.transport import JobInfo

    bar = _JobBar()
    for state, done in [("queued", 0), ("running", 1), ("running", 12), ("done", 23)]:
        bar(JobInfo("j1", "k", "infer", state, done, 23 if state != "queued" else 0, f"layer{done}", 0.0))
    err = capsys.readouterr().err
    assert "server: encrypted inference" in err and "23/23" in err and bar.bar is None  # closed at the end

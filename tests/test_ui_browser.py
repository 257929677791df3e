"""The web app in a real headless Chromium: enrol -> verify (accept) -> verify (reject) -> identify -> delete, against a
real matching server over HTTP; every request the app sends to that server is recorded and searched for the secret
key, the decrypted templates and the decrypted scores, and so are the app's pages and log lines.

Two runs: the simulator with the real engine at N = 2^16 (encrypted-inference plan, not encryption), and OpenFHE at
TEST-ONLY REDUCED parameters (N = 2^14, 7 levels: 128-bit, too few levels for the network, so the app runs with
labelled stand-in templates; matching, refresh and the secret key are real)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import struct
import time
from unittest import mock

import httpx
import numpy as np
import pytest

from browser import chromium
from cryptoface.assets import SAMPLES_DIR, default_model_path
from cryptoface.backends import available_backends
from cryptoface.client import Client, ClientKeys
from cryptoface.client.http import HTTPTransport
from cryptoface.match.refresh import normalised
from cryptoface.model.file import load_model
from cryptoface.params import default_parameters, secure_parameters
from test_service_support import Server, hold_heavy_slot, running
from ui_flow import Walk, running_ui, walkthrough

PHOTOS = {"enrol": SAMPLES_DIR / "obama3.jpg", "genuine": SAMPLES_DIR / "obama4.jpg",
          "impostor": SAMPLES_DIR / "chirac1.jpg"}


class Recorder:
    """Every request an httpx client sends: method, URL, headers and body."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []

    def __call__(self, request: httpx.Request) -> None:
        self.requests.append((request.method, str(request.url), dict(request.headers), request.read()))

    def corpus(self) -> tuple[bytes, str]:
        """(every body and every base64 string in a JSON body, decoded; all URLs, headers and bodies as text)."""
        raw, text = [], []
        for method, url, headers, body in self.requests:
            raw.append(body)
            text.append(f"{method} {url} {json.dumps(headers)} {body.decode('latin-1')}")
            if headers.get("content-type", "").startswith("application/json"):
                for s in re.findall(r'"([A-Za-z0-9+/=]{16,})"', body.decode()):
                    with contextlib.suppress(ValueError):
                        raw.append(base64.b64decode(s, validate=True))
        return b"\0".join(raw), "\n".join(text)


def _numbers(values: list[float]) -> list[str]:
    """How a decrypted value could be written: the page's 4 decimals and Python's shortest repr."""
    return [f"{v:.4f}" for v in values] + [repr(float(v)) for v in values]


def _app_client(keys: ClientKeys, srv: Server, recorder: Recorder) -> Client:
    _, http = srv.tenant("acme")
    recording = httpx.Client(base_url=srv.url, timeout=600, event_hooks={"request": [recorder]})
    return Client(keys, HTTPTransport(srv.url, api_key=http.headers["x-api-key"], client=recording))


def _check_no_secrets(recorder: Recorder, pages: str, logs: str, keys: ClientKeys, templates: list, results) -> None:
    raw, text = recorder.corpus()
    assert recorder.requests, "nothing was recorded"
    secret = keys.backend.export_secret_key()
    chunks = [secret[i:i + 48] for i in range(len(secret) // 2, len(secret) - 48, max(1, len(secret) // 16))]
    for chunk in chunks:  # the secret key's payload, in no request, page or log line
        assert chunk not in raw and chunk.decode("latin-1") not in pages + logs
    assert len(templates) == 4, len(templates)  # one decrypted, normalised template per inference
    for t in templates:  # what the client decrypted, as the float64 it held or as text
        # as float64 (8 bytes: a chance match in megabytes of ciphertext is ~1e-12; float32's 4 bytes would match
        # random key material); the simulator is not encryption, its "ciphertexts" hold the values themselves
        packed = [struct.pack("<d", v) for v in t[:8]]
        found = [p.hex() for p in packed if p in raw]
        assert keys.backend_name == "simulator" or not found, found
        assert not any(x in text + pages + logs for x in _numbers(t[:8].tolist()) if len(x) > 6)
    scores = [float(r["score"]) for r in results.values() if "score" in r]
    assert scores, results
    for x in _numbers(scores):  # shown on the user's own page, never sent, never logged
        assert x not in text and x not in logs, x


def _walk_and_check(keys: ClientKeys, srv: Server, caplog, tmp_path, **ui) -> Recorder:
    recorder = Recorder()
    client = _app_client(keys, srv, recorder)
    pages: list[str] = []
    templates: list[np.ndarray] = []

    def recorded(embedding):  # the client's decrypted, normalised template, as it holds it
        out = normalised(embedding)
        templates.append(out)
        return out

    logging.getLogger("selenium").setLevel(logging.WARNING)  # its debug log holds whole pages, not ours to check
    with caplog.at_level(logging.DEBUG), running_ui(client, srv.url, **ui) as session, chromium() as driver, \
            mock.patch("cryptoface.client.client.normalised", recorded):
        walk = Walk(driver, session, tmp_path / "shots")
        original = walk.shot

        def shot_and_keep(name: str) -> None:
            original(name)
            pages.append(driver.page_source)

        walk.shot = shot_and_keep  # type: ignore[method-assign]
        results = walkthrough(walk, PHOTOS)
    assert results["enrol"]["decision"].startswith("Enrolled obama")
    assert results["accept"]["decision"] == "ACCEPT", results
    assert results["reject"]["decision"] == "REJECT", results
    assert results["identify"]["decision"] == "IDENTIFIED" and results["identify"]["identified"] == "obama"
    assert sorted(p.name for p in (tmp_path / "shots").iterdir())[0] == "01-home.png"
    logs = "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("cryptoface", "uvicorn"))
    _check_no_secrets(recorder, "\n".join(pages), logs, keys, templates, results)
    assert not srv.service.backends_hold_secret_keys()
    return recorder


def _on_the_ring(recorder: Recorder, keys: ClientKeys) -> None:
    """Templates were enrolled and matched under the matching ring's key set, inference under the network's."""
    posts = [url for method, url, _, _ in recorder.requests if method == "POST"]
    ring = f"/v1/keysets/{keys.match.key_id}/"
    assert any(u.endswith(ring + "subjects") for u in posts) and any(u.endswith(ring + "verify") for u in posts)
    assert any(u.endswith(ring + "identify") for u in posts)
    assert not any(ring in u and u.endswith("/jobs") for u in posts)


def test_the_web_app_end_to_end_on_the_simulator(tmp_path, caplog):
    model = load_model(default_model_path())
    with running(tmp_path / "server.db", model=model, model_id="bundled") as srv:
        keys = ClientKeys.generate("simulator", default_parameters(64), resolution=64, match_ring=True)
        recorder = _walk_and_check(keys, srv, caplog, tmp_path)
    _on_the_ring(recorder, keys)
    submitted = [url for method, url, _, _ in recorder.requests if method == "POST" and url.endswith("/jobs")]
    assert len(submitted) == 4  # every inference ran as a server job (enrol, accept, reject, identify)


@pytest.mark.skipif("openfhe" not in available_backends(), reason="OpenFHE is not installed in this environment")
def test_the_web_app_on_openfhe_at_test_size_with_stand_in_templates(tmp_path, caplog):
    model = load_model(default_model_path())
    with running(tmp_path / "server.db") as srv:
        keys = ClientKeys.generate("openfhe", secure_parameters(7, log_ring=14), stride=1, match_ring=True)
        _on_the_ring(_walk_and_check(keys, srv, caplog, tmp_path, standin=model), keys)  # real, N = 2^13


def test_the_app_refuses_strangers_other_sites_and_other_hosts(tmp_path):
    keys = ClientKeys.generate("simulator", default_parameters(64), resolution=64)
    with running(tmp_path / "server.db") as srv, running_ui(_app_client(keys, srv, Recorder()), srv.url) as s:
        base = f"http://127.0.0.1:{s.port}"
        anon = httpx.Client(base_url=base)
        for path in ("/", "/subjects", "/settings", "/tasks", "/eval", "/api/tasks/x"):
            r = anon.get(path)
            assert r.status_code == 401 and "cryptoface ui" in r.text, path
        assert anon.get("/login", params={"token": "wrong"}).status_code == 401
        assert anon.get("/static/ui.css").status_code == 200  # public, nothing secret
        assert anon.get("/static/..%2Fapp.py").status_code == 404  # only the two named files
        user = httpx.Client(base_url=base, follow_redirects=True)
        r = user.get("/login", params={"token": s.secret})
        assert r.status_code == 200 and r.url.path == "/"
        cookie = r.history[0].headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "script-src 'self'" in r.headers["content-security-policy"] and "<script>" not in r.text
        assert r.headers["cache-control"] == "no-store"
        # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host
        assert user.get("/", headers={"host": f"evil.example:{s.port}"}).status_code == 421
        photo = {"photo": ("a.jpg", (SAMPLES_DIR / "obama3.jpg").read_bytes(), "image/jpeg")}
        # cross-site form posts: no CSRF token, a wrong one, or another origin -- nothing happens
        assert user.post("/photos", files=photo).status_code == 403
        assert user.post("/photos", files=photo, data={"csrf": "0" * 64}).status_code == 403
        r = user.post("/photos", files=photo, data={"csrf": s.csrf}, headers={"origin": "http://evil.example"})
        assert r.status_code == 403
        r = user.post("/photos", files=photo, data={"csrf": s.csrf})
        assert r.status_code == 200 and "Aligned face" in r.text
        # the detector's typed errors come back as messages
        r = user.post("/photos", files={"photo": ("c.jpg", (SAMPLES_DIR / "coffee.jpg").read_bytes(), "image/jpeg")},
                      data={"csrf": s.csrf})
        assert r.status_code == 422 and 'role="alert"' in r.text and "face" in r.text.lower()
        r = user.post("/photos", files={"photo": ("x.jpg", b"not an image", "image/jpeg")}, data={"csrf": s.csrf})
        assert r.status_code == 422 and 'role="alert"' in r.text
        r = user.post("/photos", files={"photo": ("big.jpg", b"0" * (21 * 1024 * 1024), "image/jpeg")},
                      data={"csrf": s.csrf})
        assert r.status_code == 413
        chunked = user.post("/photos", content=iter([b"--x\r\n"] * 4),  # no Content-Length: no size bound
                            headers={"content-type": "multipart/form-data; boundary=x"})
        assert chunked.status_code == 411
        r = user.post("/photos/nope/enrol", data={"csrf": s.csrf, "subject": "x"})
        assert r.status_code == 404 and "upload it again" in r.text
        html = user.get("/settings").text
        assert keys.key_id in html and "simulator" in html


def test_a_task_survives_its_tab_and_can_be_cancelled(tmp_path):
    """The user closes the tab during the inference: the task runs on, the tasks page finds it, cancel stops the
    server's job."""
    model = load_model(default_model_path())
    keys = ClientKeys.generate("simulator", default_parameters(64), resolution=64)
    with running(tmp_path / "server.db", model=model, model_id="bundled") as srv, \
            running_ui(_app_client(keys, srv, Recorder()), srv.url) as s:
        user = httpx.Client(base_url=f"http://127.0.0.1:{s.port}", follow_redirects=True)
        user.get("/login", params={"token": s.secret})
        r = user.post("/photos", files={"photo": ("o.jpg", PHOTOS["enrol"].read_bytes(), "image/jpeg")},
                      data={"csrf": s.csrf})
        photo_url = str(r.url)
        s.client.register()  # uploading keys takes a heavy slot too: done before the server gets busy
        hold_heavy_slot(srv)  # the server is busy: the job waits in its queue
        try:
            r = user.post(photo_url + "/enrol", data={"csrf": s.csrf, "subject": "obama"})
            task_url = str(r.url)
            assert r.status_code == 200 and "/tasks/" in task_url
            # ... the tab is closed here; later the user opens the tasks page
            listed = user.get("/tasks").text
            assert "Enrol obama" in listed and task_url.rsplit("/", 1)[1] in listed
            task_id = task_url.rsplit("/", 1)[1]
            for _ in range(200):
                view = user.get(f"/api/tasks/{task_id}").json()
                if view["server"] is not None:
                    break
                time.sleep(0.05)
            assert view["state"] == "running" and view["server"]["state"] == "queued"
            r = user.post(task_url + "/cancel", data={"csrf": s.csrf})
            assert r.status_code == 200
        finally:
            srv.service.slots.release()
        for _ in range(200):
            view = user.get(f"/api/tasks/{task_id}").json()
            if view["state"] != "running":
                break
            time.sleep(0.05)
        assert view["state"] == "cancelled", view
        assert s.client.transport.jobs() == []  # the server's job is gone
        assert s.client.subjects() == []  # nothing was enrolled


def _labelled(html: str) -> list[str]:
    """Form controls of a page that have no label (by ``for`` or by being inside one)."""
    from html.parser import HTMLParser

    class Controls(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.fors: set[str] = set()
            self.depth = 0
            self.bare: list[str] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            a = dict(attrs)
            if tag == "label":
                self.depth += 1
                if a.get("for"):
                    self.fors.add(a["for"])
            elif tag in ("input", "select", "textarea") and a.get("type") != "hidden" and not self.depth:
                self.bare.append(a.get("id") or f"<{tag} name={a.get('name')}>")

        def handle_endtag(self, tag: str) -> None:
            if tag == "label":
                self.depth -= 1

    p = Controls()
    p.feed(html)
    return [c for c in p.bare if c not in p.fors]


def test_every_control_is_labelled_and_evaluation_draws_a_roc(tmp_path):
    keys = ClientKeys.generate("simulator", default_parameters(64), resolution=64)
    photos = ["obama3.jpg", "obama4.jpg", "chirac1.jpg", "chirac3.jpg", "paul_rudd_1.jpg", "paul_rudd_2.jpg"]
    rows = ["image1,image2,same"]
    for i, a in enumerate(photos):
        for b in photos[i + 1:]:
            rows.append(f"{a},{b},{int(a.split('_')[0][:4] == b.split('_')[0][:4])}")
    for name in photos:
        (tmp_path / name).write_bytes((SAMPLES_DIR / name).read_bytes())
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    recorder = Recorder()
    with running(tmp_path / "server.db") as srv, running_ui(_app_client(keys, srv, recorder), srv.url) as s:
        user = httpx.Client(base_url=f"http://127.0.0.1:{s.port}", follow_redirects=True)
        user.get("/login", params={"token": s.secret})
        r = user.post("/photos", files={"photo": ("o.jpg", PHOTOS["enrol"].read_bytes(), "image/jpeg")},
                      data={"csrf": s.csrf})
        pages = {"/": user.get("/").text, "photo": r.text, "/eval": user.get("/eval").text,
                 "/settings": user.get("/settings").text, "/tasks": user.get("/tasks").text}
        for name, html in pages.items():
            assert _labelled(html) == [], name
            assert html.count("<h1>") == 1 and 'href="#main"' in html and '<html lang="en">' in html, name
        r = user.post("/eval", data={"csrf": s.csrf, "csv": str(tmp_path / "nope.csv")})
        assert r.status_code == 422 and "no file" in r.text
        sent = len(recorder.requests)
        r = user.post("/eval", data={"csrf": s.csrf, "csv": str(tmp_path / "pairs.csv")})
        task = str(r.url).rsplit("/", 1)[1]
        deadline = time.time() + 300
        while (view := user.get(f"/api/tasks/{task}").json())["state"] == "running" or view["state"] == "queued":
            assert time.time() < deadline
            time.sleep(0.2)
        assert view["state"] == "done", view
        assert view["result"]["pairs"] == len(rows) - 1 and 0 <= view["result"]["eer"] <= 1
        page = user.get(f"/tasks/{task}").text
        assert "ROC curve" in page and "EER" in page
        png = user.get(f"/tasks/{task}/roc.png")
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(recorder.requests) == sent  # the evaluation runs here, in the clear: nothing goes to the server


def test_a_camera_frame_goes_through_the_same_detector(tmp_path):
    """Chromium's fake camera (a moving test pattern, no face): the page captures a frame into the form, and the
    detector's refusal comes back as a message."""
    keys = ClientKeys.generate("simulator", default_parameters(64), resolution=64)
    with running(tmp_path / "server.db") as srv, running_ui(_app_client(keys, srv, Recorder()), srv.url) as s, \
            chromium("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream") as driver:
        from selenium.webdriver.support.ui import WebDriverWait

        walk = Walk(driver, s)
        walk.login()
        walk.by("#camera-start").click()
        WebDriverWait(driver, 20).until(lambda d: walk.by("#camera-capture").is_displayed())
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(
            "return document.getElementById('camera-video').videoWidth > 0"))
        walk.by("#camera-capture").click()
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(
            "return document.getElementById('photo').files.length === 1"))
        assert "captured" in walk.by("#camera-status").text
        walk.by("#photo-form button[type=submit]").click()
        walk.wait_title("Photo")
        WebDriverWait(driver, 20).until(lambda d: d.find_elements("css selector", "[role=alert]"))
        assert "face" in walk.by("[role=alert]").text.lower()

"""``cryptoface ui`` as a user starts it: its own process, a saved key home, a real server; the printed link opens
the app, nothing else does, and Ctrl-C stops it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx

from test_service_support import running

CLI = [sys.executable, "-m", "cryptoface"]


def test_cryptoface_ui_prints_a_working_link_and_stops_on_ctrl_c(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "CRYPTOFACE_HOME": str(home)}
    subprocess.run([*CLI, "keygen", "--backend", "simulator"], env=env, check=True, capture_output=True, timeout=120)
    with running(tmp_path / "server.db") as srv:
        _, http = srv.tenant("acme")
        proc = subprocess.Popen([*CLI, "ui", "--port", "0", "--server", srv.url, "--api-key",
                                 http.headers["x-api-key"]], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            url = None
            deadline = time.time() + 60
            while url is None and time.time() < deadline:
                line = proc.stdout.readline()
                found = re.search(r"(http://127\.0\.0\.1:\d+)/login\?token=\S+", line)
                url = found.group(0) if found else None
            assert url is not None, proc.stderr.read() if proc.poll() is not None else "no link printed"
            base = url.split("/login")[0]
            assert httpx.get(base + "/").status_code == 401  # the link is the key
            user = httpx.Client(base_url=base, follow_redirects=True)
            page = user.get(url)
            assert page.status_code == 200 and "<h1>Photo</h1>" in page.text
            settings = user.get("/settings").text
            key_id = json.loads((home / "keyset.json").read_text())["key_id"]
            assert key_id in settings and srv.url in settings
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
            err = proc.stderr.read()
            assert "Traceback" not in err
            assert "token=" not in err  # no request line (the link's secret) in the app's log
        finally:
            if proc.poll() is None:
                proc.kill()

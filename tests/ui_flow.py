"""Shared by the web app's tests and scripts/ui_screenshots.py (no tests here): the app served on a free loopback
port in a thread, a matching server beside it, and the user's walk through the pages in a real browser:
enrol -> verify (accept) -> verify (reject) -> identify -> delete, with a screenshot of each page on request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from cryptoface.ui import UiSession, create_ui_app, new_secret
from cryptoface.ui.server import bind, login_url

TASK_SECONDS = 600  # one task's longest wait (a full-size OpenFHE inference takes ~2-4 minutes)


@contextmanager
def running_ui(client: Any, server_label: str, **kw: Any) -> Iterator[UiSession]:
    """The web app for ``client`` on 127.0.0.1, served until the block ends."""
    session = UiSession(client, server_label, new_secret(), **kw)
    sock = bind("127.0.0.1", 0)
    session.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_ui_app(session), access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "the web app did not start"
        time.sleep(0.02)
    try:
        yield session
    finally:
        server.should_exit = True
        thread.join(10)
        session.tasks.close()
        sock.close()


class Walk:
    """The browser session of one user; ``shots`` (a folder) receives a PNG of every page visited."""

    def __init__(self, driver: Any, session: UiSession, shots: Path | None = None) -> None:
        self.driver, self.session, self.shots = driver, session, shots
        self.base = f"http://127.0.0.1:{session.port}"
        self.timings: dict[str, float] = {}

    def shot(self, name: str) -> None:
        if self.shots is not None:
            self.shots.mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(self.shots / f"{name}.png"))

    def by(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def login(self) -> None:
        self.driver.get(login_url(self.session))
        self.wait_title("Photo")

    def photo(self, path: Path, shot: str | None = None) -> None:
        """Upload a photo from the home page and land on its aligned-face page."""
        self.driver.get(self.base + "/")
        self.by("#photo").send_keys(str(path))
        if shot:
            self.shot(shot)
        self.by("#photo-form button[type=submit]").click()
        self.wait_title("Aligned face")

    def wait_title(self, *titles: str, seconds: float = 60) -> str:
        """Wait until the page's h1 is one of ``titles`` (after a form's navigation); returns it."""
        from selenium.webdriver.support.ui import WebDriverWait

        def title(_: Any) -> str | bool:
            found = self.driver.find_elements("css selector", "h1")
            try:
                return found[0].text if found and found[0].text in titles else False
            except Exception:  # the element went stale: the next page is loading
                return False

        try:
            return WebDriverWait(self.driver, seconds, poll_frequency=0.1).until(title)
        except Exception as exc:
            raise AssertionError(f"expected a page titled {titles}: {self.driver.page_source[:800]}") from exc

    def run_task(self, form_css: str, fill: dict[str, str] | None = None, shot: str | None = None,
                 shot_running: str | None = None) -> dict[str, str]:
        """Submit a form of the photo page, wait on the task page until it ends; its decision and score."""
        from selenium.webdriver.support.ui import Select, WebDriverWait

        for css, value in (fill or {}).items():
            el = self.by(css)
            if el.tag_name == "select":
                Select(el).select_by_visible_text(value)
            else:
                el.clear()
                el.send_keys(value)
        t0 = time.perf_counter()
        self.by(f"{form_css} button[type=submit]").click()
        WebDriverWait(self.driver, 30, poll_frequency=0.1).until(
            lambda d: d.find_elements("css selector", "#task"))
        if shot_running:
            WebDriverWait(self.driver, 60).until(lambda d: self._server_layers() > 0 or self._ended())
            self.shot(shot_running)
        WebDriverWait(self.driver, TASK_SECONDS, poll_frequency=0.5).until(lambda d: self._ended())
        self.timings[shot or form_css] = time.perf_counter() - t0
        if shot:
            self.shot(shot)
        state = self.by("#task-state").text
        assert state == "done", (state, self.by("main").text[:800])
        out = {"decision": self.by("#decision").text}
        for key in ("score", "identified"):
            found = self.driver.find_elements("css selector", f"#{key}")
            if found:
                out[key] = found[0].text
        return out

    def _ended(self) -> bool:
        try:
            return self.by("#task").get_attribute("data-state") in ("done", "failed", "cancelled")
        except Exception:  # the page is reloading
            return False

    def _server_layers(self) -> int:
        try:
            return int(self.by("#server-progress").get_attribute("value") or 0)
        except Exception:
            return 0


def walkthrough(walk: Walk, photos: dict[str, Path]) -> dict[str, dict[str, str]]:
    """enrol obama -> verify obama (accept) -> verify chirac as obama (reject) -> identify -> delete."""
    from selenium.webdriver.support.ui import WebDriverWait

    results = {}
    walk.login()
    walk.photo(photos["enrol"], shot="01-home")
    walk.shot("02-aligned-face")
    results["enrol"] = walk.run_task('form[action$="/enrol"]', {"#enrol-subject": "obama"}, shot="04-enrolled",
                                     shot_running="03-task-running")
    walk.photo(photos["genuine"])
    results["accept"] = walk.run_task('form[action$="/verify"]', {"#verify-subject": "obama"}, shot="05-verify-accept")
    walk.photo(photos["impostor"])
    results["reject"] = walk.run_task('form[action$="/verify"]', {"#verify-subject": "obama"}, shot="06-verify-reject")
    walk.photo(photos["genuine"])
    results["identify"] = walk.run_task('form[action$="/identify"]', shot="07-identify")
    walk.driver.get(walk.base + "/tasks")
    walk.shot("08-tasks")
    walk.driver.get(walk.base + "/settings")
    walk.shot("09-settings")
    walk.driver.get(walk.base + "/subjects")
    walk.shot("10-subjects")
    walk.by('form[action$="/delete"] button').click()
    WebDriverWait(walk.driver, 10).until(lambda d: d.switch_to.alert)
    walk.driver.switch_to.alert.accept()
    WebDriverWait(walk.driver, 30).until(lambda d: "No subject is enrolled" in walk.by("main").text)
    results["deleted"] = {"decision": "deleted"}
    return results


__all__ = ["TASK_SECONDS", "Walk", "running_ui", "walkthrough"]

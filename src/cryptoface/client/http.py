"""The HTTP transport (httpx): the matching server's JSON API, ciphertexts and keys base64 inside JSON.

Large evaluation keys go one per request as raw bytes (``PUT /v1/keysets/{id}/keys/{kind}``), so neither side
holds a whole key set in one request body. Path segments are percent-encoded: a subject or key id is data,
never part of the route.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import httpx

from cryptoface.client.transport import ImageProbe, Probe, ScoreChunk, ServerError, TemplateProbe

DEFAULT_TIMEOUT = 3600.0  # an encrypted inference takes minutes on a small server


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _probe_json(probe: Probe) -> dict[str, Any]:
    if isinstance(probe, ImageProbe):
        out: dict[str, Any] = {"images": [_b64(c) for c in probe.images], "resolution": probe.resolution}
        if probe.packing != "monolithic":
            out["packing"] = probe.packing
        return out
    return {"ciphertext": _b64(probe.ciphertext), "stride": probe.stride, "replicas": probe.replicas}


def _seg(value: str) -> str:
    return quote(value, safe="")


class HTTPTransport:
    """Talks to one matching server over HTTP(S)."""

    def __init__(self, server: str, *, timeout: float = DEFAULT_TIMEOUT, client: httpx.Client | None = None) -> None:
        self.http = client or httpx.Client(base_url=server.rstrip("/"), timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, url: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise ServerError(0, "unreachable", f"{method} {url}: {exc}") from exc
        if r.status_code >= 400:
            try:
                body = r.json()
                code, detail = body.get("error", "error"), body.get("detail", r.text)
            except (ValueError, AttributeError):
                code, detail = "error", r.text
            if not isinstance(detail, str):
                detail = json.dumps(detail)
            raise ServerError(r.status_code, str(code), detail)
        return None if r.status_code == 204 or not r.content else r.json()

    @staticmethod
    def _keyset(key_id: str) -> str:
        return f"/v1/keysets/{_seg(key_id)}"

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def has_key_set(self, key_id: str) -> bool:
        try:
            self._call("GET", self._keyset(key_id))
        except ServerError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def register(self, backend: str, params_json: str, keys: Iterable[tuple[str, bytes]]) -> str:
        it = iter(keys)
        kind, public = next(it)
        if kind != "public":
            raise ValueError("register: the public key must come first")
        body = {"backend": backend, "params": json.loads(params_json), "keys": {"public": _b64(public)}}
        key_id = self._call("POST", "/v1/keysets", json=body)["key_id"]
        for kind, data in it:
            self._call("PUT", f"{self._keyset(key_id)}/keys/{_seg(kind)}", content=data,
                       headers={"content-type": "application/octet-stream"})
        return key_id

    def delete_key_set(self, key_id: str) -> None:
        self._call("DELETE", self._keyset(key_id))

    def infer(self, key_id: str, probe: ImageProbe) -> TemplateProbe:
        out = self._call("POST", f"{self._keyset(key_id)}/infer", json={"probe": _probe_json(probe)})
        return TemplateProbe(base64.b64decode(out["ciphertext"]), int(out["stride"]), int(out["replicas"]))

    def enroll(self, key_id: str, subject: str, probes: list[Probe]) -> list[int]:
        out = self._call("POST", f"{self._keyset(key_id)}/subjects/{_seg(subject)}/templates",
                         json={"probes": [_probe_json(p) for p in probes]})
        return [int(i) for i in out["template_ids"]]

    def verify(self, key_id: str, subject: str, probe: Probe, mode: str) -> list[bytes]:
        out = self._call("POST", f"{self._keyset(key_id)}/verify",
                         json={"subject": subject, "probe": _probe_json(probe), "mode": mode})
        return [base64.b64decode(c) for c in out["results"]]

    def identify(self, key_id: str, probe: Probe, mode: str) -> list[ScoreChunk]:
        out = self._call("POST", f"{self._keyset(key_id)}/identify", json={"probe": _probe_json(probe), "mode": mode})
        return [ScoreChunk(base64.b64decode(c["ciphertext"]), tuple(int(s) for s in c["slots"]),
                           tuple(str(n) for n in c["subjects"])) for c in out["chunks"]]

    def subjects(self, key_id: str) -> list[str]:
        return [str(s) for s in self._call("GET", f"{self._keyset(key_id)}/subjects")]

"""HTTP client of the matching server (httpx); decrypts results locally with the client's secret key."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from cryptoface.client.keys import ClientKeys
from cryptoface.errors import CryptoFaceError

INLINE_KEY_BYTES = 64 * 1024 * 1024  # key sets up to this size go in one JSON request; larger ones key by key


class ServerError(CryptoFaceError):
    """The server answered with an error status."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"server error {status} ({code}): {detail}")
        self.status, self.code, self.detail = status, code, detail


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class VerifyResult:
    subject: str
    accepted: bool
    mode: str
    values: list[float]  # one per enrolled template: cosine (score mode) or F(cos - tau) (decision mode)
    threshold: float | None

    @property
    def score(self) -> float | None:
        return max(self.values) if self.mode == "score" else None


@dataclass
class IdentifyResult:
    subject: str | None  # best subject above threshold, None = unknown
    score: float | None
    mode: str
    scores: dict[str, float] = field(default_factory=dict)  # best value per subject
    threshold: float | None = None


class CryptoFaceClient:
    """Talks to one server under one key set."""

    def __init__(self, server: str, keys: ClientKeys, *, timeout: float = 3600.0, client: httpx.Client | None = None):
        self.keys = keys
        self.http = client or httpx.Client(base_url=server.rstrip("/"), timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> CryptoFaceClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------
    def _call(self, method: str, url: str, **kw: Any) -> Any:
        r = self.http.request(method, url, **kw)
        if r.status_code >= 400:
            try:
                body = r.json()
                code, detail = body.get("error", "error"), body.get("detail", r.text)
            except (ValueError, json.JSONDecodeError):
                code, detail = "error", r.text
            if not isinstance(detail, str):
                detail = json.dumps(detail)
            raise ServerError(r.status_code, str(code), detail)
        return r.json()

    @property
    def _base(self) -> str:
        return f"/v1/keysets/{self.keys.key_id}"

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    # -- keys ---------------------------------------------------------------------------------
    def register(self) -> str:
        """Send the public and evaluation keys (never the secret key); returns the key-set id."""
        keys = self.keys.evaluation_keys
        params = json.loads(self.keys.params_json)
        if sum(len(v) for v in keys.values()) <= INLINE_KEY_BYTES:
            body = {"backend": self.keys.backend_name, "params": params, "keys": {k: _b64(v) for k, v in keys.items()}}
            return self._call("POST", "/v1/keysets", json=body)["key_id"]
        body = {"backend": self.keys.backend_name, "params": params, "keys": {"public": _b64(keys["public"])}}
        key_id = self._call("POST", "/v1/keysets", json=body)["key_id"]
        for kind, data in keys.items():
            if kind != "public":
                self._call(
                    "PUT",
                    f"/v1/keysets/{key_id}/keys/{kind}",
                    content=data,
                    headers={"content-type": "application/octet-stream"},
                )
        return key_id

    # -- probes -------------------------------------------------------------------------------
    def template_probe(self, ct: Any) -> dict[str, Any]:
        return {"ciphertext": _b64(self.keys.backend.serialize(ct)), "stride": self.keys.stride}

    def image_probe(self, cts: list[Any], resolution: int, packing: str = "monolithic") -> dict[str, Any]:
        probe = {"images": [_b64(self.keys.backend.serialize(c)) for c in cts], "resolution": resolution}
        if packing != "monolithic":
            probe["packing"] = packing
        return probe

    def enroll(self, subject: str, probes: list[dict[str, Any]]) -> list[int]:
        return self._call("POST", f"{self._base}/subjects/{subject}/templates", json={"probes": probes})["template_ids"]

    def subjects(self) -> list[str]:
        return self._call("GET", f"{self._base}/subjects")

    def _decrypt(self, data: str) -> np.ndarray:
        be = self.keys.backend
        return be.decrypt(be.deserialize(base64.b64decode(data)))

    def verify(self, subject: str, probe: dict[str, Any], mode: str = "score") -> VerifyResult:
        out = self._call("POST", f"{self._base}/verify", json={"subject": subject, "probe": probe, "mode": mode})
        values = [float(self._decrypt(c)[out["slot"]]) for c in out["results"]]
        tau = out.get("threshold")
        accepted = max(values) > (tau if mode == "score" else 0.0)
        return VerifyResult(subject, accepted, mode, values, tau)

    def identify(self, probe: dict[str, Any], mode: str = "score") -> IdentifyResult:
        out = self._call("POST", f"{self._base}/identify", json={"probe": probe, "mode": mode})
        best: dict[str, float] = {}
        for chunk in out["chunks"]:
            slots = self._decrypt(chunk["ciphertext"])
            for slot, name in zip(chunk["slots"], chunk["subjects"], strict=True):
                best[name] = max(best.get(name, -np.inf), float(slots[slot]))
        tau = out.get("threshold")
        cut = tau if mode == "score" else 0.0
        name, value = max(best.items(), key=lambda kv: kv[1]) if best else (None, None)
        if value is None or value <= cut:
            return IdentifyResult(None, value, mode, best, tau)
        return IdentifyResult(name, value, mode, best, tau)

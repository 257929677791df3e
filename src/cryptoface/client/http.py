"""The HTTP transport (httpx): the matching server's JSON API, ciphertexts and keys base64 inside JSON.

Every request carries the tenant's API key (``x-api-key``); the admin client sends the admin key as a bearer
token to ``/v1/admin/...`` only. TLS is verified against the system's trust store or the given CA certificate,
and a credential is never sent in the clear to another machine (plain ``http://`` only to a loopback address,
unless ``insecure_http``). Large evaluation keys go one per request as raw bytes
(``PUT /v1/keysets/{id}/keys/{kind}``). Subject names travel in JSON bodies, never in URLs (which end up in
access logs); the ids that do are percent-encoded.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from cryptoface.client.transport import (
    AuthError,
    Challenge,
    ImageProbe,
    JobInfo,
    KeySetInfo,
    PairChunk,
    Probe,
    ScoreChunk,
    ServerError,
    Subject,
    TemplateProbe,
)
from cryptoface.errors import CryptoFaceError

DEFAULT_TIMEOUT = 3600.0  # an encrypted inference takes minutes on a small server
# A busy server answers 503 + Retry-After before doing any work, so the request is safe to send again; the
# client waits up to this long in all before reporting the server as busy.
MAX_BUSY_WAIT = 900.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _probe_json(probe: Probe) -> dict[str, Any]:
    if isinstance(probe, ImageProbe):
        out: dict[str, Any] = {"images": [_b64(c) for c in probe.images], "resolution": probe.resolution}
        if probe.packing != "monolithic":
            out["packing"] = probe.packing
        return out
    out = probe.to_request()  # refuses a block output, which is never sent back
    return {**out, "ciphertext": _b64(out["ciphertext"])}


def _job(out: dict[str, Any]) -> JobInfo:
    p, err = out.get("progress") or {}, out.get("error")
    return JobInfo(str(out["job_id"]), str(out["key_id"]), str(out["kind"]), str(out["state"]), int(p.get("done", 0)),
                   int(p.get("total", 0)), str(p.get("step", "")), float(out["created"]),
                   None if out.get("started") is None else float(out["started"]),
                   None if out.get("ended") is None else float(out["ended"]),
                   None if not err else f"{err.get('error')}: {err.get('detail')}")


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


def _subject(body: dict[str, Any]) -> Subject:
    return Subject(int(body["subject_id"]), str(body["subject"]), tuple(int(i) for i in body["template_ids"]))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_verify(ca_cert: str | os.PathLike[str] | None) -> ssl.SSLContext | bool:
    """httpx's ``verify``: the system trust store, or a context trusting ``ca_cert`` (a PEM file) as well."""
    if ca_cert is None:
        return True
    path = Path(ca_cert).expanduser()
    if not path.is_file():
        raise CryptoFaceError(f"CA certificate {path} does not exist (--ca-cert / $CRYPTOFACE_CA_CERT)")
    try:
        return ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise CryptoFaceError(f"{path} is not a PEM certificate: {exc}") from exc


class _HTTP:
    """One httpx client with the credential header, TLS verification and the service's error body."""

    def __init__(self, server: str, headers: dict[str, str], *, ca_cert: str | os.PathLike[str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, insecure_http: bool = False,
                 client: httpx.Client | None = None) -> None:
        url = urlsplit(server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise CryptoFaceError(f"server URL {server!r} must be http(s)://HOST[:PORT]")
        if headers and url.scheme == "http" and not _is_loopback(url.hostname) and not insecure_http:
            raise CryptoFaceError(f"refusing to send a credential in the clear to {url.hostname}: use https:// "
                                  "(serve --tls-cert/--tls-key), or --insecure-http on a network you trust")
        if client is not None:
            client.headers.update(headers)
            self.http = client
        else:
            self.http = httpx.Client(base_url=server.rstrip("/"), timeout=timeout, headers=headers,
                                     verify=tls_verify(ca_cert))
        self.max_busy_wait = MAX_BUSY_WAIT

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, url: str, **kw: Any) -> Any:
        waited = 0.0
        while True:
            try:
                r = self.http.request(method, url, **kw)
            except httpx.HTTPError as exc:
                raise ServerError(0, "unreachable", f"{method} {url}: {exc}") from exc
            retry = r.headers.get("retry-after", "")
            if r.status_code == 503 and retry.isdigit() and waited < self.max_busy_wait:
                pause = min(max(float(retry), 1.0), self.max_busy_wait - waited)
                time.sleep(pause)
                waited += pause
                continue
            break
        if r.status_code >= 400:
            try:
                body = r.json()
                code, detail = body.get("error", "error"), body.get("detail", r.text)
            except (ValueError, AttributeError):
                code, detail = "error", r.text
            if not isinstance(detail, str):
                detail = json.dumps(detail)
            if r.status_code == 401:
                raise AuthError(401, str(code), "the server refused the credential (missing, unknown or revoked); "
                                "run 'cryptoface login --server URL --api-key TOKEN' or set $CRYPTOFACE_API_KEY")
            raise ServerError(r.status_code, str(code), detail)
        return None if r.status_code == 204 or not r.content else r.json()


class HTTPTransport:
    """Talks to one matching server over HTTP(S) as one tenant (its API key on every request)."""

    def __init__(self, server: str, *, api_key: str | None = None, ca_cert: str | os.PathLike[str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, insecure_http: bool = False,
                 client: httpx.Client | None = None) -> None:
        headers = {} if api_key is None else {"x-api-key": api_key}
        self._http = _HTTP(server, headers, ca_cert=ca_cert, timeout=timeout, insecure_http=insecure_http,
                           client=client)
        self.http = self._http.http

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, url: str, **kw: Any) -> Any:
        return self._http.call(method, url, **kw)

    @staticmethod
    def _keyset(key_id: str) -> str:
        return f"/v1/keysets/{_seg(key_id)}"

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def key_set(self, key_id: str) -> KeySetInfo | None:
        try:
            out = self._call("GET", self._keyset(key_id))
        except ServerError as exc:
            if exc.status == 404:
                return None
            raise
        return KeySetInfo(str(out["key_id"]), str(out.get("backend", "")), str(out.get("status", "active")),
                          tuple(str(k) for k in out.get("key_kinds", ())))

    def key_sets(self) -> list[KeySetInfo]:
        """This tenant's key sets."""
        return [KeySetInfo(str(o["key_id"]), str(o.get("backend", "")), str(o.get("status", "active")),
                           tuple(str(k) for k in o.get("key_kinds", ()))) for o in self._call("GET", "/v1/keysets")]

    def create_key_set(self, backend: str, params_json: str, public_key: bytes) -> Challenge:
        body = {"backend": backend, "params": json.loads(params_json), "keys": {"public": _b64(public_key)}}
        out = self._call("POST", "/v1/keysets", json=body)
        ch = out["challenge"]
        return Challenge(str(out["key_id"]), base64.b64decode(ch["ciphertext"]), int(ch["count"]), str(ch["nonce"]))

    def prove(self, key_id: str, proof: str) -> str:
        return str(self._call("POST", f"{self._keyset(key_id)}/proof", json={"proof": proof})["status"])

    def add_key(self, key_id: str, kind: str, data: bytes) -> None:
        self._call("PUT", f"{self._keyset(key_id)}/keys/{_seg(kind)}", content=data,
                   headers={"content-type": "application/octet-stream"})

    def delete_key_set(self, key_id: str) -> None:
        self._call("DELETE", self._keyset(key_id))

    def infer(self, key_id: str, probe: ImageProbe) -> TemplateProbe:
        out = self._call("POST", f"{self._keyset(key_id)}/infer", json={"probe": _probe_json(probe)})
        return TemplateProbe.of_result(base64.b64decode(out["ciphertext"]), out)

    def model_tail(self) -> tuple[str, bytes]:
        out = self._call("GET", "/v1/model/tail")
        return str(out["model_id"]), base64.b64decode(out["tail"])

    def submit_infer(self, key_id: str, probe: ImageProbe) -> JobInfo:
        return _job(self._call("POST", f"{self._keyset(key_id)}/jobs", json={"probe": _probe_json(probe)}))

    def job(self, job_id: str) -> JobInfo:
        return _job(self._call("GET", f"/v1/jobs/{_seg(job_id)}"))

    def jobs(self) -> list[JobInfo]:
        return [_job(o) for o in self._call("GET", "/v1/jobs")]

    def job_result(self, job_id: str) -> TemplateProbe:
        out = self._call("GET", f"/v1/jobs/{_seg(job_id)}/result")
        return TemplateProbe.of_result(base64.b64decode(out["ciphertext"]), out)

    def cancel_job(self, job_id: str) -> JobInfo:
        return _job(self._call("POST", f"/v1/jobs/{_seg(job_id)}/cancel"))

    def delete_job(self, job_id: str) -> None:
        self._call("DELETE", f"/v1/jobs/{_seg(job_id)}")

    def create_subject(self, key_id: str, subject: str, probes: list[Probe]) -> Subject:
        return _subject(self._call("POST", f"{self._keyset(key_id)}/subjects",
                                   json={"subject": subject, "probes": [_probe_json(p) for p in probes]}))

    def add_templates(self, key_id: str, subject_id: int, probes: list[Probe]) -> Subject:
        return _subject(self._call("POST", f"{self._keyset(key_id)}/subjects/{_seg(subject_id)}/templates",
                                   json={"probes": [_probe_json(p) for p in probes]}))

    def subjects(self, key_id: str) -> list[Subject]:
        return [_subject(s) for s in self._call("GET", f"{self._keyset(key_id)}/subjects")]

    def delete_subject(self, key_id: str, subject_id: int) -> None:
        self._call("DELETE", f"{self._keyset(key_id)}/subjects/{_seg(subject_id)}")

    def delete_template(self, key_id: str, template_id: int) -> None:
        self._call("DELETE", f"{self._keyset(key_id)}/templates/{_seg(template_id)}")

    def verify(self, key_id: str, subject: str, probe: Probe, mode: str) -> list[bytes]:
        out = self._call("POST", f"{self._keyset(key_id)}/verify",
                         json={"subject": subject, "probe": _probe_json(probe), "mode": mode})
        return [base64.b64decode(c) for c in out["results"]]

    def identify(self, key_id: str, probe: Probe, mode: str) -> list[ScoreChunk]:
        out = self._call("POST", f"{self._keyset(key_id)}/identify", json={"probe": _probe_json(probe), "mode": mode})
        return [ScoreChunk(base64.b64decode(c["ciphertext"]), tuple(int(s) for s in c["slots"]),
                           tuple(str(n) for n in c["subjects"])) for c in out["chunks"]]

    def compare(self, key_id: str, pairs: list[tuple[Probe, Probe]]) -> list[PairChunk]:
        body = {"pairs": [{"a": _probe_json(a), "b": _probe_json(b)} for a, b in pairs]}
        out = self._call("POST", f"{self._keyset(key_id)}/compare", json=body)
        return [PairChunk(base64.b64decode(c["ciphertext"]), tuple(int(s) for s in c["slots"])) for c in out["chunks"]]

    def audit(self, after: int = 0) -> list[dict[str, Any]]:
        """This tenant's audit rows after id ``after`` (ids, actions, times: no names, no ciphertexts)."""
        return list(self._call("GET", "/v1/audit", params={"after": int(after)}))


class AdminClient:
    """The operator's requests (``/v1/admin/...``, admin key as a bearer token): tenants and API keys."""

    def __init__(self, server: str, admin_key: str, *, ca_cert: str | os.PathLike[str] | None = None,
                 timeout: float = 60.0, insecure_http: bool = False, client: httpx.Client | None = None) -> None:
        self._http = _HTTP(server, {"authorization": f"Bearer {admin_key}"}, ca_cert=ca_cert, timeout=timeout,
                           insecure_http=insecure_http, client=client)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def create_tenant(self, name: str) -> dict[str, Any]:
        """A new tenant: ``{tenant_id, name, created_at}``."""
        from cryptoface.names import validate_name

        return self._http.call("POST", "/v1/admin/tenants", json={"name": validate_name(name, "tenant name")})

    def tenants(self) -> list[dict[str, Any]]:
        return list(self._http.call("GET", "/v1/admin/tenants"))

    def create_api_key(self, tenant_id: str) -> dict[str, Any]:
        """A new API key for ``tenant_id``: ``{key_id, tenant_id, token}``; the token is shown this once only."""
        return self._http.call("POST", f"/v1/admin/tenants/{_seg(tenant_id)}/api-keys")

    def revoke_api_key(self, key_id: str) -> None:
        self._http.call("DELETE", f"/v1/admin/api-keys/{_seg(key_id)}")

    def audit(self, after: int = 0) -> list[dict[str, Any]]:
        """Every tenant's audit rows after id ``after``."""
        return list(self._http.call("GET", "/v1/audit", params={"after": int(after)}))

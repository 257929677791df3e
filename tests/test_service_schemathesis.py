"""A bounded schemathesis run against the server's own OpenAPI document, over real HTTP: schema-valid and
schema-violating requests on every operation (>= 2,000 cases in all, derandomised, ~40 s here, stopped after
4 minutes whatever the count), with no 5xx but 501/503, and every answer's status, content type and body as the
document says. Schema-violating cases include the credentials (a missing or forged API key: 401).

The simulator backend: schemathesis explores the HTTP surface, which is the same for every backend. OpenFHE's
deserialisers, reached through that surface, are fuzzed in test_service_fuzz.py and attacked directly in
test_openfhe_screen.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from test_service_support import ADMIN_KEY, Server, embedding, enrol, make_keys, probe, register

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MIN_CASES = 2000
EXAMPLES = {GenerationMode.POSITIVE: 70, GenerationMode.NEGATIVE: 50}  # per operation
TIME_LIMIT_S = 240.0
# not_a_server_error is replaced by the assertion in run(): 501 (no model) and 503 (busy) are documented answers
CHECKS = (status_code_conformance, content_type_conformance, response_schema_conformance)


def test_schemathesis_against_the_openapi_document(tmp_path):
    srv = Server(tmp_path / "st.db", max_body_bytes=2 * 1024 * 1024)
    try:
        keys = make_keys()
        _, http = srv.tenant("st")
        kid = register(http, keys)
        r = enrol(http, kid, "alice", [probe(keys, embedding(np.random.default_rng(0)))])
        sid = r.json()["subject_id"]
        token = http.headers["x-api-key"]
        spec = http.get("/openapi.json").json()
        schema = schemathesis.openapi.from_dict(spec)
        counts = {"cases": 0, "5xx": 0}
        statuses: dict[int, int] = {}
        skipped: list[str] = []
        deadline = time.monotonic() + TIME_LIMIT_S

        def headers_for(case) -> dict[str, str]:
            path = case.operation.path
            if path.startswith("/v1/admin") or (path == "/v1/audit" and counts["cases"] % 2):
                return {"authorization": f"Bearer {ADMIN_KEY}"}
            return {"x-api-key": token}

        def aim(case) -> None:
            """Point a share of the cases at the real key set and subject, so they reach the service's logic."""
            params = case.path_parameters or {}
            if counts["cases"] % 3 and "key_id" in params and case.operation.method.upper() != "DELETE":
                params["key_id"] = kid
                if "subject_id" in params:
                    params["subject_id"] = sid

        for result in schema.get_all_operations():
            operation = result.ok()
            for mode, n in EXAMPLES.items():
                if time.monotonic() > deadline:
                    break

                @settings(max_examples=n, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                          suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def run(case) -> None:
                    aim(case)
                    response = case.call(base_url=srv.url, headers=headers_for(case), timeout=60)
                    counts["cases"] += 1
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code >= 500 and response.status_code not in (501, 503):
                        counts["5xx"] += 1
                        raise AssertionError(f"{response.status_code}: {response.text[:300]}")
                    case.validate_response(response, checks=CHECKS)

                try:
                    run()
                except Unsatisfiable:  # nothing to violate (no parameters, no body): the positive run covers it
                    skipped.append(f"{mode.value} {operation.method.upper()} {operation.path}")
        print(f"\nschemathesis: {counts['cases']} cases, statuses {dict(sorted(statuses.items()))}, "
              f"no negative cases for {skipped}")
        assert counts["5xx"] == 0
        assert counts["cases"] >= MIN_CASES
    finally:
        srv.stop()

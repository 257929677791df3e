"""Patch-parallel encrypted inference and sharded 1:N scoring over an executor (local or Ray).

:class:`PatchParallelEngine` serialises each unit's input ciphertexts, has the executor run the units
(:mod:`cryptoface.engine.units`), and combines the partial templates on the caller's backend: ``units - 1``
additions and the bias, no decryption. :func:`sharded_scores` scores a replicated, normalised probe against
packed gallery chunks spread over the executor's workers; the result is the same list of per-chunk score
ciphertexts (or decision-only ciphertexts) the in-process service returns, in chunk order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cryptoface.engine.executor import Handle
from cryptoface.engine.units import combine, unit_patches, unit_plan
from cryptoface.errors import ParameterError
from cryptoface.model.fused import FusedModel


class PatchParallelEngine:
    """A fused model cut into units, evaluated by ``executor``; one instance serves many requests."""

    def __init__(self, executor: Any, model: FusedModel, model_id: str | None = None) -> None:
        self.executor = executor
        self.model = model
        self.units = unit_patches(model.n_patches)
        self.handles: list[Handle] = executor.model(model, model_id)
        self.last_report: dict[str, Any] = {}

    def infer(self, backend: Any, keys: Handle, unit_cts: Sequence[Sequence[Any]]) -> tuple[Any, Any]:
        """The encrypted template from each unit's input ciphertexts (:func:`~cryptoface.engine.units.encrypt_units`).

        ``backend`` is the caller's (server: public keys only); it deserialises and combines the partials. A unit
        plan with a clear tail returns the last block's output, which cannot be summed: one unit only (Net4)."""
        if len(unit_cts) != len(self.units):
            raise ValueError(f"expected inputs for {len(self.units)} units, got {len(unit_cts)}")
        plan = unit_plan(backend.slots, backend.params.levels)
        if plan.clear_tail and len(self.units) != 1:
            raise ParameterError(f"these parameters stop the network before its tail, which {len(self.units)} units "
                                 "cannot share: use the whole network's levels (default_parameters)")
        for u, cts in enumerate(unit_cts):
            if len(cts) != plan.input_layout.n_cts:
                raise ValueError(f"unit {u}: expected {plan.input_layout.n_cts} ciphertexts, got {len(cts)}")
        t0 = time.perf_counter()
        inputs = [[backend.serialize(c) for c in cts] for cts in unit_cts]
        t1 = time.perf_counter()
        results = self.executor.run_units(keys, self.handles, inputs)
        t2 = time.perf_counter()
        partials = [backend.deserialize(r["ciphertext"]) for r in results]
        t3 = time.perf_counter()
        out = partials[0] if plan.clear_tail else combine(backend, partials, self.model.bias, plan.template)
        t4 = time.perf_counter()
        self.last_report = {
            **self.executor.last_report,
            "units": [{k: v for k, v in r.items() if k != "ciphertext"} | {"unit": u, "patches": self.units[u]}
                      for u, r in enumerate(results)],
            "serialize_inputs_s": t1 - t0, "run_units_s": t2 - t1, "deserialize_partials_s": t3 - t2,
            "combine_s": t4 - t3, "request_s": t4 - t0,
            "input_bytes": sum(len(b) for u in inputs for b in u),
            "partial_bytes": sum(len(r["ciphertext"]) for r in results),
        }
        return out, plan.output_layout


def sharded_scores(executor: Any, backend: Any, keys: Handle, probe_replicated: Any, chunks: Sequence[bytes],
                   counts: Sequence[int], tau: float | None = None) -> list[bytes]:
    """Per gallery chunk, the encrypted scores (``tau``: decision-only values) of the replicated probe."""
    handles = executor.chunks(chunks)
    return executor.score(keys, backend.serialize(probe_replicated), handles, counts, tau)


__all__ = ["PatchParallelEngine", "sharded_scores"]

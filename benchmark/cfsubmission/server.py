"""The server's stages: model preparation (3) and encrypted compute (7), with public keys only.

Stage 7 builds its backend from the public key folder alone (:func:`cryptoface.client.keys.load_public_backend`
refuses a folder holding a secret key, and the backend is checked to hold none), runs the encrypted inference
of each photo exactly as the service does (the prepared plan and caches of :mod:`cryptoface.engine.artefact`,
the evaluator's ``infer``) and scores each pair with :func:`cryptoface.match.pairs.score_pairs`: normalise both
templates, encrypted cosine, scores packed up to ``slots // 256`` per ciphertext. Everything it reads is in
:class:`~cfsubmission.paths.ServerPaths`; it never names a client folder.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfsubmission.config import BenchConfig, SubmissionError
from cfsubmission.paths import IMAGE_LAYOUT, MANIFEST, SCORES_LAYOUT, ServerPaths, pair_file
from cryptoface import container


@dataclass
class ComputeReport:
    """Stage 7's timing (seconds), written for the harness as ``server_reported.json``."""

    pairs: int
    batches: int = 0
    load_keys: float = 0.0
    load_model: float = 0.0
    inference: float = 0.0
    matching: float = 0.0
    io: float = 0.0
    total: float = 0.0
    per_image: list[float] = field(default_factory=list)

    def harness_json(self) -> dict[str, Any]:
        """The harness's schema: pure encrypted compute, the stage's total, then a breakdown."""
        compute = self.inference + self.matching
        mean = self.inference / len(self.per_image) if self.per_image else 0.0
        return {
            "Encrypted computation": round(compute, 4),
            "Total": round(self.total, 4),
            "additional_measurements": {
                "Key loading (public and evaluation keys)": round(self.load_keys, 4),
                "Prepared model loading": round(self.load_model, 4),
                "Encrypted inference (all photos)": round(self.inference, 4),
                "Encrypted inference (mean per photo)": round(mean, 4),
                "Encrypted matching (normalise, cosine, packing)": round(self.matching, 4),
                "Container reading and writing": round(self.io, 4),
                "Score ciphertexts": self.batches,
            },
        }


# -- stage 3 -----------------------------------------------------------------------------------------------
def prepare(cfg: BenchConfig, server_data: Path) -> Any:
    """Write the prepared model folder (fused model, plan, engine caches) for the run's parameters."""
    from cryptoface.engine.artefact import prepare_model

    shutil.rmtree(server_data, ignore_errors=True)
    return prepare_model(cfg.model_path, cfg.params, server_data, backend=cfg.backend)


# -- stage 7 -----------------------------------------------------------------------------------------------
def _upload_manifest(paths: ServerPaths) -> tuple[int, int]:
    try:
        raw = json.loads((paths.upload / MANIFEST).read_text())
        pairs, resolution = int(raw["pairs"]), int(raw["resolution"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SubmissionError(f"{paths.upload / MANIFEST} is missing or unreadable ({exc}); run "
                              "client_encode_encrypt_input first") from exc
    if pairs < 1:
        raise SubmissionError(f"{paths.upload / MANIFEST}: no pairs to compute")
    return pairs, resolution


def _templates(backend: Any, engine: Any, layout: Any, paths: ServerPaths, pairs: int,
               report: ComputeReport) -> Iterator[tuple[Any, Any]]:
    """(template of image0, template of image1) per pair, inferred one photo at a time from the upload."""
    for i in range(pairs):
        out = []
        for side in (0, 1):
            t0 = time.perf_counter()
            cf = container.load(pair_file(paths.upload, i, side))
            if cf.meta.get("pair") != i or cf.meta.get("side") != side:
                raise SubmissionError(f"{pair_file(paths.upload, i, side).name} holds pair {cf.meta.get('pair')} "
                                      f"side {cf.meta.get('side')}")
            cts = container.unpack_ciphertexts(backend, cf, layout=IMAGE_LAYOUT)
            t1 = time.perf_counter()
            ct, got = engine.infer(cts, progress=False)
            t2 = time.perf_counter()
            report.io += t1 - t0
            report.inference += t2 - t1
            report.per_image.append(t2 - t1)
            if got != layout:
                raise SubmissionError(f"the engine returned a template in {got}, its plan says {layout}")
            out.append(ct)
        yield out[0], out[1]


def compute(cfg: BenchConfig, paths: ServerPaths) -> ComputeReport:
    """Templates of every uploaded photo, pair scores packed into ``download/scores-NNNN.cfct``, the report."""
    from cryptoface.client.keys import load_public_backend
    from cryptoface.engine.artefact import load_prepared
    from cryptoface.match.pairs import score_pairs

    start = time.perf_counter()
    pairs, resolution = _upload_manifest(paths)
    report = ComputeReport(pairs)
    backend, info = load_public_backend(paths.public_keys)
    if backend.has_secret_key:  # load_public_backend refuses this already; the server never holds one
        raise SubmissionError("the server backend holds a secret key; refusing to compute")
    t1 = time.perf_counter()
    model, prepared = load_prepared(paths.server_data)
    engine = prepared.engine(backend, workers=cfg.workers)  # checks parameters and rotation keys first
    if model.resolution != resolution:
        raise SubmissionError(f"the photos were encrypted for {resolution}x{resolution}, the prepared model takes "
                              f"{model.resolution}x{model.resolution}")
    if prepared.plan.clear_tail:  # the one-round workload scores templates on the server
        raise SubmissionError("the prepared plan stops before the network's tail (fewer than the whole network's "
                              "levels); prepare it with the one-round parameters (the submission's default)")
    t2 = time.perf_counter()
    report.load_keys, report.load_model = t1 - start, t2 - t1
    download = paths.download
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir(parents=True)
    layout = prepared.plan.template
    names = []
    templates = _templates(backend, engine, layout, paths, pairs, report)
    loop = time.perf_counter()
    for batch in score_pairs(backend, templates, layout):
        t = time.perf_counter()
        cf = container.pack_ciphertexts(backend, [batch.ciphertext], SCORES_LAYOUT,
                                        meta={"first": batch.first, "count": batch.count})
        name = f"scores-{len(names):04d}.cfct"
        container.save(download / name, cf)
        names.append(name)
        report.io += time.perf_counter() - t
    # the generator's inference and reading are timed inside it; what is left of the loop is matching
    report.matching = time.perf_counter() - loop - report.inference - report.io
    (download / MANIFEST).write_text(json.dumps({"pairs": pairs, "batches": names, "key_id": info["key_id"]},
                                                indent=2) + "\n")
    report.batches = len(names)
    report.total = time.perf_counter() - start
    paths.report.write_text(json.dumps(report.harness_json(), indent=2) + "\n")
    return report

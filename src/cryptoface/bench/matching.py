"""Encrypted matching on a real CKKS backend: encrypted against clear scores, 1:1 and 1:N times, store bytes.

What it measures, and how:

* **Templates.** The clear network's output (the model's numpy forward on aligned LFW crops, or synthetic
  embeddings), encrypted by the client exactly as the engine delivers a template: the engine's
  :class:`~cryptoface.engine.layout.TemplateLayout` (replicated over the ring, ``TEMPLATE_SCALE``) at the
  engine's output level (``plan.end_level`` = ``LEVELS.matching_reserve`` = 7). The encrypted network's own
  error is what :func:`cryptoface.bench.run_inference` measures.
* **Client / server split.** This process is the client (key generation with *only* the rotation keys matching
  needs, :func:`cryptoface.match.rotation_steps`; encryption; decryption). The server side
  (:mod:`cryptoface.bench.match_server`) runs in a spawned child process that receives the public and evaluation
  keys and ciphertexts as bytes through files and never holds a secret key; its peak RSS (``VmHWM`` of the
  child) is the server's memory.
* **1:1.** Per pair: enrol the left template (server: normalise, store it in a SQLite store), verify the right
  one (server: normalise, cosine against the stored template); the client decrypts the score and compares it
  with the clear cosine of the same templates (:func:`cryptoface.match.clear.cosine_clear`).
* **1:N.** Packed galleries (:func:`cryptoface.match.layout.pack_gallery_slots`, 128 templates per ciphertext
  at N = 2^16) encrypted by the client at the level the store keeps them (the normalised templates' level): the
  LFW pair templates normalised in the clear first, then random unit vectors up to the gallery size. One probe
  (a raw template at the engine's level) is normalised, replicated and scored by the server; the client decrypts
  and takes the argmax. The enrolled subjects are also packed by the server from the stored encrypted templates
  (:func:`cryptoface.match.pack_gallery`, the service's path) and scored.
* **Storage.** Bytes per subject = its template ciphertext as stored + its share of the packed gallery bytes.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryptoface.bench.exchange import write_keys
from cryptoface.bench.match_report import (
    IdentifyReport,
    InvSqrtReport,
    MatchReport,
    PairResult,
    ServerReport,
    StorageReport,
)
from cryptoface.bench.match_server import ServerJob, server_main
from cryptoface.bench.match_templates import PairTemplates, lfw_templates, synthetic_templates
from cryptoface.bench.memory import drop_client_rotation_keys, peak_rss_bytes
from cryptoface.bench.report import bytes_by_kind, median, params_summary
from cryptoface.errors import DataError, ParameterError
from cryptoface.match.layout import EMBEDDING_DIM, GalleryLayout
from cryptoface.params import PROTOCOLS, RINGS


@dataclass(frozen=True, kw_only=True)
class MatchOptions:
    """What ``cryptoface bench-match`` measures (one field per flag)."""

    backend: str = "openfhe"
    protocol: str = "refresh"  # cryptoface.params.PROTOCOLS: who normalises the templates
    ring: str = "match"  # refresh protocol: templates on the client's matching ring (RINGS), or the network's
    lfw_dir: Path | None = None  # None: synthetic embeddings
    pairs: int = 200
    gallery_sizes: tuple[int, ...] = (1000, 10000)
    runs: int = 3
    model: Path | None = None  # None: the bundled model
    threshold: float | None = None  # None: the model's
    threads: int = 1
    device: str = "cpu"  # client and server backends; "gpu": desilofhe's CUDA mode
    cache_dir: Path | None = None
    log_ring: int | None = None  # simulator only: a smaller ring for quick tests
    seed: int = 0
    workdir: Path | None = None  # None: a temporary folder, removed afterwards
    progress: bool = True  # progress bars on stderr
    command: str | None = None  # the command line, recorded in the report


def on_ring(options: MatchOptions) -> bool:
    """Whether the templates are matched on the client's matching ring (refresh protocol, ``ring="match"``)."""
    if options.ring not in RINGS:
        raise DataError(f"ring must be one of {RINGS}, got {options.ring!r}")
    return options.protocol == "refresh" and options.ring == "match"


def match_parameters(options: MatchOptions, network: bool = False) -> Any:
    """The parameters templates are matched under: the matching ring's (:func:`on_ring`) or Net4's of the options'
    protocol (``network``: always Net4's); (simulator only) the same levels on a smaller ring."""
    from cryptoface.backends.protocol import CkksParameters
    from cryptoface.params import default_parameters
    from cryptoface.params import match_parameters as ring_parameters

    ring = on_ring(options) and not network
    params = ring_parameters() if ring else default_parameters(64, protocol=options.protocol)
    if options.log_ring is None:
        return params
    if options.backend != "simulator":
        raise ParameterError("--log-ring is for the simulator only; real backends use the 128-bit parameters")
    return CkksParameters(log_ring=options.log_ring, levels=params.levels, scale_bits=params.scale_bits,
                          first_mod_bits=params.first_mod_bits, special_mod_bits=params.special_mod_bits,
                          key_switch_digits=params.key_switch_digits)


def _template_contract(options: MatchOptions, params: Any) -> tuple[Any, int]:
    """(layout, level) of the templates the server matches: the engine's raw ones (one-round), or the client's
    fresh normalised ones (refresh)."""
    from cryptoface.match.layout import normalised_layout
    from cryptoface.params import LEVELS

    if options.protocol == "refresh":
        return normalised_layout(params.slots), LEVELS.fresh_template("score")
    return _engine_template(options, params)


def _engine_template(options: MatchOptions, params: Any) -> tuple[Any, int]:
    """(layout, level) of the raw templates the engine delivers on these parameters."""
    from cryptoface.engine import TemplateLayout, plan_for
    from cryptoface.params import LEVELS

    if options.log_ring is None:
        plan = plan_for(64, params.slots, params.levels)
        if plan.template is not None:
            return plan.template, plan.end_level
    # the network does not fit a small ring, or stops before its head: the engine's template contract on it
    return TemplateLayout(1, params.slots // EMBEDDING_DIM), max(0, params.levels - LEVELS.network_levels(64))


def _inv_sqrt_report(templates: PairTemplates, clear: np.ndarray, clear_poly: np.ndarray) -> InvSqrtReport:
    from cryptoface.match.poly import inverse_sqrt_error, inverse_sqrt_series

    series = inverse_sqrt_series()
    emb = templates.embeddings
    n2 = np.einsum("ij,ij->i", emb, emb)
    rel = np.abs(series(n2) * np.sqrt(n2) - 1.0)
    return InvSqrtReport(
        degree=series.degree, fit_range=[series.low, series.high], max_rel_error_on_range=inverse_sqrt_error(series),
        templates=len(templates.names), norm_sq_min=float(n2.min()), norm_sq_max=float(n2.max()),
        outside_range=int(np.sum((n2 < series.low) | (n2 > series.high))),
        max_rel_error_clear=float(rel.max()), median_rel_error_clear=float(np.median(rel)),
        max_cosine_error_clear=float(np.max(np.abs(clear_poly - clear))),
    )


def run_match_bench(options: MatchOptions, on_update: Callable[[MatchReport], None] | None = None) -> MatchReport:
    """Run the matching benchmark; ``on_update`` gets the report whenever a stage adds to it."""
    from cryptoface.assets import default_model_path
    from cryptoface.backends import create_backend
    from cryptoface.match import homomorphic as hm
    from cryptoface.match.clear import cosine_clear
    from cryptoface.match.layout import gallery_layout, pack_gallery_slots, place
    from cryptoface.match.refresh import normalised
    from cryptoface.match.threshold import threshold_from_model_file

    if options.pairs < 1:
        raise DataError("--pairs must be at least 1")
    if options.protocol not in PROTOCOLS:
        raise DataError(f"protocol must be one of {PROTOCOLS}, got {options.protocol!r}")
    sizes = list(options.gallery_sizes)
    if any(s < 1 for s in sizes):
        raise DataError("gallery sizes must be positive")
    params = match_parameters(options)
    layout, level = _template_contract(options, params)
    model_path = Path(options.model) if options.model else default_model_path()
    explicit = options.threshold is not None
    tau = float(options.threshold) if explicit else threshold_from_model_file(model_path)
    report = MatchReport(
        command=options.command, backend=options.backend, protocol=options.protocol,
        ring=options.ring if options.protocol == "refresh" else "network", device=options.device,
        threads=options.threads, params=params_summary(params),
        model=str(model_path), threshold=tau,
        threshold_source="--threshold" if explicit else f"model file {model_path.name} (or default)",
        template_layout={"stride": layout.stride, "replicas": layout.replicas, "scale": layout.scale},
        template_level=level,
    )
    update = on_update or (lambda r: None)

    # templates (clear network output) and clear references
    t0 = time.perf_counter()
    if options.lfw_dir is not None:
        tpl = lfw_templates(options.lfw_dir, model_path, options.pairs, options.cache_dir, options.progress)
    else:
        tpl = synthetic_templates(options.pairs, options.seed)
    report.embedding_s = time.perf_counter() - t0
    report.pairs_source = tpl.source
    emb, pairs = tpl.embeddings, tpl.pairs
    clear = np.array([cosine_clear(emb[a], emb[b]) for a, b in pairs])
    reference = _clear_normaliser(options.protocol)  # what the encrypted templates hold, in the clear
    clear_poly = np.array([float(reference(emb[a]) @ reference(emb[b])) for a, b in pairs])
    if options.protocol == "one-round":  # the server's 1/sqrt polynomial; the refresh protocol has none
        report.inv_sqrt = _inv_sqrt_report(tpl, clear, clear_poly)

    # the probe for 1:N: the right image of the first genuine pair; the gallery: every other template, then noise
    probe_img = pairs[int(np.nonzero(tpl.same)[0][0]) if tpl.same.any() else 0][1]
    gl = gallery_layout(params.slots)
    gallery_vectors = _gallery_vectors(tpl, probe_img, max(sizes, default=0), options.seed, reference)

    # client, on the backend protocol: the key set measured is exactly matching's steps for the engine's
    # replicated layout (ClientKeys.generate adds a single-copy layout's fill steps)
    backend = create_backend(options.backend, params, threads=options.threads, device=options.device)
    steps = hm.rotation_steps(layout, params.slots)
    t0 = time.perf_counter()
    backend.generate_keys(steps)
    report.keygen_s = time.perf_counter() - t0
    report.rotation_keys = sorted(int(k) for k in steps)
    own_dir = options.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench-match-")) if own_dir else Path(options.workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        key_sizes = write_keys(backend.export_evaluation_keys(), work / "keys")
        report.client_rss_after_keygen_bytes = peak_rss_bytes()
        drop_client_rotation_keys(backend)
        report.evaluation_key_bytes = bytes_by_kind(key_sizes)
        used = sorted({i for p in pairs for i in p} | {probe_img})
        n_gallery_cts = -(-len(gallery_vectors) // gl.capacity)
        enc_times = []
        bar = _progress(len(used) + n_gallery_cts, "encrypting (client)", options.progress)
        fresh = options.protocol == "refresh"
        if fresh:
            report.client_refresh = _refresh_cost(backend, emb[used[0]], options)
        for k in used:
            t = time.perf_counter()
            values = normalised(emb[k]) if fresh else emb[k]
            data = backend.serialize(backend.encrypt(place(values, layout, params.slots), level))
            enc_times.append(time.perf_counter() - t)
            (work / f"img-{k:05d}.ct").write_bytes(data)
            bar.update()
        (work / "probe.ct").write_bytes((work / f"img-{probe_img:05d}.ct").read_bytes())
        report.upload_template_bytes = len(data)
        report.encrypt_template_s_median = median(enc_times)
        gallery_level = level if fresh else level - hm.normalise_levels(layout)
        for k in range(n_gallery_cts):
            vec = pack_gallery_slots(gallery_vectors[k * gl.capacity: (k + 1) * gl.capacity], gl)
            (work / f"gallery-{k:05d}.ct").write_bytes(backend.serialize(backend.encrypt(vec, gallery_level)))
            bar.update()
        bar.close()
        report.client_rss_after_encrypt_bytes = peak_rss_bytes()
        job = ServerJob(workdir=work, backend=options.backend, threads=options.threads, device=options.device,
                        params=params, fresh=fresh,
                        layout=layout, gallery_sizes=sizes, runs=max(1, options.runs), pairs=list(pairs),
                        model_id=model_path.name)
        _client_loop(options, backend, job, report, tpl, clear, clear_poly, probe_img, gallery_vectors, gl, update)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _clear_normaliser(protocol: str) -> Callable[[np.ndarray], np.ndarray]:
    """What the encrypted templates hold, in the clear: the exact unit template (refresh, the client's) or the
    server's polynomial normalisation (one-round)."""
    from cryptoface.match.clear import normalise_clear
    from cryptoface.match.refresh import normalised

    return normalised if protocol == "refresh" else normalise_clear


def _refresh_cost(backend: Any, embedding: np.ndarray, options: MatchOptions) -> dict[str, float]:
    """Client seconds of one refresh (median of ``options.runs``): decrypt the engine's output (at level 0, as the
    network leaves it: the raw template, or with a clear tail the last block's output, then finished with the
    model's tail), normalise in the clear, encrypt afresh at the fresh template's level."""
    from cryptoface.assets import default_model_path
    from cryptoface.backends import create_backend
    from cryptoface.engine import output_embedding, plan_for
    from cryptoface.match.layout import place
    from cryptoface.match.refresh import fresh_slots, normalised, raw_embedding
    from cryptoface.model.file import load_model
    from cryptoface.model.tail import ModelTail
    from cryptoface.params import LEVELS

    network = backend
    if on_ring(options):  # the raw template comes in the network's ring: its key set decrypts it
        network = create_backend(options.backend, match_parameters(options, network=True), threads=options.threads,
                                 device=options.device)
        network.generate_keys([])  # a secret and a public key: the client's network key set, without rotations
    params = network.params
    plan = plan_for(64, params.slots, params.levels) if options.log_ring is None else None
    tail = None
    if plan is not None and plan.clear_tail:
        tail = ModelTail.of(load_model(Path(options.model) if options.model else default_model_path()))
    if tail is not None and tail.resolution == plan.resolution:  # timing only: activations of the right shape
        acts = np.random.default_rng(options.seed).uniform(-1.0, 1.0, plan.output_layout.shape)
        (vector,) = plan.output_layout.pack(acts)

        def finish(values: np.ndarray) -> np.ndarray:
            return output_embedding(plan, values, tail)
    else:
        layout, _ = _engine_template(options, params)
        vector = place(embedding, layout, params.slots)

        def finish(values: np.ndarray) -> np.ndarray:
            return raw_embedding(values, layout)
    raw = network.serialize(network.encrypt(vector, 0))
    decrypt, fresh = [], []
    for _ in range(max(1, options.runs)):
        t = time.perf_counter()
        unit = normalised(finish(network.decrypt(network.deserialize(raw))))
        t1 = time.perf_counter()
        backend.serialize(backend.encrypt(fresh_slots(unit, backend.slots), LEVELS.fresh_template("score")))
        decrypt.append(t1 - t)
        fresh.append(time.perf_counter() - t1)
    return {"raw_template_bytes": float(len(raw)), "decrypt_normalise_s": median(decrypt) or 0.0,
            "encrypt_s": median(fresh) or 0.0}


def _gallery_vectors(tpl: PairTemplates, probe_img: int, size: int, seed: int,
                     normalise: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The largest gallery's normalised templates: every image but the probe, then random unit vectors."""
    rng = np.random.default_rng(seed + 1)
    source = [k for k in range(len(tpl.names)) if k != probe_img]

    def vector(n: int) -> np.ndarray:
        if n < len(source):
            return normalise(tpl.embeddings[source[n]])
        v = rng.standard_normal(EMBEDDING_DIM)
        return v / np.linalg.norm(v)

    return np.stack([vector(n) for n in range(size)]) if size else np.zeros((0, EMBEDDING_DIM))


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="it", disable=not enabled, file=sys.stderr)


def _client_loop(options: MatchOptions, backend: Any, job: ServerJob, report: MatchReport, tpl: PairTemplates,
                 clear: np.ndarray, clear_poly: np.ndarray, probe_img: int, gallery_vectors: np.ndarray,
                 gl: GalleryLayout, update: Callable[[MatchReport], None]) -> None:
    """Start the server child, decrypt what it returns as it comes, keep ``report`` up to date."""

    work = Path(job.workdir)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=server_main, args=(job, out), name="bench-match-server")
    child.start()
    report.server = server = ServerReport()
    report.per_pair = per_pair = []
    report.identify = identify = {}
    probe_n = _clear_normaliser(options.protocol)(tpl.embeddings[probe_img])
    what = "server normalise + cosine" if options.protocol == "one-round" else "server cosine of fresh templates"
    bar = _progress(len(tpl.pairs), f"1:1 pairs ({what})", options.progress)

    def publish() -> None:
        report.refresh()
        update(report)

    try:
        while True:
            try:
                kind, msg = out.get(timeout=5.0)
            except queue.Empty:
                if not child.is_alive():
                    raise RuntimeError(
                        f"the server process ended (exit code {child.exitcode}) without reporting") from None
                continue
            if kind == "error":
                raise RuntimeError(f"server process failed: {msg}")
            if kind == "keys":
                for k, v in msg.items():
                    setattr(server, k, v)
            elif kind == "gallery":
                identify[str(msg["size"])] = _check_gallery(backend, msg, gallery_vectors, probe_n, gl, work)
                publish()
            elif kind == "pair":
                i = msg["i"]
                t = time.perf_counter()
                score = float(backend.decrypt(backend.deserialize((work / f"score-{i:05d}.ct").read_bytes()))[0])
                per_pair.append(PairResult(**msg, genuine=bool(tpl.same[i]), clear=float(clear[i]),
                                           clear_poly=float(clear_poly[i]), encrypted=score,
                                           decrypt_s=time.perf_counter() - t))
                server.peak_rss_bytes_so_far = msg["rss_bytes"]
                bar.update()
                if len(per_pair) % 5 == 0 or len(per_pair) == len(tpl.pairs):
                    publish()
                else:
                    report.refresh()
            elif kind == "store":
                report.storage = _check_store(backend, msg, tpl, probe_n, gl, work,
                                              _clear_normaliser(options.protocol))
                report.refresh()
            elif kind == "done":
                server.peak_rss_bytes = msg["peak_rss_bytes"]
                break
    finally:
        bar.close()
        if child.is_alive() and server.peak_rss_bytes is None:
            child.terminate()
        child.join()
    report.client_peak_rss_bytes = peak_rss_bytes()
    publish()


def _check_gallery(backend: Any, msg: dict[str, Any], gallery_vectors: np.ndarray, probe_n: np.ndarray,
                   gl: GalleryLayout, work: Path) -> IdentifyReport:
    """Client: decrypt every score ciphertext, argmax, compare with the clear scores of the same vectors."""
    size = msg["size"]
    t = time.perf_counter()
    parts = []
    for k, slots in enumerate(msg["answer_slots"]):
        v = backend.decrypt(backend.deserialize((work / f"scores-{size}-{k:05d}.ct").read_bytes()))
        parts.append(v[np.asarray(slots, dtype=np.int64)])
    scores = np.concatenate(parts)
    answers = [work / f"scores-{size}-{k:05d}.ct" for k in range(len(msg["answer_slots"]))]
    best = int(np.argmax(scores))
    client_s = time.perf_counter() - t
    clear = gallery_vectors[:size] @ probe_n
    score_median = median(msg["score_s_runs"]) or 0.0
    return IdentifyReport(
        gallery=size, ciphertexts=msg["ciphertexts"], templates_per_ciphertext=gl.capacity,
        gallery_ciphertext_bytes=(work / "gallery-00000.ct").stat().st_size,
        result_ciphertexts=len(answers), result_ciphertext_bytes=answers[0].stat().st_size,
        download_bytes=sum(p.stat().st_size for p in answers),
        server_probe_normalise_s=msg["probe_normalise_s"], server_replicate_s=msg["replicate_s"],
        server_score_s_median=score_median, server_score_s_runs=msg["score_s_runs"], server_workers=msg["workers"],
        server_total_s=msg["probe_normalise_s"] + msg["replicate_s"] + score_median,
        server_group_build_s=msg["group_s"],
        client_decrypt_argmax_s=client_s, argmax=best, argmax_clear=int(np.argmax(clear)),
        best_score=float(scores[best]), best_score_clear=float(clear.max()),
        max_abs_error=float(np.max(np.abs(scores - clear))), server_rss_bytes=msg["rss_bytes"],
    )


def _check_store(backend: Any, msg: dict[str, Any], tpl: PairTemplates, probe_n: np.ndarray, gl: GalleryLayout,
                 work: Path, normalise: Callable[[np.ndarray], np.ndarray]) -> StorageReport:
    """Client: bytes per subject from the server's store, and the server-packed gallery scores vs clear."""
    tb, gb = msg["template_bytes"], msg["gallery_bytes"]
    from cryptoface.match.homomorphic import GROUP_CHUNKS

    rows = GROUP_CHUNKS if msg["grouped"] else 1  # store rows per gallery
    ids_of = msg["gallery_ids"]
    per_gallery = [sum(gb[k * rows:(k + 1) * rows]) / len(ids) for k, ids in enumerate(ids_of)]
    full = sum(gb[:rows]) / (rows * gl.capacity) if gb else None  # a full gallery's share per template
    order = {tid: n for n, tid in enumerate(msg["template_ids"])}
    scores, clear = [], []
    for k, (ids, slots) in enumerate(zip(ids_of, msg["answer_slots"], strict=True)):
        v = backend.decrypt(backend.deserialize((work / f"enrolled-scores-{k:05d}.ct").read_bytes()))
        scores.extend(v[np.asarray(slots, dtype=np.int64)])
        clear.extend(float(normalise(tpl.embeddings[tpl.pairs[order[t]][0]]) @ probe_n) for t in ids)
    scores_a, clear_a = np.array(scores), np.array(clear)
    template_bytes = int(statistics.median(tb))
    return StorageReport(
        subjects=msg["subjects"], template_level=msg["template_level"], template_bytes=template_bytes,
        gallery_ciphertexts=msg["gallery_ciphertexts"], gallery_bytes=gb, gallery_share_bytes_full=full,
        bytes_per_subject_full_gallery=(template_bytes + full) if full else None,
        bytes_per_subject_this_store=(sum(tb) + sum(gb)) / max(1, msg["subjects"]),
        gallery_share_bytes_this_store=[round(x) for x in per_gallery], db_bytes=msg["db_bytes"],
        server_pack_s=msg["pack_s"], server_score_s=msg["score_s"],
        enrolled_gallery_max_abs_error=float(np.max(np.abs(scores_a - clear_a))) if scores else None,
        enrolled_gallery_argmax_agrees=bool(np.argmax(scores_a) == np.argmax(clear_a)) if scores else None,
    )

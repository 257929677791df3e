"""The server side of ``bench-match``: a spawned process holding only public and evaluation keys.

It reads keys and ciphertexts as bytes from the exchange folder, writes result ciphertexts back, and reports
timings and its own peak RSS through a queue: ``("keys" | "gallery" | "pair" | "store" | "done", dict)``, or
``("error", text)`` before it fails.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptoface.backends.protocol import CkksParameters
from cryptoface.bench.exchange import FileKeys
from cryptoface.bench.memory import peak_rss_bytes
from cryptoface.engine.layout import TemplateLayout


@dataclass(frozen=True)
class ServerJob:
    """Everything the server process is told (pickled to the spawned child); ciphertexts are in ``workdir``."""

    workdir: Path
    backend: str
    threads: int
    device: str
    params: CkksParameters
    layout: TemplateLayout  # the templates' layout: the engine's raw one, or the normalised one when ``fresh``
    gallery_sizes: list[int]
    runs: int
    pairs: list[tuple[int, int]]
    model_id: str
    fresh: bool = False  # refresh protocol: every template is the client's fresh normalised one


def _normalised(job: ServerJob, be: Any, ct: Any) -> Any:
    """The server's normalisation (one-round), or nothing to do on a client-normalised template (refresh)."""
    from cryptoface.match import homomorphic as hm

    return ct if job.fresh else hm.normalise(be, ct, job.layout)


def server_main(job: ServerJob, out: Any) -> None:
    """The server: public + evaluation keys only, ciphertexts in and out as bytes; reports through ``out``."""
    try:
        _serve(job, out)
    except BaseException as exc:  # report, then let the parent fail cleanly
        import traceback

        out.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise


def _serve(job: ServerJob, out: Any) -> None:
    from cryptoface.backends import backend_class
    from cryptoface.match.layout import gallery_layout
    from cryptoface.match.poly import inverse_sqrt_series

    work = Path(job.workdir)
    rss0 = peak_rss_bytes()
    t0 = time.perf_counter()
    keys = FileKeys(work / "keys")
    be = backend_class(job.backend).from_public_keys(job.params, keys, threads=job.threads, device=job.device)
    if be.has_secret_key:
        raise RuntimeError("the server backend holds a secret key")
    gallery = gallery_layout(be.slots)
    load_s = time.perf_counter() - t0
    rss_keys = peak_rss_bytes()
    t0 = time.perf_counter()
    inverse_sqrt_series()  # fitted once per process (lru_cache): paid at start-up, not inside the first match
    out.put(("keys", {"load_s": load_s, "rss_before_keys_bytes": rss0, "rss_after_keys_bytes": rss_keys,
                      "series_fit_s": time.perf_counter() - t0, "has_secret_key": bool(be.has_secret_key)}))
    io = _Exchange(be, work)
    if job.gallery_sizes:
        _identify(job, be, io, gallery, out)
    store, key_id = _verify_pairs(job, be, io, keys, out)
    stored = _enrolled_gallery(job, be, io, store, key_id, gallery) if job.pairs else None
    store.close()  # checkpoints SQLite's write-ahead log: the file sizes below are the store's own
    if stored is not None:
        stored["db_bytes"] = sum(p.stat().st_size for p in work.glob("store.db*"))
        out.put(("store", stored))
    out.put(("done", {"peak_rss_bytes": peak_rss_bytes()}))


class _Exchange:
    """Ciphertexts as files in the exchange folder."""

    def __init__(self, backend: Any, folder: Path) -> None:
        self.backend, self.folder = backend, folder

    def read(self, name: str) -> Any:
        return self.backend.deserialize(self.data(name))

    def data(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()

    def write(self, name: str, ct: Any) -> int:
        data = self.backend.serialize(ct)
        (self.folder / name).write_bytes(data)
        return len(data)


def _identify(job: ServerJob, be: Any, io: _Exchange, gallery: Any, out: Any) -> None:
    """1:N on client-packed galleries: normalise the probe once, replicate it, score every gallery ciphertext."""
    from cryptoface.engine.evaluator import default_workers
    from cryptoface.match import homomorphic as hm

    t = time.perf_counter()
    probe = _normalised(job, be, io.read("probe.ct"))
    normalise_s = time.perf_counter() - t
    t = time.perf_counter()
    rep = hm.replicate_probe(be, probe, gallery)
    replicate_s = time.perf_counter() - t
    r_ = hm.GROUP_CHUNKS
    for size in job.gallery_sizes:
        n_ct = -(-size // gallery.capacity)
        counts = [min(gallery.capacity, size - k * gallery.capacity) for k in range(n_ct)]
        group_s, groups = None, []
        if job.fresh:  # the service's stored form: gallery groups, built once per change of the enrolled set

            def group(first: int, part: list[int]) -> tuple[list[bytes], list[int]]:
                cts = [io.data(f"gallery-{k:05d}.ct") for k in range(first, first + len(part))]
                return [be.serialize(c) for c in hm.grouped_gallery(be, cts, gallery)], part

            t = time.perf_counter()
            groups = list(hm.map_in_order(be, group, ((a, counts[a:a + r_]) for a in range(0, n_ct, r_)),
                                          default_workers()))
            group_s = time.perf_counter() - t
        runs = []
        for r in range(job.runs):
            t = time.perf_counter()
            # the service's scoring and answers, on the engine's default threads: stored groups (deserialised by the
            # workers) when the fresh templates carry the mask's level, else one answer per chunk
            if job.fresh:
                answers = list(hm.grouped_answers(be, rep, groups, gallery, default_workers()))
            else:
                chunks = ((io.data(f"gallery-{k:05d}.ct"), count) for k, count in enumerate(counts))
                scores = zip(hm.scored_chunks(be, rep, chunks, gallery, default_workers()), counts, strict=True)
                answers = list(hm.gallery_answers(be, scores, gallery, dense=False))
            for k, (s, _) in enumerate(answers):
                if r == 0:
                    io.write(f"scores-{size}-{k:05d}.ct", s)
                else:
                    be.serialize(s)  # every run pays the serialisation the first one wrote
            runs.append(time.perf_counter() - t)
        out.put(("gallery", {"size": size, "ciphertexts": n_ct, "score_s_runs": runs, "workers": default_workers(),
                             "answer_slots": [[int(x) for x in slots] for _, slots in answers],
                             "probe_normalise_s": normalise_s, "replicate_s": replicate_s, "group_s": group_s,
                             "rss_bytes": peak_rss_bytes()}))


def _verify_pairs(job: ServerJob, be: Any, io: _Exchange, keys: FileKeys, out: Any) -> tuple[Any, str]:
    """1:1: enrol the left template into a SQLite store, verify the right one against it; (store, key id)."""
    from cryptoface.match import homomorphic as hm
    from cryptoface.params import params_to_json
    from cryptoface.store.base import NewTemplate
    from cryptoface.store.sqlite import SQLiteStore

    store = SQLiteStore(Path(job.workdir) / "store.db")
    tenant = store.create_tenant("bench").tenant_id
    # the bench plays both roles, so there is no challenge to answer: the key set is activated directly
    record = store.create_key_set(tenant, job.backend, params_to_json(job.params), keys["public"],
                                  hashlib.sha256(b"bench").hexdigest(), actor="bench")
    key_id = store.activate_key_set(tenant, record.key_id, actor="bench").key_id
    params_id = store.get_key_set(key_id).params_id
    for i, (left, right) in enumerate(job.pairs):
        subject = f"pair-{i:04d}"
        t = time.perf_counter()
        tl = _normalised(job, be, io.read(f"img-{left:05d}.ct"))
        data = be.serialize(tl)
        new = NewTemplate(data, be.level(tl), job.layout.stride, job.model_id, params_id)
        store.create_subject(tenant, key_id, subject, [new], actor="bench")
        enroll_s = time.perf_counter() - t
        t = time.perf_counter()
        probe_ct = io.read(f"img-{right:05d}.ct")
        t1 = time.perf_counter()
        pn = _normalised(job, be, probe_ct)
        t2 = time.perf_counter()
        (record,) = store.templates(key_id, subject)
        s = hm.cosine(be, pn, be.deserialize(record.ciphertext))
        t3 = time.perf_counter()
        size = io.write(f"score-{i:05d}.ct", hm.lowest_level(be, s))  # as the service sends it
        verify_s = time.perf_counter() - t
        out.put(("pair", {"i": i, "enroll_s": enroll_s, "verify_s": verify_s, "normalise_s": t2 - t1,
                          "cosine_s": t3 - t2, "template_bytes": len(data), "template_level": be.level(tl),
                          "result_bytes": size, "rss_bytes": peak_rss_bytes()}))
    return store, key_id


def _enrolled_gallery(job: ServerJob, be: Any, io: _Exchange, store: Any, key_id: str, gallery: Any
                      ) -> dict[str, Any]:
    """The enrolled subjects packed into galleries by the server (the service's identify path) and scored;
    the ``store`` message."""
    from cryptoface.engine.evaluator import default_workers
    from cryptoface.match import homomorphic as hm

    records = store.templates(key_id)
    t = time.perf_counter()
    grouped = job.fresh  # the service's form: groups when the fresh templates carry the mask's level
    built = list(hm.build_galleries(be, [r.ciphertext for r in records], gallery, grouped, default_workers()))
    rows = hm.gallery_rows(be, built, [r.id for r in records], gallery, grouped)
    ids = [part for _, part in hm.stored_galleries([(c, part) for c, part, _ in rows])[1]]
    # keyed by the enrolled templates' stride (the store checks the packed ids against templates of that stride)
    store.replace_galleries(key_id, job.layout.stride, job.model_id, rows)
    pack_s = time.perf_counter() - t
    probe = _normalised(job, be, io.read("probe.ct"))
    rep = hm.replicate_probe(be, probe, gallery)
    t = time.perf_counter()
    if grouped:
        groups = [(cts, hm.gallery_counts(len(part), gallery, True)[0]) for cts, part in zip(built, ids, strict=True)]
        answers = list(hm.grouped_answers(be, rep, groups, gallery, default_workers()))
    else:
        answers = [(hm.gallery_scores(be, rep, cts[0], gallery, len(part)), gallery.score_slots(len(part)).tolist())
                   for cts, part in zip(built, ids, strict=True)]
    for k, (s, _) in enumerate(answers):
        io.write(f"enrolled-scores-{k:05d}.ct", s)
    score_s = time.perf_counter() - t
    gallery_rows = store.galleries(key_id, job.layout.stride, job.model_id)
    return {
        "subjects": len(records), "template_bytes": [len(r.ciphertext) for r in records],
        "gallery_ciphertexts": len(gallery_rows), "gallery_bytes": [len(g.ciphertext) for g in gallery_rows],
        "gallery_ids": ids, "grouped": grouped,
        "answer_slots": [[int(x) for x in slots] for _, slots in answers],
        "template_ids": [r.id for r in records], "pack_s": pack_s, "score_s": score_s,
        "template_level": records[0].level,
    }

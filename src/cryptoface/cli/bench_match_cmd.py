"""``cryptoface bench-match``: encrypted matching (normalise, 1:1, packed 1:N, store) on a real CKKS backend.

What it measures, and how:

* **Templates.** The clear network's output (the model's numpy forward on aligned LFW crops, or synthetic
  embeddings without ``--lfw-dir``), encrypted by the client exactly as the engine delivers a template: the
  engine's :class:`~cryptoface.engine.layout.TemplateLayout` (replicated over the ring, ``TEMPLATE_SCALE``) at the
  engine's output level (``plan.end_level`` = ``MATCHING_RESERVE_LEVELS`` = 7). Running the encrypted network
  for every photo would take ~9 min per face here; its own error is what ``cryptoface bench`` measures.
* **Client / server split.** This process is the client (key generation with *only* the rotation keys matching
  needs, :func:`cryptoface.match.rotation_steps`; encryption; decryption). The server side runs in a child
  process (``spawn``) that receives the public and evaluation keys and ciphertexts as bytes through files and
  never holds a secret key; its peak RSS (``VmHWM`` of the child) is the server's memory.
* **1:1.** Per pair: enrol the left template (server: normalise, store it in a SQLite store), verify the right
  one (server: normalise, cosine against the stored template); the client decrypts the score and compares it
  with the clear cosine of the same templates (:func:`cryptoface.match.clear.cosine_clear`).
* **1:N.** Packed galleries (128 templates per ciphertext at N = 2^16) encrypted by the client at the level the
  store keeps them (the normalised templates' level) in :func:`cryptoface.match.gallery_layout`: the LFW pair
  templates normalised in the clear first, then random unit vectors up to the gallery size. One probe (a raw
  template at the engine's level) is normalised, replicated and scored by the server; the client decrypts and
  takes the argmax. The gallery of the enrolled LFW subjects is also packed by the server from the stored
  encrypted templates (:func:`cryptoface.match.pack_gallery`, the service's path) and scored.
* **Storage.** Bytes per subject = its template ciphertext as stored + its share of the packed gallery bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import queue
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cryptoface.cli.memory import drop_client_rotation_keys

TEMPLATES_NOTE = "clear network output, encrypted at the template level in the engine's template layout"
EMBEDDING_DIM = 256


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench-match",
        help="benchmark encrypted matching: encrypted vs clear scores on LFW pairs, 1:1 and 1:N times, store bytes, "
             "server RSS",
    )
    p.add_argument("--backend", choices=("openfhe", "desilofhe", "simulator"), default="openfhe")
    p.add_argument("--lfw-dir", type=Path, default=None,
                   help="LFW folder with pairs.txt (default: synthetic embeddings, for smoke tests)")
    p.add_argument("--pairs", type=int, default=200,
                   help="pairs for encrypted vs clear scores, half genuine, half impostor, spread over the folds")
    p.add_argument("--gallery", default="1000,10000", help="comma-separated 1:N gallery sizes ('' for none)")
    p.add_argument("--runs", type=int, default=3, help="repetitions of each 1:N scoring (median reported)")
    p.add_argument("--model", type=Path, default=None, help="fused model file (default: the bundled model)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    p.add_argument("--threads", type=int, default=1, help="the backend's own threads")
    p.add_argument("--cache-dir", type=Path, default=None, help="LFW crop/embedding cache (as in `eval lfw`)")
    p.add_argument("--log-ring", type=int, default=None,
                   help="simulator only: smaller ring for quick tests (default: the real N = 2^16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where keys and ciphertexts are exchanged (default: a temporary folder, removed)")
    p.add_argument("--json", type=Path, default=None, help="write the results here (rewritten as pairs finish)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


# -- templates ----------------------------------------------------------------------------------------
def select_pairs(same: np.ndarray, fold: np.ndarray, n: int) -> list[int]:
    """Indices of ``n`` pairs, half genuine and half impostor, taken round-robin over the folds (in file order)."""
    groups = {}
    for genuine in (True, False):
        for k in np.unique(fold):
            groups[(genuine, int(k))] = list(np.nonzero((same == genuine) & (fold == k))[0])
    want = {True: n - n // 2, False: n // 2}
    out: list[int] = []
    for genuine in (True, False):
        taken = 0
        keys = [g for g in groups if g[0] == genuine]
        depth = 0
        while taken < want[genuine] and any(len(groups[g]) > depth for g in keys):
            for g in keys:
                if taken < want[genuine] and len(groups[g]) > depth:
                    out.append(int(groups[g][depth]))
                    taken += 1
            depth += 1
    return sorted(out)


def lfw_templates(lfw_dir: Path, model_path: Path, n_pairs: int, cache_dir: Path | None, progress: bool
                  ) -> tuple[list[str], np.ndarray, list[tuple[int, int]], np.ndarray, str]:
    """(image names, their embeddings, pairs as image indices, genuine flags, description) for ``n_pairs`` pairs.

    Embeddings come from the ``eval lfw`` cache when it holds them (same model file hash), else they are computed
    from the cached aligned crops with the model's numpy forward and added to the cache.
    """
    from cryptoface.eval import lfw
    from cryptoface.eval.embedders import FusedEmbedder

    pairs = lfw.read_pairs(Path(lfw_dir) / "pairs.txt")
    idx = select_pairs(pairs.same, pairs.fold, n_pairs)
    names = sorted({pairs.left[i] for i in idx} | {pairs.right[i] for i in idx})
    embedder = FusedEmbedder(model_path)
    select = lfw.LFW_FACE_SELECT
    feats = lfw._read_embeddings(lfw_dir, embedder, cache_dir, select)
    todo = [r for r in names if r not in feats]
    if todo:
        crops, _ = lfw.aligned_crops(lfw_dir, todo, cache_dir, progress, select)
        for r, f in zip(todo, embedder.embed([crops[r] for r in todo]), strict=True):
            feats[r] = f
        lfw._write_embeddings(lfw_dir, embedder, cache_dir, select, feats)
    pos = {r: k for k, r in enumerate(names)}
    emb = np.stack([np.asarray(feats[r], dtype=np.float64) for r in names])
    pair_idx = [(pos[pairs.left[i]], pos[pairs.right[i]]) for i in idx]
    same = np.array([bool(pairs.same[i]) for i in idx])
    folds = sorted({int(pairs.fold[i]) for i in idx})
    desc = (f"LFW pairs.txt ({lfw_dir}): {int(same.sum())} genuine + {int((~same).sum())} impostor pairs taken "
            f"round-robin over folds {folds} in file order")
    return names, emb, pair_idx, same, desc


def synthetic_templates(
    n_pairs: int, seed: int
) -> tuple[list[str], np.ndarray, list[tuple[int, int]], np.ndarray, str]:
    """Random 256-d embeddings with LFW-like squared norms; genuine pairs correlated, impostors not."""
    rng = np.random.default_rng(seed)
    embs, pairs, same = [], [], []
    for i in range(n_pairs):
        genuine = i % 2 == 0
        a = rng.standard_normal(EMBEDDING_DIM)
        u = a / np.linalg.norm(a)
        v = rng.standard_normal(EMBEDDING_DIM)
        v -= (v @ u) * u
        v /= np.linalg.norm(v)
        c = rng.uniform(0.3, 0.9) if genuine else rng.uniform(-0.15, 0.25)
        b = c * u + math.sqrt(1 - c * c) * v
        for e in (u, b):
            embs.append(e * math.sqrt(rng.uniform(120.0, 560.0)))
        pairs.append((2 * i, 2 * i + 1))
        same.append(genuine)
    names = [f"synthetic-{k}" for k in range(len(embs))]
    return names, np.stack(embs), pairs, np.array(same), "synthetic random embeddings (no --lfw-dir)"


# -- key/ciphertext exchange through files ------------------------------------------------------------
class FileKeys(Mapping[str, bytes]):
    """Key blobs in a folder, read one at a time (the server never holds all key bytes at once)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._names = json.loads((self.folder / "index.json").read_text())

    def __getitem__(self, name: str) -> bytes:
        if name not in self._names:
            raise KeyError(name)
        return (self.folder / self._names[name]).read_bytes()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)


def write_keys(keys: Mapping[str, bytes], folder: Path) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    index, sizes = {}, {}
    for i, (name, blob) in enumerate(keys.items()):
        fname = f"key-{i:03d}.bin"
        (folder / fname).write_bytes(blob)
        index[name] = fname
        sizes[name] = len(blob)
    (folder / "index.json").write_text(json.dumps(index))
    return sizes


def _peak_rss_bytes() -> int:
    """This process's peak resident set size.

    On Linux the high-water mark of the process's own address space (``VmHWM``): ``getrusage``'s ``ru_maxrss``
    survives ``fork`` + ``exec``, so a spawned child would report its parent's peak (here the client's keys).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def _backend_options(name: str, threads: int) -> dict[str, Any]:
    return {"threads": threads} if name == "openfhe" else ({"thread_count": threads} if name == "desilofhe" else {})


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


# -- server (child process) ---------------------------------------------------------------------------
def server_main(job: dict[str, Any], out: Any) -> None:
    """The server: public + evaluation keys only, ciphertexts in and out as bytes; reports through ``out``."""
    try:
        _server(job, out)
    except BaseException as exc:  # report, then let the parent fail cleanly
        import traceback

        out.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise


def _server(job: dict[str, Any], out: Any) -> None:
    from cryptoface.backends import backend_class
    from cryptoface.backends.protocol import CkksParameters
    from cryptoface.match import homomorphic as hm
    from cryptoface.match.layout import TemplateLayout, gallery_layout
    from cryptoface.match.poly import inverse_sqrt_series
    from cryptoface.service.core import params_to_json
    from cryptoface.store.base import NewTemplate
    from cryptoface.store.sqlite import SQLiteStore

    work = Path(job["workdir"])
    params = CkksParameters(**job["params"])
    rss0 = _peak_rss_bytes()
    t0 = time.perf_counter()
    keys = FileKeys(work / "keys")
    be = backend_class(job["backend"]).from_public_keys(params, keys, **_backend_options(job["backend"],
                                                                                          job["threads"]))
    if be.has_secret_key:
        raise RuntimeError("the server backend holds a secret key")
    layout = TemplateLayout(**job["layout"])
    gallery = gallery_layout(be.slots)
    load_s = time.perf_counter() - t0
    rss_keys = _peak_rss_bytes()
    t0 = time.perf_counter()
    inverse_sqrt_series()  # fitted once per process (lru_cache): paid at start-up, not inside the first match
    out.put(("keys", {"load_s": load_s, "rss_before_keys_bytes": rss0, "rss_after_keys_bytes": rss_keys,
                      "series_fit_s": time.perf_counter() - t0, "has_secret_key": bool(be.has_secret_key)}))

    def read(name: str) -> Any:
        return be.deserialize((work / name).read_bytes())

    def write(name: str, ct: Any) -> int:
        data = be.serialize(ct)
        (work / name).write_bytes(data)
        return len(data)

    # 1:N on client-packed galleries: normalise the probe once, replicate it, score every gallery ciphertext
    if job["gallery_sizes"]:
        t = time.perf_counter()
        probe = hm.normalise(be, read("probe.ct"), layout)
        normalise_s = time.perf_counter() - t
        t = time.perf_counter()
        rep = hm.replicate_probe(be, probe, gallery)
        replicate_s = time.perf_counter() - t
        for size in job["gallery_sizes"]:
            n_ct = -(-size // gallery.capacity)
            runs = []
            for r in range(job["runs"]):
                t = time.perf_counter()
                for k in range(n_ct):
                    count = min(gallery.capacity, size - k * gallery.capacity)
                    s = hm.gallery_scores(be, rep, read(f"gallery-{k:05d}.ct"), gallery, count)
                    if r == 0:
                        write(f"scores-{size}-{k:05d}.ct", s)
                    else:
                        be.serialize(s)
                runs.append(time.perf_counter() - t)
            out.put(("gallery", {"size": size, "ciphertexts": n_ct, "score_s_runs": runs,
                                 "probe_normalise_s": normalise_s, "replicate_s": replicate_s,
                                 "rss_bytes": _peak_rss_bytes()}))

    # 1:1: enrol the left template into the store, verify the right one against it
    store = SQLiteStore(work / "store.db")
    key_id = store.add_key_set(job["backend"], params_to_json(params), {"public": keys["public"]}).key_id
    params_id = store.get_key_set(key_id).params_id
    for i, (left, right) in enumerate(job["pairs"]):
        subject = f"pair-{i:04d}"
        t = time.perf_counter()
        tl = hm.normalise(be, read(f"img-{left:05d}.ct"), layout)
        data = be.serialize(tl)
        store.enroll(key_id, subject, [NewTemplate(data, be.level(tl), layout.stride, job["model_id"], params_id)])
        enroll_s = time.perf_counter() - t
        t = time.perf_counter()
        probe_ct = read(f"img-{right:05d}.ct")
        t1 = time.perf_counter()
        pn = hm.normalise(be, probe_ct, layout)
        t2 = time.perf_counter()
        (record,) = store.templates(key_id, subject)
        s = hm.cosine(be, pn, be.deserialize(record.ciphertext))
        t3 = time.perf_counter()
        size = write(f"score-{i:05d}.ct", s)
        verify_s = time.perf_counter() - t
        out.put(("pair", {"i": i, "enroll_s": enroll_s, "verify_s": verify_s, "normalise_s": t2 - t1,
                          "cosine_s": t3 - t2, "template_bytes": len(data), "template_level": be.level(tl),
                          "result_bytes": size, "rss_bytes": _peak_rss_bytes()}))

    # the enrolled subjects packed into galleries by the server (the service's identify path) and scored
    if job["pairs"]:
        records = store.templates(key_id)
        t = time.perf_counter()
        chunks = []
        for start in range(0, len(records), gallery.capacity):
            part = records[start: start + gallery.capacity]
            packed = hm.pack_gallery(be, [be.deserialize(r.ciphertext) for r in part], gallery)
            chunks.append((be.serialize(packed), [r.id for r in part], be.level(packed)))
        # keyed by the enrolled templates' stride (the store checks the packed ids against templates of that stride)
        store.replace_galleries(key_id, layout.stride, job["model_id"], chunks)
        pack_s = time.perf_counter() - t
        probe = hm.normalise(be, read("probe.ct"), layout)
        rep = hm.replicate_probe(be, probe, gallery)
        t = time.perf_counter()
        for k, g in enumerate(store.galleries(key_id, layout.stride, job["model_id"])):
            s = hm.gallery_scores(be, rep, be.deserialize(g.ciphertext), gallery, len(g.template_ids))
            write(f"enrolled-scores-{k:05d}.ct", s)
        score_s = time.perf_counter() - t
        template_bytes = [len(r.ciphertext) for r in records]
        gallery_rows = store.galleries(key_id, layout.stride, job["model_id"])
        store.close()
        out.put(("store", {
            "subjects": len(records), "template_bytes": template_bytes,
            "gallery_ciphertexts": len(gallery_rows), "gallery_bytes": [len(g.ciphertext) for g in gallery_rows],
            "gallery_template_ids": [list(g.template_ids) for g in gallery_rows],
            "template_ids": [r.id for r in records], "pack_s": pack_s, "score_s": score_s,
            "db_bytes": sum(p.stat().st_size for p in work.glob("store.db*")),
            "template_level": records[0].level,
        }))
    out.put(("done", {"peak_rss_bytes": _peak_rss_bytes()}))


# -- client (this process) ----------------------------------------------------------------------------
def _progress(total: int, desc: str, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="it", disable=quiet, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from cryptoface.assets import default_model_path
    from cryptoface.backends import create_backend
    from cryptoface.backends.protocol import CkksParameters
    from cryptoface.engine import NETWORK_LEVELS, TemplateLayout, plan_for
    from cryptoface.engine.params import default_parameters
    from cryptoface.errors import DataError, ParameterError
    from cryptoface.match import homomorphic as hm
    from cryptoface.match.clear import cosine_clear, normalise_clear
    from cryptoface.match.layout import EMBEDDING_DIM, gallery_layout, place
    from cryptoface.match.poly import inverse_sqrt_error, inverse_sqrt_series
    from cryptoface.match.threshold import threshold_from_model_file

    if args.pairs < 1:
        raise DataError("--pairs must be at least 1")
    try:
        sizes = [int(s) for s in str(args.gallery).split(",") if s.strip()]
    except ValueError as exc:
        raise DataError(f"--gallery takes comma-separated sizes, got {args.gallery!r}") from exc
    if any(s < 1 for s in sizes):
        raise DataError("gallery sizes must be positive")
    params = default_parameters(64)
    if args.log_ring is not None:
        if args.backend != "simulator":
            raise ParameterError("--log-ring is for the simulator only; real backends use the 128-bit parameters")
        params = CkksParameters(log_ring=args.log_ring, levels=params.levels, scale_bits=params.scale_bits,
                                first_mod_bits=params.first_mod_bits, special_mod_bits=params.special_mod_bits,
                                key_switch_digits=params.key_switch_digits)
    if args.log_ring is None:
        plan = plan_for(64, params.slots, params.levels)
        layout, level = plan.template, plan.end_level
    else:  # the network does not fit a small ring: the engine's template contract on it
        layout, level = TemplateLayout(1, params.slots // EMBEDDING_DIM), params.levels - NETWORK_LEVELS
    model_path = Path(args.model) if args.model else default_model_path()
    tau = float(args.threshold) if args.threshold is not None else threshold_from_model_file(model_path)
    tau_source = "--threshold" if args.threshold is not None else f"model file {model_path.name} (or default)"

    result: dict[str, Any] = {
        "command": "cryptoface " + " ".join(sys.argv[1:]) if sys.argv and "cryptoface" in sys.argv[0] else None,
        "backend": args.backend, "threads": args.threads,
        "params": {"log_ring": params.log_ring, "levels": params.levels, "scale_bits": params.scale_bits,
                   "key_switch_digits": params.key_switch_digits, "log_qp": params.log_qp},
        "model": str(model_path), "threshold": tau, "threshold_source": tau_source,
        "templates": TEMPLATES_NOTE,
        "template_layout": {"stride": layout.stride, "replicas": layout.replicas, "scale": layout.scale},
        "template_level": level,
    }

    # templates (clear network output) and clear references
    t0 = time.perf_counter()
    if args.lfw_dir is not None:
        names, emb, pairs, same, desc = lfw_templates(args.lfw_dir, model_path, args.pairs, args.cache_dir,
                                                      not args.quiet)
    else:
        names, emb, pairs, same, desc = synthetic_templates(args.pairs, args.seed)
    result["embedding_s"] = time.perf_counter() - t0
    result["pairs_source"] = desc
    series = inverse_sqrt_series()
    clear = np.array([cosine_clear(emb[a], emb[b]) for a, b in pairs])
    clear_poly = np.array([float(normalise_clear(emb[a]) @ normalise_clear(emb[b])) for a, b in pairs])
    n2 = np.einsum("ij,ij->i", emb, emb)
    rel = np.abs(series(n2) * np.sqrt(n2) - 1.0)
    result["inv_sqrt"] = {
        "degree": series.degree, "fit_range": [series.low, series.high],
        "max_rel_error_on_range": inverse_sqrt_error(series),
        "templates": len(names), "norm_sq_min": float(n2.min()), "norm_sq_max": float(n2.max()),
        "outside_range": int(np.sum((n2 < series.low) | (n2 > series.high))),
        "max_rel_error_clear": float(rel.max()), "median_rel_error_clear": float(np.median(rel)),
        "max_cosine_error_clear": float(np.max(np.abs(clear_poly - clear))),
    }

    # the probe for 1:N: the right image of the first genuine pair; the gallery: every other template, then noise
    probe_pair = int(np.nonzero(same)[0][0]) if same.any() else 0
    probe_img = pairs[probe_pair][1]
    rng = np.random.default_rng(args.seed + 1)
    gl = gallery_layout(params.slots)
    gallery_src = [k for k in range(len(names)) if k != probe_img]
    max_size = max(sizes, default=0)

    def gallery_vector(n: int) -> np.ndarray:
        if n < len(gallery_src):
            return normalise_clear(emb[gallery_src[n]])
        v = rng.standard_normal(EMBEDDING_DIM)
        return v / np.linalg.norm(v)

    gallery_vectors = np.stack([gallery_vector(n) for n in range(max_size)]) if max_size else np.zeros((0, 256))

    # client: keys (matching's rotation steps only), export, encrypt
    backend = create_backend(args.backend, params, **_backend_options(args.backend, args.threads))
    steps = hm.rotation_steps(layout, params.slots)
    t0 = time.perf_counter()
    backend.generate_keys(steps)
    result["keygen_s"] = time.perf_counter() - t0
    result["rotation_keys"] = sorted(int(k) for k in steps)
    own_dir = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench-match-")) if own_dir else Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        keys = backend.export_evaluation_keys()
        key_sizes = write_keys(keys, work / "keys")
        del keys
        result["client_rss_after_keygen_bytes"] = _peak_rss_bytes()
        drop_client_rotation_keys(backend)
        by_kind: dict[str, int] = {}
        for name, n in key_sizes.items():
            kind = name.split(":", 1)[0]
            by_kind[kind] = by_kind.get(kind, 0) + n
        result["evaluation_key_bytes"] = by_kind
        used = sorted({i for p in pairs for i in p} | {probe_img})
        enc_times = []
        bar = _progress(len(used) + -(-max_size // gl.capacity), "encrypting (client)", args.quiet)
        for k in used:
            t = time.perf_counter()
            data = backend.serialize(backend.encrypt(place(emb[k], layout, params.slots), level))
            enc_times.append(time.perf_counter() - t)
            (work / f"img-{k:05d}.ct").write_bytes(data)
            bar.update()
        (work / "probe.ct").write_bytes((work / f"img-{probe_img:05d}.ct").read_bytes())
        result["upload_template_bytes"] = len(data)
        result["encrypt_template_s_median"] = _median(enc_times)
        gallery_level = level - hm.normalise_levels(layout)
        for k in range(-(-max_size // gl.capacity)):
            vec = np.zeros(params.slots)
            for j in range(k * gl.capacity, min(max_size, (k + 1) * gl.capacity)):
                vec[gl.shift(j - k * gl.capacity) + np.arange(EMBEDDING_DIM) * gl.stride] = gallery_vectors[j]
            (work / f"gallery-{k:05d}.ct").write_bytes(backend.serialize(backend.encrypt(vec, gallery_level)))
            bar.update()
        bar.close()
        result["client_rss_after_encrypt_bytes"] = _peak_rss_bytes()

        job = {"workdir": str(work), "backend": args.backend, "threads": args.threads,
               "params": {k: getattr(params, k) for k in ("log_ring", "levels", "scale_bits", "first_mod_bits",
                                                          "special_mod_bits", "key_switch_digits")},
               "layout": {"stride": layout.stride, "replicas": layout.replicas, "scale": layout.scale},
               "gallery_sizes": sizes, "runs": max(1, args.runs), "pairs": [list(p) for p in pairs],
               "model_id": model_path.name}
        _client_loop(args, backend, job, result, pairs, same, clear, clear_poly, tau, emb, probe_img,
                     gallery_vectors, gl, work)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    _summary(result)
    return 0


def _client_loop(args, backend, job, result, pairs, same, clear, clear_poly, tau, emb, probe_img, gallery_vectors,
                 gl, work) -> None:
    """Start the server child, decrypt what it returns as it comes, keep ``result`` (and the JSON) up to date."""
    from cryptoface.match.clear import normalise_clear
    from cryptoface.match.layout import normalised_layout

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=server_main, args=(job, out), name="bench-match-server")
    child.start()
    result["server"] = {"method": (
        "the server side (key loading from bytes, normalisation, scoring, store writes, gallery packing) runs in a "
        "spawned child process holding only the public and evaluation keys, read one key file at a time; its "
        "peak RSS is VmHWM of that child (/proc/self/status; getrusage's ru_maxrss would include the parent's peak, "
        "which survives fork + exec)")}
    per_pair: list[dict[str, Any]] = []
    result["per_pair"] = per_pair
    identify: dict[str, Any] = {}
    result["identify"] = identify
    probe_n = normalise_clear(emb[probe_img])
    bar = _progress(len(pairs), "1:1 pairs (server normalise + cosine)", args.quiet)
    decrypt_s: list[float] = []
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
                result["server"].update(msg)
            elif kind == "gallery":
                identify[str(msg["size"])] = _check_gallery(backend, msg, gallery_vectors, probe_n, gl, work)
                _write(args, result)
            elif kind == "pair":
                i = msg["i"]
                t = time.perf_counter()
                score = float(backend.decrypt(backend.deserialize((work / f"score-{i:05d}.ct").read_bytes()))[0])
                decrypt_s.append(time.perf_counter() - t)
                per_pair.append({**msg, "genuine": bool(same[i]), "clear": float(clear[i]),
                                 "clear_poly": float(clear_poly[i]), "encrypted": score, "decrypt_s": decrypt_s[-1]})
                _score_summary(result, per_pair, tau)
                result["server"]["peak_rss_bytes_so_far"] = msg["rss_bytes"]
                bar.update()
                if len(per_pair) % 5 == 0 or len(per_pair) == len(pairs):
                    _write(args, result)
            elif kind == "store":
                result["storage"] = _check_store(backend, msg, emb, pairs, probe_n, gl, work, normalised_layout)
            elif kind == "done":
                result["server"]["peak_rss_bytes"] = msg["peak_rss_bytes"]
                break
    finally:
        bar.close()
        if child.is_alive() and "peak_rss_bytes" not in result["server"]:
            child.terminate()
        child.join()
    result["client_peak_rss_bytes"] = _peak_rss_bytes()
    _write(args, result)


def _check_gallery(backend, msg, gallery_vectors, probe_n, gl, work) -> dict[str, Any]:
    """Client: decrypt every score ciphertext, argmax, compare with the clear scores of the same vectors."""
    size = msg["size"]
    t = time.perf_counter()
    scores = []
    for k in range(msg["ciphertexts"]):
        count = min(gl.capacity, size - k * gl.capacity)
        v = backend.decrypt(backend.deserialize((work / f"scores-{size}-{k:05d}.ct").read_bytes()))
        scores.append(v[gl.score_slots(count)])
    scores = np.concatenate(scores)
    best = int(np.argmax(scores))
    client_s = time.perf_counter() - t
    clear = gallery_vectors[:size] @ probe_n
    ct_bytes = len((work / f"scores-{size}-00000.ct").read_bytes())
    gallery_bytes = len((work / "gallery-00000.ct").read_bytes())
    return {
        "gallery": size, "ciphertexts": msg["ciphertexts"], "templates_per_ciphertext": gl.capacity,
        "content": "LFW pair templates (normalised in the clear with the same 1/sqrt polynomial), then random unit "
                   "vectors; encrypted by the client in the gallery layout at the stored template level",
        "gallery_ciphertext_bytes": gallery_bytes, "result_ciphertext_bytes": ct_bytes,
        "server_probe_normalise_s": msg["probe_normalise_s"], "server_replicate_s": msg["replicate_s"],
        "server_score_s_median": _median(msg["score_s_runs"]), "server_score_s_runs": msg["score_s_runs"],
        "server_total_s": msg["probe_normalise_s"] + msg["replicate_s"] + _median(msg["score_s_runs"]),
        "client_decrypt_argmax_s": client_s,
        "argmax": best, "argmax_clear": int(np.argmax(clear)),
        "best_score": float(scores[best]), "best_score_clear": float(clear.max()),
        "max_abs_error": float(np.max(np.abs(scores - clear))),
        "server_rss_bytes": msg["rss_bytes"],
    }


def _check_store(backend, msg, emb, pairs, probe_n, gl, work, normalised_layout) -> dict[str, Any]:
    """Client: bytes per subject from the server's store, and the server-packed gallery scores vs clear."""
    from cryptoface.match.clear import normalise_clear

    tb = msg["template_bytes"]
    gb = msg["gallery_bytes"]
    per_gallery = [b / len(ids) for b, ids in zip(gb, msg["gallery_template_ids"], strict=True)]
    full = gb[0] / gl.capacity if gb else None
    order = {tid: n for n, tid in enumerate(msg["template_ids"])}
    scores, clear = [], []
    for k, ids in enumerate(msg["gallery_template_ids"]):
        v = backend.decrypt(backend.deserialize((work / f"enrolled-scores-{k:05d}.ct").read_bytes()))
        scores.extend(v[gl.score_slots(len(ids))])
        clear.extend(float(normalise_clear(emb[pairs[order[t]][0]]) @ probe_n) for t in ids)
    scores_a, clear_a = np.array(scores), np.array(clear)
    return {
        "subjects": msg["subjects"], "template_level": msg["template_level"],
        "template_bytes": int(statistics.median(tb)),
        "gallery_ciphertexts": msg["gallery_ciphertexts"], "gallery_bytes": gb,
        "gallery_share_bytes_full": full,
        "bytes_per_subject_full_gallery": (int(statistics.median(tb)) + full) if full else None,
        "bytes_per_subject_this_store": (sum(tb) + sum(gb)) / max(1, msg["subjects"]),
        "gallery_share_bytes_this_store": [round(x) for x in per_gallery],
        "db_bytes": msg["db_bytes"],
        "note": "the store keeps each normalised template (one ciphertext at the level left after normalisation) "
                "and the packed galleries (capacity templates per ciphertext, same level); the key set row holds "
                "only the public key here (the service also stores the evaluation keys, once per client)",
        "server_pack_s": msg["pack_s"], "server_score_s": msg["score_s"],
        "enrolled_gallery_max_abs_error": float(np.max(np.abs(scores_a - clear_a))) if scores else None,
        "enrolled_gallery_argmax_agrees": bool(np.argmax(scores_a) == np.argmax(clear_a)) if scores else None,
    }


def _score_summary(result: dict[str, Any], per_pair: list[dict[str, Any]], tau: float) -> None:
    enc = np.array([p["encrypted"] for p in per_pair])
    clear = np.array([p["clear"] for p in per_pair])
    poly = np.array([p["clear_poly"] for p in per_pair])
    genuine = np.array([p["genuine"] for p in per_pair])
    flips = int(np.sum((enc >= tau) != (clear >= tau)))
    result["scores"] = {
        "pairs": len(per_pair), "genuine": int(genuine.sum()), "impostor": int((~genuine).sum()),
        "max_abs_error": float(np.max(np.abs(enc - clear))),
        "mean_abs_error": float(np.mean(np.abs(enc - clear))),
        "max_abs_error_vs_clear_polynomial": float(np.max(np.abs(enc - poly))),
        "threshold": tau, "decision_flips": flips,
        "min_clear_margin_to_threshold": float(np.min(np.abs(clear - tau))),
        "clear_accuracy_at_threshold": float(np.mean((clear >= tau) == genuine)),
        "encrypted_accuracy_at_threshold": float(np.mean((enc >= tau) == genuine)),
    }
    result["timing_1to1"] = {
        "server_verify_s_median": _median([p["verify_s"] for p in per_pair]),
        "server_normalise_s_median": _median([p["normalise_s"] for p in per_pair]),
        "server_cosine_s_median": _median([p["cosine_s"] for p in per_pair]),
        "server_enroll_s_median": _median([p["enroll_s"] for p in per_pair]),
        "client_decrypt_s_median": _median([p["decrypt_s"] for p in per_pair]),
        "result_ciphertext_bytes": per_pair[-1]["result_bytes"],
        "stored_template_bytes": per_pair[-1]["template_bytes"],
        "stored_template_level": per_pair[-1]["template_level"],
        "note": "verify = deserialize probe + normalise + cosine against the stored template + serialize the score; "
                "enrol = normalise + store write",
    }


def _storage_estimate(result: dict[str, Any]) -> None:
    """Bytes per subject from the first stored template and a gallery ciphertext (same level) seen so far."""
    t = result.get("timing_1to1", {}).get("stored_template_bytes")
    g = next(iter(result.get("identify", {}).values()), None)
    if t and g:
        share = g["gallery_ciphertext_bytes"] / g["templates_per_ciphertext"]
        result["bytes_per_subject"] = {
            "template_bytes": t, "gallery_share_bytes": share, "total": t + share,
            "method": "serialized normalised template as the store keeps it + one packed gallery ciphertext "
                      "(same level) divided by its capacity; evaluation keys (per client, not per subject) excluded",
        }


def _write(args: argparse.Namespace, result: dict[str, Any]) -> None:
    _storage_estimate(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=float))
        os.replace(tmp, args.json)


def _summary(result: dict[str, Any]) -> None:
    keep = {k: result.get(k) for k in ("backend", "keygen_s", "evaluation_key_bytes", "scores", "timing_1to1")}
    keep["inv_sqrt"] = result.get("inv_sqrt")
    keep["identify"] = {k: {f: v.get(f) for f in ("ciphertexts", "gallery_ciphertext_bytes", "server_total_s",
                                                  "server_score_s_median", "client_decrypt_argmax_s",
                                                  "max_abs_error", "argmax", "argmax_clear")}
                        for k, v in result.get("identify", {}).items()}
    st = result.get("storage") or {}
    keep["storage"] = {k: st.get(k) for k in ("template_bytes", "gallery_share_bytes_full",
                                              "bytes_per_subject_full_gallery", "enrolled_gallery_max_abs_error")}
    keep["bytes_per_subject"] = result.get("bytes_per_subject")
    keep["server_peak_rss_bytes"] = result.get("server", {}).get("peak_rss_bytes")
    print(json.dumps(keep, indent=2, default=float))

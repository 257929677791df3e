"""The ``bench-match`` report: dataclasses in the order of its JSON, and the summaries computed from pairs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryptoface.bench.report import OPTIONAL, Report, median

TEMPLATES_NOTE = ("clear network output, encrypted at the template level in the engine's template layout (one-round) "
                  "or normalised and encrypted in the normalised layout as the client refreshes it (refresh)")
SERVER_METHOD = (
    "the server side (key loading from bytes, normalisation, scoring, store writes, gallery packing) runs in a "
    "spawned child process holding only the public and evaluation keys, read one key file at a time; its "
    "peak RSS is VmHWM of that child (/proc/self/status; getrusage's ru_maxrss would include the parent's peak, "
    "which survives fork + exec)")
IDENTIFY_CONTENT = ("LFW pair templates (normalised in the clear as the protocol does: the server's 1/sqrt polynomial "
                    "for one-round, exactly for refresh), then random unit vectors; encrypted by the client in the "
                    "gallery layout at the stored template level")
STORAGE_NOTE = ("the store keeps each normalised template (one ciphertext at the level left after normalisation) "
                "and the packed galleries (capacity templates per ciphertext, same level); the key set row holds "
                "only the public key here (the service also stores the evaluation keys, once per client)")
TIMING_NOTE = ("verify = deserialize probe + normalise + cosine against the stored template + serialize the score; "
               "enrol = normalise + store write")
BYTES_METHOD = ("serialized normalised template as the store keeps it + its share of a full stored gallery (the "
                "server's store: one packed chunk per capacity templates, or a group of 16 ciphertexts per 16 "
                "chunks; before the store stage: one client-packed chunk); evaluation keys (per client, not per "
                "subject) excluded")


@dataclass(kw_only=True)
class InvSqrtReport(Report):
    """The 1/sqrt polynomial on these templates' squared norms, in the clear."""

    degree: int
    fit_range: list[float]
    max_rel_error_on_range: float
    templates: int
    norm_sq_min: float
    norm_sq_max: float
    outside_range: int
    max_rel_error_clear: float
    median_rel_error_clear: float
    max_cosine_error_clear: float


@dataclass(kw_only=True)
class ServerReport(Report):
    """The server process: key loading and its memory (``peak_rss_bytes`` once it has finished)."""

    method: str = SERVER_METHOD
    load_s: float | None = field(default=None, metadata=OPTIONAL)
    rss_before_keys_bytes: int | None = field(default=None, metadata=OPTIONAL)
    rss_after_keys_bytes: int | None = field(default=None, metadata=OPTIONAL)
    series_fit_s: float | None = field(default=None, metadata=OPTIONAL)
    has_secret_key: bool | None = field(default=None, metadata=OPTIONAL)
    peak_rss_bytes_so_far: int | None = field(default=None, metadata=OPTIONAL)
    peak_rss_bytes: int | None = field(default=None, metadata=OPTIONAL)


@dataclass(kw_only=True)
class PairResult(Report):
    """One pair: server enrol and verify times and bytes, the decrypted score against the clear ones."""

    i: int
    enroll_s: float
    verify_s: float
    normalise_s: float
    cosine_s: float
    template_bytes: int
    template_level: int
    result_bytes: int
    rss_bytes: int
    genuine: bool
    clear: float  # exact cosine
    clear_poly: float  # cosine of the polynomially normalised templates: what the encryption computes
    encrypted: float
    decrypt_s: float


@dataclass(kw_only=True)
class IdentifyReport(Report):
    """1:N on one client-packed gallery size: server seconds, the decrypted argmax against the clear one."""

    gallery: int
    ciphertexts: int
    templates_per_ciphertext: int
    content: str = IDENTIFY_CONTENT
    gallery_ciphertext_bytes: int
    result_ciphertexts: int  # answers the client downloads: one per chunk, or one per 16 chunks when grouped
    result_ciphertext_bytes: int
    download_bytes: int
    server_probe_normalise_s: float
    server_replicate_s: float
    server_score_s_median: float
    server_score_s_runs: list[float]
    server_workers: int  # threads scoring gallery chunks (the service's default)
    server_total_s: float
    server_group_build_s: float | None = field(default=None, metadata=OPTIONAL)  # once per change of the gallery
    client_decrypt_argmax_s: float
    argmax: int
    argmax_clear: int
    best_score: float
    best_score_clear: float
    max_abs_error: float
    server_rss_bytes: int


@dataclass(kw_only=True)
class ScoreSummary(Report):
    """Encrypted against clear scores over the pairs so far, and decisions at the threshold."""

    pairs: int
    genuine: int
    impostor: int
    max_abs_error: float
    mean_abs_error: float
    max_abs_error_vs_clear_polynomial: float
    threshold: float
    decision_flips: int
    min_clear_margin_to_threshold: float
    clear_accuracy_at_threshold: float
    encrypted_accuracy_at_threshold: float


@dataclass(kw_only=True)
class Timing1to1(Report):
    """Medians of the 1:1 stages over the pairs so far, and the sizes of what they store and return."""

    server_verify_s_median: float | None
    server_normalise_s_median: float | None
    server_cosine_s_median: float | None
    server_enroll_s_median: float | None
    client_decrypt_s_median: float | None
    result_ciphertext_bytes: int
    stored_template_bytes: int
    stored_template_level: int
    note: str = TIMING_NOTE


@dataclass(kw_only=True)
class BytesPerSubject(Report):
    """Storage per subject: the first stored template and its share of a stored gallery (:data:`BYTES_METHOD`)."""

    template_bytes: int
    gallery_share_bytes: float
    total: float
    method: str = BYTES_METHOD


@dataclass(kw_only=True)
class StorageReport(Report):
    """What the server's store holds per subject, and the server-packed gallery's scores against clear."""

    subjects: int
    template_level: int
    template_bytes: int
    gallery_ciphertexts: int
    gallery_bytes: list[int]
    gallery_share_bytes_full: float | None
    bytes_per_subject_full_gallery: float | None
    bytes_per_subject_this_store: float
    gallery_share_bytes_this_store: list[int]
    db_bytes: int
    note: str = STORAGE_NOTE
    server_pack_s: float
    server_score_s: float
    enrolled_gallery_max_abs_error: float | None
    enrolled_gallery_argmax_agrees: bool | None


@dataclass(kw_only=True)
class MatchReport(Report):
    """``cryptoface bench-match``: filled in as the run proceeds (the CLI rewrites its JSON on each update)."""

    command: str | None
    backend: str
    protocol: str  # refresh: the client's fresh normalised templates; one-round: the server normalises
    ring: str = "network"  # where templates are matched: the client's matching ring (match) or the network's
    device: str
    threads: int
    params: dict[str, int]
    model: str
    threshold: float
    threshold_source: str
    templates: str = TEMPLATES_NOTE
    template_layout: dict[str, Any]
    template_level: int
    embedding_s: float | None = field(default=None, metadata=OPTIONAL)
    pairs_source: str | None = field(default=None, metadata=OPTIONAL)
    inv_sqrt: InvSqrtReport | None = field(default=None, metadata=OPTIONAL)
    keygen_s: float | None = field(default=None, metadata=OPTIONAL)
    rotation_keys: list[int] | None = field(default=None, metadata=OPTIONAL)
    client_refresh: dict[str, float] | None = field(default=None, metadata=OPTIONAL)  # refresh protocol only
    client_rss_after_keygen_bytes: int | None = field(default=None, metadata=OPTIONAL)
    evaluation_key_bytes: dict[str, int] | None = field(default=None, metadata=OPTIONAL)
    upload_template_bytes: int | None = field(default=None, metadata=OPTIONAL)
    encrypt_template_s_median: float | None = field(default=None, metadata=OPTIONAL)
    client_rss_after_encrypt_bytes: int | None = field(default=None, metadata=OPTIONAL)
    server: ServerReport | None = field(default=None, metadata=OPTIONAL)
    per_pair: list[PairResult] | None = field(default=None, metadata=OPTIONAL)
    identify: dict[str, IdentifyReport] | None = field(default=None, metadata=OPTIONAL)
    scores: ScoreSummary | None = field(default=None, metadata=OPTIONAL)
    timing_1to1: Timing1to1 | None = field(default=None, metadata=OPTIONAL)
    bytes_per_subject: BytesPerSubject | None = field(default=None, metadata=OPTIONAL)
    storage: StorageReport | None = field(default=None, metadata=OPTIONAL)
    client_peak_rss_bytes: int | None = field(default=None, metadata=OPTIONAL)

    def refresh(self) -> None:
        """Recompute the summaries from the pairs and galleries so far."""
        if self.per_pair:
            self.scores = score_summary(self.per_pair, self.threshold)
            self.timing_1to1 = timing_1to1(self.per_pair)
        first = next(iter((self.identify or {}).values()), None)
        if self.timing_1to1 is not None and first is not None:
            t = self.timing_1to1.stored_template_bytes
            share = first.gallery_ciphertext_bytes / first.templates_per_ciphertext
            if self.storage is not None and self.storage.gallery_share_bytes_full is not None:
                share = self.storage.gallery_share_bytes_full  # the form the service stores
            self.bytes_per_subject = BytesPerSubject(template_bytes=t, gallery_share_bytes=share, total=t + share)

    def summary(self) -> dict[str, Any]:
        """The figures the CLI prints."""
        d = self.to_dict()
        keep = {k: d.get(k) for k in ("backend", "protocol", "ring", "params", "device", "keygen_s",
                                      "evaluation_key_bytes", "scores", "timing_1to1", "client_refresh", "inv_sqrt")}
        keep["identify"] = {k: {f: v.get(f) for f in ("ciphertexts", "gallery_ciphertext_bytes", "server_total_s",
                                                      "server_score_s_median", "server_group_build_s",
                                                      "result_ciphertexts", "download_bytes",
                                                      "client_decrypt_argmax_s", "max_abs_error", "argmax",
                                                      "argmax_clear")}
                            for k, v in d.get("identify", {}).items()}
        st = d.get("storage") or {}
        keep["storage"] = {k: st.get(k) for k in ("template_bytes", "gallery_share_bytes_full",
                                                  "bytes_per_subject_full_gallery", "enrolled_gallery_max_abs_error")}
        keep["bytes_per_subject"] = d.get("bytes_per_subject")
        keep["server_peak_rss_bytes"] = d.get("server", {}).get("peak_rss_bytes")
        return keep


def score_summary(per_pair: list[PairResult], tau: float) -> ScoreSummary:
    """Score errors and decision agreement of the encrypted against the clear cosines."""
    enc = np.array([p.encrypted for p in per_pair])
    clear = np.array([p.clear for p in per_pair])
    poly = np.array([p.clear_poly for p in per_pair])
    genuine = np.array([p.genuine for p in per_pair])
    return ScoreSummary(
        pairs=len(per_pair), genuine=int(genuine.sum()), impostor=int((~genuine).sum()),
        max_abs_error=float(np.max(np.abs(enc - clear))), mean_abs_error=float(np.mean(np.abs(enc - clear))),
        max_abs_error_vs_clear_polynomial=float(np.max(np.abs(enc - poly))), threshold=tau,
        decision_flips=int(np.sum((enc >= tau) != (clear >= tau))),
        min_clear_margin_to_threshold=float(np.min(np.abs(clear - tau))),
        clear_accuracy_at_threshold=float(np.mean((clear >= tau) == genuine)),
        encrypted_accuracy_at_threshold=float(np.mean((enc >= tau) == genuine)),
    )


def timing_1to1(per_pair: list[PairResult]) -> Timing1to1:
    """Medians of the 1:1 stages; sizes and level from the last pair."""
    last = per_pair[-1]
    return Timing1to1(
        server_verify_s_median=median(p.verify_s for p in per_pair),
        server_normalise_s_median=median(p.normalise_s for p in per_pair),
        server_cosine_s_median=median(p.cosine_s for p in per_pair),
        server_enroll_s_median=median(p.enroll_s for p in per_pair),
        client_decrypt_s_median=median(p.decrypt_s for p in per_pair),
        result_ciphertext_bytes=last.result_bytes, stored_template_bytes=last.template_bytes,
        stored_template_level=last.template_level,
    )

"""The client's stages: key generation (2), face preprocessing (5), encryption (6), decryption (8), output (9).

Only these functions open the secret key home, read clear photos or see decrypted scores. What they hand the
server is files in the public key folder and ciphertext containers (:mod:`cryptoface.container`) in the upload
folder, each container tagged with its key set and parameters so the server refuses a mismatched one.

Photos without a detectable face still get a score (the harness needs one finite score per pair): the face is
searched as ``cryptoface eval lfw`` does (the face nearest the photo's centre, detector score 0.5, else 0.2), and
where none is found the photo's centre crop (:func:`cryptoface.face.fallback.centre_crop`, the ``--no-face
centre-crop`` policy of ``eval pairs``) stands in for the aligned face. Those pairs are listed in the side file
``client_work/flagged_pairs.json``; an unreadable photo stops the stage instead.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cfsubmission.config import BenchConfig, SubmissionError
from cfsubmission.paths import IMAGE_LAYOUT, MANIFEST, SCORES_LAYOUT, ClientPaths, pair_file
from cryptoface import container
from cryptoface.client.keys import ClientKeys
from cryptoface.errors import FaceTooSmallError, ImageError, NoFaceError

INPUTS_DIR = "inputs"  # client_work/inputs/pair-NNNNN.npy: (2, 3, S, S) model inputs of one pair
PREPROCESS_FILE = "preprocess.json"
FLAGGED_FILE = "flagged_pairs.json"
SCORES_FILE = "scores.npy"
FACE_SELECT = "center"  # as eval lfw: a photo of a pair is centred on its subject


@dataclass(frozen=True)
class FlaggedPhoto:
    """A photo scored on its centre crop: pair index, side (0 = image0, 1 = image1) and why."""

    pair: int
    side: int
    reason: str


@dataclass(frozen=True)
class PreprocessReport:
    """Stage 5's record (``client_work/preprocess.json``): counts, resolution and the flagged photos."""

    pairs: int
    resolution: int
    flagged: list[FlaggedPhoto] = field(default_factory=list)

    @property
    def flagged_pairs(self) -> list[int]:
        return sorted({f.pair for f in self.flagged})


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _private_dir(path: Path) -> Path:
    """The client's work folder, readable by its owner only (clear model inputs, decrypted scores)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _write_json(path: Path, value: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def _read_json(path: Path, stage: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SubmissionError(f"{path} is missing or unreadable ({exc}); run {stage} first") from exc


# -- stage 2 -----------------------------------------------------------------------------------------------
def generate_keys(cfg: BenchConfig, paths: ClientPaths) -> ClientKeys:
    """Fresh keys for the engine plan and matching; secret home and public folder written as separate folders."""
    for folder in (paths.secret_keys, paths.public_keys):
        shutil.rmtree(folder, ignore_errors=True)
    keys = ClientKeys.generate(cfg.backend, cfg.params, resolution=cfg.resolution)
    keys.save(paths.secret_keys, public_out=paths.public_keys)
    return keys


def load_keys(paths: ClientPaths) -> ClientKeys:
    """The client's key set (secret key included) from its home."""
    if not paths.secret_keys.is_dir():
        raise SubmissionError(f"no client key home at {paths.secret_keys}; run client_key_generation first")
    return ClientKeys.load(paths.secret_keys)


# -- stage 5 -----------------------------------------------------------------------------------------------
def face_crop(encoded: bytes) -> tuple[np.ndarray, str | None]:
    """(112x112 RGB crop, None) of the photo's face, or (its centre crop, the reason) when none is found."""
    from cryptoface.face.fallback import centre_crop
    from cryptoface.face.image import load_image_file
    from cryptoface.face.pipeline import align_face

    image = load_image_file(encoded)
    try:
        return align_face(image, select=FACE_SELECT, min_score=None), None
    except (NoFaceError, FaceTooSmallError) as exc:
        return centre_crop(image), f"{type(exc).__name__}: {exc}"


def preprocess_pairs(test_pairs: Path, resolution: int, work: Path) -> PreprocessReport:
    """Model inputs of every photo of the harness's input store, one ``.npy`` per pair, and the side files."""
    import h5py

    from cryptoface.face.resize import to_model_input

    if not test_pairs.is_file():
        raise SubmissionError(f"{test_pairs} not found: the harness writes it in stage 4")
    out = _fresh_dir(_private_dir(work) / INPUTS_DIR)
    flagged: list[FlaggedPhoto] = []
    with h5py.File(test_pairs, "r") as store:
        count = len(store["image0"])
        if len(store["image1"]) != count:
            raise SubmissionError(f"{test_pairs}: image0 and image1 differ in length")
        for i in range(count):
            x = np.empty((2, 3, resolution, resolution))
            for side, name in enumerate(("image0", "image1")):
                try:
                    crop, reason = face_crop(bytes(np.asarray(store[name][i], dtype=np.uint8)))
                except ImageError as exc:
                    raise SubmissionError(f"pair {i} {name}: {exc}") from exc
                if reason is not None:
                    flagged.append(FlaggedPhoto(i, side, reason))
                x[side] = to_model_input(crop, resolution)
            np.save(pair_file(out, i, suffix=".npy"), x)
    report = PreprocessReport(count, resolution, flagged)
    _write_json(work / PREPROCESS_FILE, asdict(report))
    _write_json(work / FLAGGED_FILE, {"policy": "centre-crop", "pairs": report.flagged_pairs,
                                      "photos": [asdict(f) for f in flagged]})
    return report


def read_preprocess(work: Path) -> PreprocessReport:
    raw = _read_json(work / PREPROCESS_FILE, "client_preprocess_input")
    return PreprocessReport(int(raw["pairs"]), int(raw["resolution"]),
                            [FlaggedPhoto(int(f["pair"]), int(f["side"]), str(f["reason"])) for f in raw["flagged"]])


# -- stage 6 -----------------------------------------------------------------------------------------------
def encrypt_pairs(paths: ClientPaths) -> int:
    """Encrypt each photo's model input by the engine's input packing into ``upload/pair-NNNNN-S.cfct``."""
    from cryptoface.engine import encrypt_image

    report = read_preprocess(paths.work)
    keys = load_keys(paths)
    if keys.resolution is not None and int(keys.resolution) != report.resolution:
        raise SubmissionError(f"the keys were made for {keys.resolution}x{keys.resolution} inputs, the photos were "
                              f"preprocessed at {report.resolution}; run stages 2 and 5 with the same model")
    upload = _fresh_dir(paths.upload)
    be = keys.backend
    for i in range(report.pairs):
        x = np.load(pair_file(paths.work / INPUTS_DIR, i, suffix=".npy"), allow_pickle=False)
        for side in (0, 1):
            cts = encrypt_image(be, report.resolution, x[side])
            cf = container.pack_ciphertexts(be, cts, IMAGE_LAYOUT,
                                            meta={"pair": i, "side": side, "resolution": report.resolution})
            container.save(pair_file(upload, i, side), cf)
    _write_json(upload / MANIFEST, {"pairs": report.pairs, "resolution": report.resolution,
                                    "layout": IMAGE_LAYOUT})
    return report.pairs


# -- stage 8 -----------------------------------------------------------------------------------------------
def decrypt_scores(paths: ClientPaths) -> np.ndarray:
    """Decrypt every packed score batch of the download folder into ``client_work/scores.npy`` (input order)."""
    from cryptoface.match.pairs import unpack_scores

    report = read_preprocess(paths.work)
    manifest = _read_json(paths.download / MANIFEST, "server_encrypted_compute")
    keys = load_keys(paths)
    be = keys.backend
    scores = np.full(report.pairs, np.nan)
    seen = np.zeros(report.pairs, dtype=bool)
    for name in manifest.get("batches", []):
        cf = container.load(paths.download / Path(str(name)).name)
        (ct,) = container.unpack_ciphertexts(be, cf, layout=SCORES_LAYOUT)
        first, count = int(cf.meta["first"]), int(cf.meta["count"])
        if first < 0 or count < 1 or first + count > report.pairs or seen[first:first + count].any():
            raise SubmissionError(f"{name}: pairs {first}..{first + count - 1} do not fit the {report.pairs} pairs "
                                  "sent (or repeat a batch)")
        scores[first:first + count] = unpack_scores(be.decrypt(ct), count)
        seen[first:first + count] = True
    if not seen.all():
        raise SubmissionError(f"the server returned scores for {int(seen.sum())} of {report.pairs} pairs")
    np.save(paths.work / SCORES_FILE, scores)
    return scores


# -- stage 9 -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputReport:
    """Stage 9's summary: scores written, pairs scored on a centre crop, scores outside [-1, 1]."""

    path: Path
    pairs: int
    flagged_pairs: int
    outside_unit: int


def write_predictions(paths: ClientPaths) -> OutputReport:
    """One score per line, in input order, into the harness's predictions file (all finite, or an error)."""
    report = read_preprocess(paths.work)
    try:
        scores = np.load(paths.work / SCORES_FILE, allow_pickle=False)
    except OSError as exc:
        raise SubmissionError(f"{paths.work / SCORES_FILE} is missing; run client_decrypt_decode first") from exc
    if scores.shape != (report.pairs,) or report.pairs != paths.pair_count:
        raise SubmissionError(f"{scores.size} scores for {report.pairs} preprocessed pairs; the harness expects "
                              f"{paths.pair_count}")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(float(s))]
    if bad:
        raise SubmissionError(f"scores of pairs {bad[:10]} are not finite")
    paths.predictions.parent.mkdir(parents=True, exist_ok=True)
    tmp = paths.predictions.with_name(paths.predictions.name + ".tmp")
    tmp.write_text("".join(f"{float(s):.8f}\n" for s in scores))
    tmp.replace(paths.predictions)
    return OutputReport(paths.predictions, report.pairs, len(report.flagged_pairs),
                        int(np.sum(np.abs(scores) > 1.0)))

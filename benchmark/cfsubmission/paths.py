"""Where each stage reads and writes, inside the harness's I/O folder (``io/<size>/``, ``io/server_data/``).

The harness measures the on-disk bytes of ``io/<size>/public_keys`` (keys), ``io/server_data`` (packed model),
``io/<size>/ciphertexts_upload`` and ``io/<size>/ciphertexts_download``, so those hold exactly what crosses
between client and server. The client's own folders sit beside them and are never named to the server:
``client_secret_keys`` (the key home: secret key, mode 0700) and ``client_work`` (clear model inputs, the
flagged-pairs side file, decrypted scores). :class:`ServerPaths` is all that stages 3 and 7 are given.

The folder names follow the harness's own ``params.py`` (imported from the checkout the stages run in), so an
artefact root set with ``CRYPTOFACE_ARTIFACT_ROOT`` or ``FACE_LARGE_PAIRS`` mean the same here as there.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from cfsubmission.config import SubmissionError

PUBLIC_KEYS = "public_keys"
SECRET_KEYS = "client_secret_keys"
CLIENT_WORK = "client_work"
UPLOAD = "ciphertexts_upload"
DOWNLOAD = "ciphertexts_download"
SERVER_REPORT = "server_reported.json"
MANIFEST = "manifest.json"  # in the upload and download folders: counts and names only, nothing secret
IMAGE_LAYOUT = "image-monolithic"  # container layout of one encrypted photo (the engine's input packing)
SCORES_LAYOUT = "scores"  # container layout of one packed batch of pair scores


@dataclass(frozen=True)
class ClientPaths:
    """The client stages' folders and files (the secret key home among them)."""

    secret_keys: Path
    public_keys: Path
    work: Path
    upload: Path
    download: Path
    test_pairs: Path
    predictions: Path
    pair_count: int


@dataclass(frozen=True)
class ServerPaths:
    """Everything the server stages may touch: public keys, the prepared model, ciphertexts, its timing report."""

    public_keys: Path
    server_data: Path
    upload: Path
    download: Path
    report: Path


def pair_file(folder: Path, index: int, side: int | None = None, suffix: str = ".cfct") -> Path:
    """``folder/pair-NNNNN[-S]<suffix>``: one file per pair (or per photo of a pair, side 0 or 1)."""
    tail = "" if side is None else f"-{side}"
    return folder / f"pair-{index:05d}{tail}{suffix}"


def harness_params(root: Path | None = None) -> ModuleType:
    """The harness's ``params`` module from ``<root>/harness`` (default: the working directory, as the harness
    runs its stages), loaded by path so nothing is added to ``sys.path``."""
    path = (root or Path.cwd()) / "harness" / "params.py"
    if not path.is_file():
        raise SubmissionError(f"{path} not found: run the stage from the root of a harness checkout "
                              "(see benchmark/README.md)")
    spec = importlib.util.spec_from_file_location("_cryptoface_harness_params", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def client_paths(io_dir: Path, test_pairs: Path, predictions: Path, pair_count: int) -> ClientPaths:
    """The client's layout under one instance folder ``io_dir``."""
    return ClientPaths(io_dir / SECRET_KEYS, io_dir / PUBLIC_KEYS, io_dir / CLIENT_WORK, io_dir / UPLOAD,
                       io_dir / DOWNLOAD, test_pairs, predictions, pair_count)


def server_paths(io_dir: Path, server_data: Path) -> ServerPaths:
    """The server's layout under one instance folder ``io_dir`` and the shared ``server_data`` folder."""
    return ServerPaths(io_dir / PUBLIC_KEYS, server_data, io_dir / UPLOAD, io_dir / DOWNLOAD, io_dir / SERVER_REPORT)


def instance(size: int, root: Path | None = None) -> tuple[ClientPaths, ServerPaths]:
    """Both layouts for the harness instance ``size`` (0-3), as the harness's ``InstanceParams`` places it."""
    params = harness_params(root)
    if not params.SINGLE <= size <= params.LARGE:
        raise SubmissionError(f"instance size must be {params.SINGLE}..{params.LARGE}, got {size}")
    inst = params.InstanceParams(size, root)
    io_dir = Path(inst.iodir())
    client = client_paths(io_dir, Path(inst.get_test_input_file()), Path(inst.get_encrypted_model_predictions_file()),
                          int(inst.get_batch_size()))
    return client, server_paths(io_dir, Path(inst.get_server_data_dir()))


def server_data(root: Path | None = None) -> Path:
    """The shared packed-model folder (stage 3 gets no size: ``io/server_data`` is the same for every size)."""
    params = harness_params(root)
    return Path(params.InstanceParams(params.SINGLE, root).get_server_data_dir())

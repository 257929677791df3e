"""Exception classes raised at CryptoFace's boundaries; every message says what to do next."""

from __future__ import annotations


class CryptoFaceError(Exception):
    """Base class of every error CryptoFace raises on purpose."""


class ImageError(CryptoFaceError):
    """The input is not a readable image (missing file, wrong format, truncated data)."""


class NoFaceError(CryptoFaceError):
    """No face was found in the image."""


class FaceTooSmallError(CryptoFaceError):
    """A face was found but it is too small to align reliably."""


class ModelFileError(CryptoFaceError):
    """A model file is missing, of an unknown version, or inconsistent with its header."""


class ModelAssetError(CryptoFaceError):
    """A packaged model file (YuNet, SFace) cannot be found in the installed wheels."""


class DataError(CryptoFaceError):
    """An evaluation data set (LFW folder, pairs CSV) is missing or malformed."""


class ParameterError(CryptoFaceError):
    """CKKS parameters are invalid, insecure, or do not fit the requested program."""


class CiphertextError(CryptoFaceError):
    """A ciphertext is malformed, under another key set, or at the wrong level/parameters."""


class MissingKeyError(CryptoFaceError):
    """An evaluation key needed by the plan is missing, or a key set is unknown."""


class BackendUnavailableError(CryptoFaceError):
    """The requested CKKS backend is not installed in this Python environment."""

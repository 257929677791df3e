"""Files shipped inside the cryptoface package (``src/cryptoface/assets/``)."""

from __future__ import annotations

from pathlib import Path

from cryptoface.errors import ModelFileError

ASSETS_DIR = Path(__file__).parent / "assets"
SAMPLES_DIR = ASSETS_DIR / "samples"  # demo photos; attribution in SAMPLES_DIR / "SOURCES.md"


def default_model_path() -> Path:
    """The bundled CryptoFaceNet4 model file; raises ModelFileError when this build ships none."""
    path = ASSETS_DIR / "cryptofacenet4.npz"
    if not path.is_file():
        raise ModelFileError(
            f"no bundled model at {path}; pass a fused model file with --model PATH (see `cryptoface model`), "
            "or --model sface for the OpenCV SFace reference"
        )
    return path

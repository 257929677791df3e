"""Client face pipeline: decode, detect (YuNet), align (ArcFace 112x112), resize to the model input."""

from cryptoface.face.image import load_image_file
from cryptoface.face.pipeline import PIPELINE_VERSION, align_face, detect_and_align, preprocess
from cryptoface.face.resize import to_model_input

__all__ = ["PIPELINE_VERSION", "align_face", "detect_and_align", "load_image_file", "preprocess", "to_model_input"]

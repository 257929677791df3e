"""Fused CryptoFaceNet model: architecture constants, fused tensors, file format, numpy reference."""

from cryptoface.model.random import random_model

__all__ = ["random_model"]

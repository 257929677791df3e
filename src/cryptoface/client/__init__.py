"""The client role: owns the secret key, encrypts probes, decrypts results and decides.

One :class:`Client` (keys + a transport: HTTP or in-process) serves the CLI, the demo and the benchmarks.
Importing this package does not import FastAPI.
"""

from cryptoface.client.client import Client, IdentifyResult, TamperingError, VerifyResult, default_threshold
from cryptoface.client.http import HTTPTransport
from cryptoface.client.keys import ClientKeys, KeyHomeError, home_dir
from cryptoface.client.transport import (
    ImageProbe,
    InProcessTransport,
    ScoreChunk,
    ServerError,
    TemplateProbe,
    Transport,
)

__all__ = [
    "Client",
    "ClientKeys",
    "HTTPTransport",
    "IdentifyResult",
    "ImageProbe",
    "InProcessTransport",
    "KeyHomeError",
    "ScoreChunk",
    "ServerError",
    "TamperingError",
    "TemplateProbe",
    "Transport",
    "VerifyResult",
    "default_threshold",
    "home_dir",
]

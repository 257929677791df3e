"""The client role: owns the secret key, encrypts probes, decrypts results and decides.

One :class:`Client` (keys + a transport: HTTP as one tenant, or in-process) serves the CLI, the demo and the
benchmarks. Importing this package does not import FastAPI.
"""

from cryptoface.client.client import (
    Client,
    CompareResult,
    IdentifyResult,
    SubjectExistsError,
    TamperingError,
    UnknownSubjectError,
    VerifyResult,
    default_threshold,
    prove_possession,
)
from cryptoface.client.http import AdminClient, HTTPTransport
from cryptoface.client.inprocess import InProcessTransport
from cryptoface.client.keys import ClientKeys, KeyHomeError, home_dir
from cryptoface.client.settings import ServerSettings, resolve_settings, write_server_file
from cryptoface.client.transport import (
    AuthError,
    Challenge,
    ImageProbe,
    KeySetInfo,
    PairChunk,
    ScoreChunk,
    ServerError,
    Subject,
    TemplateProbe,
    Transport,
)

__all__ = [
    "AdminClient",
    "AuthError",
    "Challenge",
    "Client",
    "ClientKeys",
    "CompareResult",
    "HTTPTransport",
    "IdentifyResult",
    "ImageProbe",
    "InProcessTransport",
    "KeyHomeError",
    "KeySetInfo",
    "PairChunk",
    "ScoreChunk",
    "ServerError",
    "ServerSettings",
    "Subject",
    "SubjectExistsError",
    "TamperingError",
    "TemplateProbe",
    "Transport",
    "UnknownSubjectError",
    "VerifyResult",
    "default_threshold",
    "home_dir",
    "prove_possession",
    "resolve_settings",
    "write_server_file",
]

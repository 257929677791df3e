"""The client role: owns the secret key, encrypts probes, decrypts results, talks HTTP to the server."""

from cryptoface.client.http import CryptoFaceClient, IdentifyResult, ServerError, VerifyResult
from cryptoface.client.keys import ClientKeys, home_dir

__all__ = ["ClientKeys", "CryptoFaceClient", "IdentifyResult", "ServerError", "VerifyResult", "home_dir"]

"""Untrusted OpenFHE bytes are parsed first in a child process, so a hostile payload can only kill the child.

OpenFHE's deserialisers trust their input: a payload with a crafted modulus dies of SIGFPE, a crafted length
asks for terabytes, and both take the whole server with them (the wire CRC stops accidents, not a sender who
recomputes it). The server therefore hands every payload it received from a client (public key and context,
evaluation keys, ciphertexts) to :func:`screen` before OpenFHE reads it in-process. The child runs the same
deserialiser on the same bytes under an address-space limit; the parse is deterministic, so bytes the child
read cleanly are safe to read again here, and bytes that killed, exhausted or stalled the child are refused
with the caller's error class.

One child serves the whole process, started on first use (about a second to import OpenFHE) and restarted
after a crash; a lock keeps one payload in flight. Protocol over the child's stdin/stdout (its fd 1 is moved
away first, because OpenFHE prints on it when it reads a crypto context)::

    request:  what (uint16 length + ASCII) | count (uint16) | count x (uint64 length + bytes)
    reply:    status (1 byte: 0 read, 1 refused) | message (uint32 length + UTF-8)
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import BinaryIO

from cryptoface.errors import CryptoFaceError

# The child's address-space cap: a full-size (N = 2^16, 30 levels) rotation key is ~155 MB and its parse
# peaks well under 1 GiB; crafted lengths ask for far more and fail fast instead of taking the machine.
MEMORY_LIMIT_BYTES = 6 << 30
TIMEOUT_S = 120.0  # per payload; a full-size key parses in about a second
WHATS = ("context", "public", "relin", "rotation", "ciphertext")
_MAX_PAYLOADS = 4

_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")


class ScreenUnavailableError(CryptoFaceError):
    """The screening child process could not be started (no Python or no OpenFHE for it)."""


def screen(what: str, payloads: Sequence[bytes], error: type[CryptoFaceError], label: str) -> None:
    """Read ``payloads`` (one object, or a context then a public key) in the child; ``error`` if that fails."""
    if what not in WHATS or not 1 <= len(payloads) <= _MAX_PAYLOADS:
        raise ValueError(f"openfhe_screen: bad request {what!r} x {len(payloads)}")  # a bug in the caller
    ok, message = _CHILD.ask(what, payloads)
    if not ok:
        raise error(f"unreadable OpenFHE {label}: {message}")


class _Child:
    """The one screening process of this process, with a lock around each request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        try:
            return subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        except OSError as exc:
            raise ScreenUnavailableError(f"cannot start the OpenFHE screening process: {exc}") from exc

    def ask(self, what: str, payloads: Sequence[bytes]) -> tuple[bool, str]:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            timer = threading.Timer(TIMEOUT_S, proc.kill)
            timer.start()
            try:
                assert proc.stdin is not None and proc.stdout is not None
                _write_request(proc.stdin, what, payloads)
                return _read_reply(proc.stdout)
            except (OSError, EOFError, struct.error):
                proc.kill()
                code = proc.wait()
                self._proc = None
                cause = "took too long" if not timer.is_alive() else f"killed the parser (exit status {code})"
                return False, f"the bytes {cause}; they were refused before reaching the server process"
            finally:
                timer.cancel()


def _write_request(out: BinaryIO, what: str, payloads: Sequence[bytes]) -> None:
    name = what.encode("ascii")
    out.write(_U16.pack(len(name)) + name + _U16.pack(len(payloads)))
    for p in payloads:
        out.write(_U64.pack(len(p)))
        out.write(p)
    out.flush()


def _read_exact(src: BinaryIO, n: int) -> bytes:
    data = src.read(n)
    if data is None or len(data) != n:
        raise EOFError("short read")
    return data


def _read_reply(src: BinaryIO) -> tuple[bool, str]:
    status = _read_exact(src, 1)[0]
    (n,) = _U32.unpack(_read_exact(src, 4))
    return status == 0, _read_exact(src, n).decode("utf-8", "replace")


_CHILD = _Child()


# -- the child -------------------------------------------------------------------------------------
def _parse(openfhe: object, what: str, payloads: list[bytes]) -> None:
    """Run the deserialiser the server would run; raise on refusal (the process may also die here)."""
    of: object = openfhe
    binary = of.BINARY  # type: ignore[attr-defined]
    readers = {
        "context": of.DeserializeCryptoContextString,  # type: ignore[attr-defined]
        "public": of.DeserializePublicKeyString,  # type: ignore[attr-defined]
        "relin": of.DeserializeEvalMultKeyString,  # type: ignore[attr-defined]
        "rotation": of.DeserializeEvalKeyMapString,  # type: ignore[attr-defined]
        "ciphertext": of.DeserializeCiphertextString,  # type: ignore[attr-defined]
    }
    if what == "public":  # the public frame carries the crypto context, then the key
        if readers["context"](payloads[0], binary) is None:
            raise ValueError("the crypto context is unreadable")
        payloads = payloads[1:]
    for p in payloads:
        result = readers[what](p, binary)
        if result is None and what != "relin":  # DeserializeEvalMultKeyString returns a flag, not the key
            raise ValueError("the library returned nothing")
        if what == "relin" and result is False:
            raise ValueError("the library refused the key")


def _serve(inp: BinaryIO, out: BinaryIO) -> None:
    import openfhe

    while True:
        head = inp.read(2)
        if not head:
            return
        name = _read_exact(inp, _U16.unpack(head)[0]).decode("ascii")
        count = _U16.unpack(_read_exact(inp, 2))[0]
        payloads = [_read_exact(inp, _U64.unpack(_read_exact(inp, 8))[0]) for _ in range(count)]
        try:
            _parse(openfhe, name, payloads)
            status, message = 0, ""
        except (RuntimeError, ValueError, TypeError, MemoryError) as exc:
            status, message = 1, f"{type(exc).__name__}: {exc}"[:500]
        del payloads
        data = message.encode()
        out.write(bytes([status]) + _U32.pack(len(data)) + data)
        out.flush()


def _main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    reply = os.fdopen(os.dup(1), "wb")  # the protocol's channel; fd 1 itself goes to /dev/null
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    _serve(sys.stdin.buffer, reply)


if __name__ == "__main__":
    _main()

"""Entry points of the seven stage programs: parse the arguments, call one library function, report one line.

A failure prints one line naming the stage and what to do, and exits 1 (the harness stops at a non-zero exit);
``CRYPTOFACE_BENCH_DEBUG=1`` re-raises instead, for a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from cfsubmission.config import load_config
from cfsubmission.paths import instance, server_data

DEBUG_ENV = "CRYPTOFACE_BENCH_DEBUG"


def _size(stage: str, argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{stage}.py", description=f"CryptoFace submission stage {stage}.")
    parser.add_argument("size", type=int, help="instance size (0 single, 1 small, 2 medium, 3 large)")
    return int(parser.parse_args(list(argv)).size)


def _run(stage: str, body: Callable[[], str]) -> int:
    """Run ``body``; print its summary, or one line about its failure (exit status 1)."""
    try:
        summary = body()
    except Exception as exc:  # one line for the harness log, whatever failed
        if os.environ.get(DEBUG_ENV):
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"[submission] {stage} failed: {type(exc).__name__}: {text}", file=sys.stderr)
        return 1
    print(f"         [submission] {stage}: {summary}", flush=True)
    return 0


def client_key_generation(argv: Sequence[str]) -> int:
    size = _size("client_key_generation", argv)

    def body() -> str:
        from cfsubmission import client

        cfg = load_config()
        paths, _ = instance(size)
        keys = client.generate_keys(cfg, paths)
        p = keys.params
        return (f"{keys.backend_name} keys, N = 2^{p.log_ring}, {p.levels} levels, {len(keys.key_kinds)} public "
                f"and evaluation keys in {paths.public_keys}; secret key home {paths.secret_keys}")

    return _run("client_key_generation", body)


def server_preprocess_model(argv: Sequence[str]) -> int:
    argparse.ArgumentParser(prog="server_preprocess_model.py",
                            description="CryptoFace submission stage 3 (no arguments).").parse_args(list(argv))

    def body() -> str:
        from cfsubmission import server

        cfg = load_config()
        out = server_data()
        manifest = server.prepare(cfg, out)
        return (f"prepared {manifest.model_id} ({manifest.architecture}, {manifest.resolution}x{manifest.resolution}) "
                f"for parameters {manifest.params_id} in {out}")

    return _run("server_preprocess_model", body)


def client_preprocess_input(argv: Sequence[str]) -> int:
    size = _size("client_preprocess_input", argv)

    def body() -> str:
        from cfsubmission import client

        cfg = load_config()
        paths, _ = instance(size)
        report = client.preprocess_pairs(paths.test_pairs, cfg.resolution, paths.work)
        flagged = report.flagged_pairs
        note = (f"; {len(report.flagged)} photo(s) without a detected face scored on a centre crop, pairs "
                f"{flagged[:20]} flagged in {paths.work / client.FLAGGED_FILE}") if flagged else ""
        return f"{report.pairs} pair(s) aligned and resized to {report.resolution}x{report.resolution}{note}"

    return _run("client_preprocess_input", body)


def client_encode_encrypt_input(argv: Sequence[str]) -> int:
    size = _size("client_encode_encrypt_input", argv)

    def body() -> str:
        from cfsubmission import client

        paths, _ = instance(size)
        n = client.encrypt_pairs(paths)
        return f"{2 * n} photo(s) encrypted into {paths.upload}"

    return _run("client_encode_encrypt_input", body)


def server_encrypted_compute(argv: Sequence[str]) -> int:
    size = _size("server_encrypted_compute", argv)

    def body() -> str:
        from cfsubmission import server

        cfg = load_config()
        _, paths = instance(size)  # the server's folders only: public keys, prepared model, ciphertexts
        report = server.compute(cfg, paths)
        return (f"{report.pairs} pair score(s) in {report.batches} ciphertext(s); inference {report.inference:.1f} s, "
                f"matching {report.matching:.1f} s, total {report.total:.1f} s")

    return _run("server_encrypted_compute", body)


def client_decrypt_decode(argv: Sequence[str]) -> int:
    size = _size("client_decrypt_decode", argv)

    def body() -> str:
        from cfsubmission import client

        paths, _ = instance(size)
        scores = client.decrypt_scores(paths)
        return f"{scores.size} score(s) decrypted"

    return _run("client_decrypt_decode", body)


def client_postprocess(argv: Sequence[str]) -> int:
    size = _size("client_postprocess", argv)

    def body() -> str:
        from cfsubmission import client

        paths, _ = instance(size)
        out = client.write_predictions(paths)
        extra = f", {out.flagged_pairs} pair(s) scored on a centre crop" if out.flagged_pairs else ""
        extra += f", {out.outside_unit} outside [-1, 1]" if out.outside_unit else ""
        return f"{out.pairs} score(s) written to {out.path}{extra}"

    return _run("client_postprocess", body)

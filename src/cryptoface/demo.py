"""The demo: two people enrolled, a genuine and an impostor probe verified, one identification.

Everything runs in one process through :class:`~cryptoface.client.Client` with the in-process transport, on
the bundled sample faces: four encrypted inferences, each template reused for every request it serves. The
client acts as the service's implicit local tenant (no operator, no API key: nothing leaves the process), and
goes through the same registration as over HTTP, proof of possession included.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptoface.assets import SAMPLES_DIR
from cryptoface.errors import CryptoFaceError

# Seconds per encrypted Net4 inference (inference + the client's and server's matching work) on a 2-CPU machine
# in the refresh protocol, a rough guide for the expected-time line: OpenFHE from the demo's own run (the clear
# tail's 21 levels), desilofhe from its one-thread bench (README, "Encrypted Net4 on real CKKS"); the one-round
# protocol's 30 levels cost about 1.9x (215 s against ~113 s per OpenFHE inference).
SECONDS_PER_INFERENCE = {"openfhe": 120, "desilofhe": 600, "simulator": 15, "desilofhe-gpu": 20}
ONE_ROUND_FACTOR = 1.9
PHOTOS = {"obama": ("obama3.jpg", "obama4.jpg"), "chirac": ("chirac1.jpg", "chirac3.jpg")}


def backend_label(backend: str) -> str:
    """What the user is told the backend is: the simulator is not encryption."""
    return "NOT ENCRYPTED (simulator)" if backend == "simulator" else f"CKKS encryption ({backend})"


@dataclass
class DemoReport:
    backend: str
    genuine_accepted: bool
    impostor_accepted: bool
    identified: str | None
    scores: dict[str, float]
    timings: list[tuple[str, float]] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(t for _, t in self.timings)


def run_demo(backend: str, model: Any, *, mode: str = "score", device: str = "cpu", protocol: str | None = None,
             say: Callable[[str], None] = print) -> DemoReport:
    """Run the demo on ``backend`` with ``model`` (a FusedModel) on ``device`` (client and server) under
    ``protocol`` (default: the refresh protocol), reporting each step through ``say``."""
    from tqdm import tqdm

    from cryptoface.client import Client, ClientKeys
    from cryptoface.match.poly import inverse_sqrt_series
    from cryptoface.match.threshold import threshold_from_metadata
    from cryptoface.params import DEFAULT_PROTOCOL, default_parameters
    from cryptoface.service.core import MatchService
    from cryptoface.store import SQLiteStore

    protocol = protocol or DEFAULT_PROTOCOL
    params = default_parameters(model.resolution, mode=mode, protocol=protocol)
    per = SECONDS_PER_INFERENCE.get(backend if device == "cpu" else f"{backend}-{device}", 600)
    per *= ONE_ROUND_FACTOR if protocol == "one-round" else 1.0
    say(f"CryptoFace demo - backend {backend}: {backend_label(backend)}; {protocol} protocol")
    say(f"CKKS N = 2^{params.log_ring}, {params.levels} levels, log2 QP ~ {params.log_qp} <= 1772 (128-bit), "
        f"model {model.architecture} {model.resolution}x{model.resolution}")
    say(f"expected time: about {4 * per / 60 + 1:.0f} minutes (4 encrypted inferences of ~{per / 60:.0f} min each "
        f"{'on 2 CPUs' if device == 'cpu' else 'on one ' + device.upper()}, plus key generation)")
    missing = [f for fs in PHOTOS.values() for f in fs if not (SAMPLES_DIR / f).is_file()]
    if missing:
        raise CryptoFaceError(f"sample faces missing under {SAMPLES_DIR}: {missing}")
    timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        timings.append((name, time.perf_counter() - t))
        say(f"  {name}: {timings[-1][1]:.1f} s")

    tau = threshold_from_metadata(model.metadata)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "demo.db")
        service = MatchService(store, model=model, threshold=tau, progress=True, device=device)
        with step("client: key generation (secret key stays here)"):
            options = {} if device == "cpu" else {"device": device}
            keys = ClientKeys.generate(backend, params, resolution=model.resolution,
                                       match_ring=protocol == "refresh", **options)
        client = Client.in_process(keys, service, threshold=tau, protocol=protocol)
        with step("server: registers the public key, checks the proof of possession, stores the evaluation keys"):
            client.register()
        inverse_sqrt_series()  # fitted once per process

        templates = {}
        for f in tqdm([f for fs in PHOTOS.values() for f in fs], desc="photos", unit="photo"):
            with step(f"client: align + encrypt {f}"):
                probe = client.encrypt_photo(SAMPLES_DIR / f)
            with step(f"server: encrypted inference on {f}"):
                templates[f] = client.infer(probe)
        how = ("client: normalise in the clear, encrypt afresh; server: store" if protocol == "refresh" else
               "server: normalise under encryption, store")
        for name, fs in PHOTOS.items():
            with step(f"enrol {name} ({fs[0]}): {how}"):
                client.enroll(name, [templates[fs[0]]], decision_ready=mode == "decision")
        genuine, impostor = templates[PHOTOS["obama"][1]], templates[PHOTOS["chirac"][1]]
        accepted = {}
        for label, probe in (("genuine", genuine), ("impostor", impostor)):
            with step(f"verify 'obama' with the {label} probe"):
                r = client.verify("obama", probe, mode=mode)
            accepted[label] = r.accepted
            shown = f"score {r.score:.4f}" if r.mode == "score" else f"sign value {r.values[0]:+.3f}"
            say(f"    {label}: {'ACCEPT' if r.accepted else 'REJECT'} ({shown}, threshold {tau:.4f})")
        with step("identify, reusing the genuine probe's encrypted template (no new inference)"):
            ident = client.identify(genuine, mode="score")
        say(f"    identify: {ident.subject or 'unknown'} "
            f"(scores {', '.join(f'{k} {v:.3f}' for k, v in ident.scores.items())})")
        store.close()
    report = DemoReport(backend, accepted["genuine"], accepted["impostor"], ident.subject, ident.scores, timings)
    say(f"total {report.total_seconds:.1f} s; backend {backend}: {backend_label(backend)}")
    return report

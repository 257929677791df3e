"""Assemble a harness checkout in a work folder and run the harness there (standard library only).

The checkout is what the harness expects at its root: ``harness/`` and ``scripts/`` copied from the harness copy
(``../shared/benchmark/face-recognition-harness`` by default; copied, not linked, so its ``__pycache__`` stays out
of ``../shared``), ``submission/`` a link to ``benchmark/submission`` (the stage programs import their library
from beside it) and ``datasets/face_dataset.h5`` built by :mod:`cfsubmission.dataset` for the size's pair count.
The harness runs its stage programs with its own interpreter, so it is started with the venv whose backend the
run uses: ``.venv-openfhe`` for OpenFHE, ``.venv`` otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1]  # benchmark/
REPO = BENCH_DIR.parent
DEFAULT_HARNESS = REPO.parent / "shared" / "benchmark" / "face-recognition-harness"
DEFAULT_LFW = REPO.parent / "shared" / "data" / "lfw"
DEFAULT_WORK = Path("/tmp/cryptoface-harness")
SIZE_NAMES = ("single", "small", "medium", "large")
SIZE_PAIRS = (1, 128, 256, 1024)  # the harness's params.py; FACE_LARGE_PAIRS overrides the large size
ARTIFACT_ROOT_ENV = "CRYPTOFACE_ARTIFACT_ROOT"


class CheckoutError(Exception):
    """The checkout cannot be assembled or run as asked (missing harness copy, venv or data)."""


@dataclass(frozen=True)
class RunPlan:
    """One harness run: where, which instance, which interpreter and environment, which data."""

    work: Path
    size: int
    python: Path
    env: dict[str, str]
    harness: Path = DEFAULT_HARNESS
    lfw_dir: Path | None = DEFAULT_LFW
    csv: Path | None = None
    dataset_pairs: int | None = None
    num_runs: int = 1
    seed: int | None = None

    @property
    def artifact_root(self) -> Path:
        configured = self.env.get(ARTIFACT_ROOT_ENV)
        return self.work if not configured else (self.work / Path(configured).expanduser())

    @property
    def dataset(self) -> Path:
        return self.artifact_root / "datasets" / "face_dataset.h5"

    @property
    def measurements(self) -> Path:
        return self.work / "measurements" / SIZE_NAMES[self.size]

    @property
    def io_dir(self) -> Path:
        return self.artifact_root / "io" / SIZE_NAMES[self.size]


def pair_count(size: int, env: dict[str, str]) -> int:
    """Pairs the harness samples for ``size`` (as its params.py computes them)."""
    if not 0 <= size < len(SIZE_PAIRS):
        raise CheckoutError(f"size must be 0-3, got {size}")
    if size == 3 and env.get("FACE_LARGE_PAIRS"):
        return int(env["FACE_LARGE_PAIRS"])
    return SIZE_PAIRS[size]


def venv_python(backend: str, repo: Path = REPO) -> Path:
    """The interpreter of the venv that has ``backend``: ``.venv-openfhe`` for openfhe, else ``.venv``."""
    venv = repo / (".venv-openfhe" if backend == "openfhe" else ".venv")
    python = venv / "bin" / "python"
    if not python.exists():
        raise CheckoutError(f"{python} not found; run scripts/install.sh, or pass --python")
    return python


def assemble(work: Path, harness: Path) -> None:
    """``harness/`` and ``scripts/`` copied from ``harness``, ``submission/`` linked to benchmark/submission."""
    for name in ("harness", "scripts"):
        if not (harness / name).is_dir():
            raise CheckoutError(f"{harness / name} not found; point --harness at the harness copy "
                                "(../shared/benchmark/face-recognition-harness)")
    work.mkdir(parents=True, exist_ok=True)
    for name in ("harness", "scripts", "submission"):
        target = work / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
    for name in ("harness", "scripts"):
        shutil.copytree(harness / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "submission").symlink_to(BENCH_DIR / "submission", target_is_directory=True)


def build_dataset(plan: RunPlan) -> None:
    """``datasets/face_dataset.h5`` with the size's pair count (or ``dataset_pairs``), balanced, first pairs."""
    limit = plan.dataset_pairs or pair_count(plan.size, plan.env)
    source = ["--csv", str(plan.csv)] if plan.csv is not None else ["--lfw-dir", str(plan.lfw_dir)]
    subprocess.run([str(plan.python), str(BENCH_DIR / "build_dataset.py"), *source, "--limit", str(limit),
                    "--out", str(plan.dataset)], check=True, env=plan.env)


def run_harness(plan: RunPlan) -> int:
    """``python harness/run_submission.py SIZE`` in the checkout; returns its exit status."""
    command = [str(plan.python), "harness/run_submission.py", str(plan.size), "--num_runs", str(plan.num_runs)]
    if plan.seed is not None:
        command += ["--seed", str(plan.seed)]
    return subprocess.run(command, cwd=plan.work, env=plan.env).returncode


def run(plan: RunPlan) -> int:
    """Assemble, build the dataset, run the harness; the harness's exit status."""
    assemble(plan.work, plan.harness)
    build_dataset(plan)
    return run_harness(plan)

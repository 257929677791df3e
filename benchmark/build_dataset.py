#!/usr/bin/env python3
"""Build the harness's face_dataset.h5 from LFW pairs.txt or a pairs CSV (see cfsubmission.dataset).

    python benchmark/build_dataset.py --lfw-dir ../shared/data/lfw --limit 128 --out WORK/datasets/face_dataset.h5
    python benchmark/build_dataset.py --csv pairs.csv --out face_dataset.h5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cfsubmission.dataset import build_dataset

from cryptoface.errors import CryptoFaceError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the HE benchmark harness's face_dataset.h5.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--lfw-dir", type=Path, help="LFW folder holding pairs.txt and the <Name>/ folders")
    source.add_argument("--csv", type=Path, help="pairs CSV with columns image1,image2,same")
    parser.add_argument("--limit", type=int, help="keep the first N pairs, balanced across classes (and folds)")
    parser.add_argument("--out", type=Path, required=True, help="the .h5 file to write (replaced atomically)")
    args = parser.parse_args(argv)
    try:
        report = build_dataset(args.out, lfw_dir=args.lfw_dir, csv=args.csv, limit=args.limit)
    except (CryptoFaceError, OSError) as exc:
        print(f"build_dataset: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {report.path}: {report.pairs} pairs ({report.genuine} genuine, {report.impostor} impostor, "
          f"{report.folds} fold(s)) from {report.source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LFW accuracy of a model under landmark-refinement variants (the README's alignment table).

Each variant aligns the 7,701 LFW pair photos with YuNet ("center" face, lenient research search) and either
the detector's own landmarks ("none") or landmarks refined at the given view box sizes, then scores the
6,000 pairs 10-fold with one forward per image. Crops are not cached (about 3-6 minutes per variant here).

    python scripts/alignment_variants.py --lfw-dir ../shared/data/lfw --variant none --variant 112,224 \
        --variant 96,160,224 --variant 112,160,224,288 --json variants.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm import tqdm

from cryptoface.eval.embedders import cosine_scores, embedder_for
from cryptoface.eval.lfw import LFW_FACE_SELECT, image_root, read_pairs, summarize
from cryptoface.face.align import warp_face
from cryptoface.face.detect import detect_face
from cryptoface.face.image import load_image_file
from cryptoface.face.refine import refine_landmarks

METRICS = ("accuracy", "accuracy_std", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw-dir", type=Path, required=True)
    ap.add_argument("--model", default=None, help="fused model file or 'sface' (default: the bundled model)")
    ap.add_argument("--variant", action="append", required=True,
                    help="'none' or comma-separated view box sides in px, e.g. 112,224 (repeatable)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    pairs = read_pairs(args.lfw_dir / "pairs.txt")
    names = sorted(set(pairs.left) | set(pairs.right))
    root = image_root(args.lfw_dir)
    embedder, _ = embedder_for(args.model)
    photos = {rel: load_image_file(root / rel) for rel in tqdm(names, desc="reading photos", unit="img")}
    faces = {rel: detect_face(img, select=LFW_FACE_SELECT, min_score=None, min_eye_distance=0)
             for rel, img in tqdm(photos.items(), desc="detecting", unit="img")}
    results = {}
    for variant in args.variant:
        sides = None if variant == "none" else tuple(int(v) for v in variant.split(","))
        t0 = time.perf_counter()
        crops = {}
        for rel in tqdm(names, desc=f"aligning ({variant})", unit="img"):
            img, face = photos[rel], faces[rel]
            crops[rel] = warp_face(img, face.landmarks if sides is None else refine_landmarks(img, face, sides))
        feats = dict(zip(names, embedder.embed([crops[r] for r in names]), strict=True))
        scores = cosine_scores([feats[r] for r in pairs.left], [feats[r] for r in pairs.right])
        row = {k: summarize(scores, pairs.same, pairs.fold)[k] for k in METRICS}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results[variant] = row
        print(variant, json.dumps(row), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"model": embedder.name, "variants": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

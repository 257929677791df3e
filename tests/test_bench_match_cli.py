"""`cryptoface bench-match` on the simulator (small ring): encrypted matching equals its clear reference.

The simulator adds no noise, so the decrypted scores must equal the clear cosine of the normalised templates to
float64 rounding (one-round: *polynomially* normalised by the server; refresh: exactly, by the client): any slip
in the template layout, level, gallery packing, score slots or the client/server exchange shows up as a large
error here.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import FACES, shared_dir
from cryptoface.bench.exchange import FileKeys, write_keys
from cryptoface.bench.match_report import TEMPLATES_NOTE
from cryptoface.bench.match_templates import select_pairs
from cryptoface.cli import main


def _run(tmp_path, *extra: str) -> dict:
    out = tmp_path / "match.json"
    argv = ["bench-match", "--backend", "simulator", "--log-ring", "13", "--runs", "1", "--quiet",
            "--json", str(out), *extra]
    assert main(argv) == 0
    return json.loads(out.read_text())


def _check(result: dict, pairs: int, galleries: list[int], protocol: str = "refresh") -> None:
    assert result["templates"] == TEMPLATES_NOTE and result["protocol"] == protocol
    # one-round: the engine's output level (LEVELS.matching_reserve); refresh: the client's fresh template's
    assert result["template_level"] == (7 if protocol == "one-round" else 2)
    assert (result.get("client_refresh") is not None) == (protocol == "refresh")
    s = result["scores"]
    assert s["pairs"] == pairs
    assert s["genuine"] == pairs - pairs // 2 and s["impostor"] == pairs // 2
    assert s["max_abs_error_vs_clear_polynomial"] < 1e-9
    # one-round: the 1/sqrt polynomial's own error only; refresh: none
    assert s["max_abs_error"] < (1e-3 if protocol == "one-round" else 1e-9)
    assert s["decision_flips"] == 0
    t = result["timing_1to1"]
    assert t["server_verify_s_median"] > 0 and t["client_decrypt_s_median"] > 0
    assert t["stored_template_level"] == (1 if protocol == "one-round" else 2)  # refresh: + the dense mask
    for size in galleries:
        g = result["identify"][str(size)]
        assert g["ciphertexts"] == -(-size // 16)  # 4096 slots: 16 templates per gallery ciphertext
        # refresh: one answer per 16 chunks (a group); one-round: one answer per gallery ciphertext
        assert g["result_ciphertexts"] == (g["ciphertexts"] if protocol == "one-round" else -(-size // 256))
        assert (g.get("server_group_build_s") is not None) == (protocol == "refresh")
        assert g["argmax"] == g["argmax_clear"]
        assert g["max_abs_error"] < 1e-9
        assert g["server_score_s_median"] > 0
    st = result["storage"]
    assert st["subjects"] == pairs
    assert st["enrolled_gallery_max_abs_error"] < 1e-9 and st["enrolled_gallery_argmax_agrees"]
    # the share of the gallery form the service stores: a chunk per 16 templates, or (refresh: grouped) 16
    # ciphertexts one level lower per 16 chunks (the same bytes on the simulator)
    share = st["gallery_share_bytes_full"]
    chunk_share = result["identify"][str(galleries[0])]["gallery_ciphertext_bytes"] / 16
    assert share == pytest.approx(chunk_share, rel=1e-3)  # the simulator's ciphertext size does not shrink by level
    assert result["bytes_per_subject"]["total"] == pytest.approx(t["stored_template_bytes"] + share)
    # the last pair's template vs the store's median: a frame header's number may print a byte longer or shorter
    assert abs(t["stored_template_bytes"] - st["template_bytes"]) <= 8
    assert result["server"]["peak_rss_bytes"] > 0 and result["server"]["has_secret_key"] is False
    if protocol == "one-round":  # the server's 1/sqrt polynomial (the refresh protocol normalises exactly)
        assert result["inv_sqrt"]["max_rel_error_clear"] < 1e-4
    else:
        assert result.get("inv_sqrt") is None
    assert len(result["per_pair"]) == pairs


@pytest.mark.parametrize(("protocol", "ring", "levels"), [("refresh", "match", 2), ("refresh", "network", 21),
                                                          ("one-round", "match", 30)])
def test_bench_match_synthetic(tmp_path, protocol, ring, levels):
    result = _run(tmp_path, "--pairs", "5", "--gallery", "20,300", "--protocol", protocol, "--ring", ring)
    _check(result, 5, [20, 300], protocol)
    assert "synthetic" in result["pairs_source"]
    # the matching ring (refresh's default) or the network's levels; one-round has no ring
    assert result["ring"] == ("network" if protocol == "one-round" else ring)
    assert result["params"]["levels"] == levels


def test_bench_match_lfw_layout_from_bundled_faces(tmp_path):
    """A tiny LFW-style folder built from the bundled faces: alignment, model forward, embedding cache, pairs."""
    lfw = tmp_path / "lfw"
    people = {"Obama": ["obama3.jpg", "obama4.jpg"], "Chirac": ["chirac1.jpg", "chirac3.jpg"],
              "Rudd": ["paul_rudd_1.jpg", "paul_rudd_2.jpg"]}
    for name, files in people.items():
        (lfw / name).mkdir(parents=True)
        for i, f in enumerate(files, 1):
            shutil.copy(FACES / f, lfw / name / f"{name}_{i:04d}.jpg")
    (lfw / "pairs.txt").write_text(
        "1 2\nObama 1 2\nChirac 1 2\nObama 1 Chirac 2\nRudd 1 Obama 2\n")
    cache = tmp_path / "cache"
    result = _run(tmp_path, "--lfw-dir", str(lfw), "--cache-dir", str(cache), "--pairs", "4", "--gallery", "10")
    _check(result, 4, [10])
    assert "LFW pairs.txt" in result["pairs_source"]
    assert list(cache.glob("lfw-emb-*.npz"))  # embeddings cached like `eval lfw`


@pytest.mark.skipif(not (shared_dir() / "data" / "lfw" / "pairs.txt").is_file(), reason="../shared/data/lfw absent")
def test_bench_match_real_lfw_pairs(tmp_path):
    result = _run(tmp_path, "--lfw-dir", str(shared_dir() / "data" / "lfw"), "--pairs", "4", "--gallery", "16")
    _check(result, 4, [16])
    folds = [p for p in result["pairs_source"].split("folds ")[1].split("]")[0].strip("[").split(", ")]
    assert len(folds) == 2  # 2 genuine + 2 impostor pairs spread round-robin over folds 0 and 1


def test_select_pairs_balanced_over_folds():
    same = np.array(([True] * 3 + [False] * 3) * 4)
    fold = np.repeat(np.arange(4), 6)
    idx = select_pairs(same, fold, 10)
    assert len(idx) == 10 and len(set(idx)) == 10
    assert same[idx].sum() == 5
    assert set(fold[idx][same[idx]]) == {0, 1, 2, 3}  # round-robin: every fold before any second pick
    assert set(fold[idx][~same[idx]]) == {0, 1, 2, 3}
    assert len(select_pairs(same, fold, 100)) == 24  # capped by what exists


def test_file_keys_round_trip(tmp_path):
    keys = {"public": b"p" * 10, "relin": b"r", "rotation:4": b"x" * 3}
    sizes = write_keys(keys, tmp_path / "k")
    assert sizes == {k: len(v) for k, v in keys.items()}
    fk = FileKeys(tmp_path / "k")
    assert dict(fk) == keys and "relin" in fk and "secret" not in fk
    with pytest.raises(KeyError):
        fk["secret"]

"""``cryptoface train``: fine-tune (or train) CryptoFaceNet by distillation from SFace, keep it CKKS-safe, export.

Pipeline (see :class:`~cryptoface.train.config.TrainConfig` for every knob):

1. data: decoded training crops (cached), teacher embeddings (cached, chunked), the LFW guard, a seeded
   hold-out split;
2. model: the paper's released weights (``init = "paper"``) or a fresh PatchCNN; optionally the exact
   per-channel rescale of every HerPN input down to ``rescale_target`` (:mod:`cryptoface.train.ranges`);
3. loss: relational + projected-cosine distillation, optional CosFace on labelled identities, optional
   jigsaw, and the range penalty ``mean(relu(|x| - B)^2)`` on every HerPN input;
4. every epoch: a checkpoint (``checkpoint.pt``; ``--resume`` continues from it, optimizer and RNG state
   included) and a history line in ``history.jsonl``;
5. at the end: the weights to export (the last epoch, or the best one under ``select_by``; ``blend`` moves
   them back toward the rescaled start; ``export_rescale_target`` rescales once more on every usable crop),
   fused into a float64 model file (``export_name``) with the recipe, guard report, norm statistics, LFW and
   in-the-wild figures and the threshold in its metadata.

One module on purpose (~780 lines): the training loop, its checkpoint/resume state and the export share the
same run state; the data, model, loss and range pieces live in their own modules beside it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cryptoface.errors import CryptoFaceError
from cryptoface.eval.wild import (
    BOOTSTRAP,
    MIN_IDENTITIES,
    calibration,
    is_validation_identity,
    validation_rows,
    wild_result,
)
from cryptoface.match.threshold import DEFAULT_FAR, FARS, far_key
from cryptoface.model.file import save_model
from cryptoface.train.config import SELECTABLE, ConfigError, TrainConfig
from cryptoface.train.data import TrainIndex, labelled_identities, load_crops, read_index
from cryptoface.train.distill import teacher_embeddings
from cryptoface.train.fuse import fuse
from cryptoface.train.guard import lfw_pair_embeddings, run_guard
from cryptoface.train.losses import CosFace, Projection, jigsaw_loss, projection_loss, relational_loss
from cryptoface.train.model import PatchCNN
from cryptoface.train.ranges import RangePenalty, channel_maxima, rescale_herpn_inputs, squared_norm_stats

CHECKPOINT = "checkpoint.pt"


class TrainingDivergedError(CryptoFaceError):
    """Training produced a model whose eval-mode output is not finite."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- preprocessing


def to_input(crops_u8: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, 112, 112, 3) uint8 -> (B, 3, S, S) float32, the model transform (normalise, then antialiased resize)."""
    x = torch.as_tensor(np.ascontiguousarray(crops_u8)).permute(0, 3, 1, 2).float().div_(255.0)
    return resize(x, resolution)


def resize(x01: torch.Tensor, resolution: int) -> torch.Tensor:
    x = (x01 - 0.5) / 0.5
    if x.shape[-1] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def augment(x01: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip / colour / geometry jitter on (B, 3, 112, 112) in [0, 1]; returns (images, flipped mask).

    Random numbers come from the CPU generator ``gen`` (same draws on every device) and move to the images.
    """
    b, dev = x01.shape[0], x01.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen).to(dev)

    flipped = torch.zeros(b, dtype=torch.bool, device=dev)
    if cfg.flip:
        flipped = rand(b) < 0.5
        x01 = torch.where(flipped[:, None, None, None], x01.flip(-1), x01)
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        bright = 1.0 + (rand(b, 1, 1, 1) * 2 - 1) * j
        contrast = 1.0 + (rand(b, 1, 1, 1) * 2 - 1) * j
        mean = x01.mean(dim=(1, 2, 3), keepdim=True)
        x01 = ((x01 - mean) * contrast + mean * bright).clamp(0, 1)
    if cfg.scale_jitter > 0 or cfg.shift_jitter > 0:
        size = x01.shape[-1]
        s = 1.0 + (rand(b) * 2 - 1) * cfg.scale_jitter
        t = (rand(b, 2) * 2 - 1) * (2.0 * cfg.shift_jitter / size)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = 1.0 / s
        theta[:, 1, 1] = 1.0 / s
        theta[:, :, 2] = t
        grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
        x01 = F.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return x01, flipped


# ----------------------------------------------------------------------------- data preparation


@dataclass
class Prepared:
    index: TrainIndex
    crops: np.ndarray
    teacher: np.ndarray  # (N, V, 128)
    train_rows: np.ndarray
    val_rows: np.ndarray
    labels: np.ndarray  # (N,) class id or -1
    n_classes: int
    report: dict[str, Any]


def guard_rows(cfg: TrainConfig, index: TrainIndex, teacher: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, dict]:
    """Mask of crops usable for training (teacher feature present, LFW guard passed) and the guard report."""
    usable = ok.copy()
    if not (cfg.lfw_dir and cfg.teacher == "sface"):
        return usable, {"skipped": "no lfw_dir or not the SFace teacher (tests / smoke runs)"}
    log(f"LFW guard against the pair photos of {cfg.lfw_dir}")
    names, lfw_emb = lfw_pair_embeddings(cfg.lfw_dir, cfg.cache_dir, cfg.progress)
    checked = np.flatnonzero(ok)
    res = run_guard(
        teacher[checked, 0],
        [index.identity[i] for i in checked],
        names,
        lfw_emb,
        cfg.guard_threshold,
        cfg.guard_identity_threshold,
    )
    usable[checked[~res.keep]] = False
    report = res.summary()
    top = np.argsort(-res.max_cos)[:10]
    report["top_matches"] = [
        {"member": index.member[checked[i]], "lfw": res.nearest[i], "cos": round(float(res.max_cos[i]), 3)} for i in top
    ]
    log(
        f"guard: {report['dropped']} of {len(checked)} crops dropped "
        f"({res.dropped_images} image-level >= {cfg.guard_threshold}, identities {res.dropped_identities})"
    )
    return usable, report


def prepare_data(cfg: TrainConfig) -> Prepared:
    """Crops, teacher features, LFW guard and the hold-out split, from the folder or from a training pack."""
    if cfg.pack:
        from cryptoface.train.pack import decode_pack, read_pack

        pack = read_pack(cfg.pack)
        index, full_teacher = pack.index, pack.teacher
        log(f"decoding {len(index)} crops from the training pack {cfg.pack}")
        crops = decode_pack(pack, progress=cfg.progress)
        n = len(index) if cfg.limit is None else min(cfg.limit, len(index))
        usable = np.zeros(len(index), bool)
        usable[:n] = True  # the pack holds only crops that passed the guard when it was made
        meta = {k: v for k, v in pack.meta.items() if k != "guard"}
        report: dict[str, Any] = {"crops": int(n), "with_teacher": int(n), "pack": meta}
        report["guard"] = pack.meta.get("guard", {})
    else:
        index, crops, full_teacher, ok = _folder_data(cfg, require_complete=not cfg.teacher_partial)
        n = len(index) if cfg.limit is None else min(cfg.limit, len(index))
        report = {"crops": int(n), "with_teacher": int(ok.sum())}
        usable, report["guard"] = guard_rows(cfg, index, full_teacher, ok)
    wild = np.array([is_validation_identity(ident) for ident in index.identity[: len(usable)]], bool)
    if cfg.exclude_wild:
        usable &= ~wild
    report["wild_validation_crops"] = int(wild.sum()) if cfg.exclude_wild else 0
    rows = np.flatnonzero(usable)
    # A crop's hold-out membership depends only on its row and the seed, so it stays put when a partial
    # teacher cache grows between epochs.
    is_val = np.random.default_rng(cfg.seed).random(len(index)) < cfg.holdout
    held = held_out_identities(index, rows, cfg.holdout_identities, cfg.seed)
    if held:
        is_val |= np.array([ident in held for ident in index.identity])
    val_rows, train_rows = rows[is_val[rows]], rows[~is_val[rows]]
    report["holdout_identities"] = sorted(held)
    classes = labelled_identities(index, train_rows)
    labels = np.full(len(index), -1, np.int64)
    for i in train_rows:
        labels[i] = classes.get(index.identity[i], -1)
    report.update(train=len(train_rows), holdout=len(val_rows), labelled_identities=len(classes))
    report["identities_used"] = sorted(classes)
    return Prepared(index, crops, full_teacher, train_rows, val_rows, labels, len(classes), report)


def _folder_data(cfg: TrainConfig, require_complete: bool) -> tuple[TrainIndex, np.ndarray, np.ndarray, np.ndarray]:
    """The training folder's index, crops, teacher features and which crops have one (within ``limit``)."""
    index = read_index(cfg.train_dir)
    crops = load_crops(index, cfg.cache_dir, cfg.progress)
    views = 2 if cfg.teacher_views == 2 else 1
    teacher, ok = teacher_embeddings(crops, index.digest, cfg.teacher, views, cfg.cache_dir, cfg.progress,
                                     require_complete)
    if cfg.limit is not None:
        ok[cfg.limit :] = False
    return index, crops, teacher, ok


def held_out_identities(index: TrainIndex, rows: np.ndarray, n: int, seed: int) -> set[str]:
    """``n`` labelled identities with >= 2 images among ``rows`` (seeded), kept entirely out of training.

    Their genuine and impostor pairs give a verification accuracy on people the model never saw, a proxy
    for LFW that needs no LFW photo (a crop-level hold-out shares people with the training split).
    """
    if n <= 0:
        return set()
    candidates = sorted(labelled_identities(index, rows))
    if len(candidates) <= n:
        raise ValueError(f"holdout_identities = {n} but only {len(candidates)} identities have two or more images")
    return {str(k) for k in np.random.default_rng(seed + 7).choice(candidates, n, replace=False)}


def make_pack(cfg: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write the training pack of ``cfg``'s folder: crops with a complete teacher cache that pass the guard."""
    from cryptoface.train.pack import write_pack

    if cfg.pack:
        raise ValueError("make_pack reads the training folder; unset `pack` in the config")
    index, _, teacher, ok = _folder_data(cfg, require_complete=True)
    usable, guard = guard_rows(cfg, index, teacher, ok)
    rows = np.flatnonzero(usable)
    meta = {
        "train_dir": str(cfg.train_dir),
        "teacher": cfg.teacher,
        "guard": guard,
        "crops_in_folder": len(index),
    }
    out = write_pack(path, index, rows, teacher, meta, cfg.progress)
    log(f"training pack {out}: {len(rows)} of {len(index)} crops, {out.stat().st_size / 2**20:.1f} MiB")
    return out


# ----------------------------------------------------------------------------- model


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (an error when PyTorch sees no GPU) or ``auto``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device = 'cuda' but PyTorch sees no CUDA GPU; use device = 'cpu' or 'auto'")
    return torch.device(name)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def build_model(cfg: TrainConfig, data: Prepared, device: torch.device) -> tuple[PatchCNN, dict[str, float]]:
    if cfg.init == "paper":
        from cryptoface.train.paper import load_paper_checkpoint

        model = load_paper_checkpoint(cfg.paper_checkpoint, cfg.resolution)
    else:
        model = PatchCNN(cfg.resolution)
    model = model.to(device)
    factors: dict[str, float] = {}
    if cfg.rescale_target is not None and len(data.train_rows):
        rows = np.sort(np.random.default_rng(cfg.seed + 1).permutation(data.train_rows)[: cfg.rescale_images])
        batches = (to_input(data.crops[rows[i : i + 128]], cfg.resolution).to(device) for i in range(0, len(rows), 128))
        log(f"measuring HerPN input maxima on {len(rows)} crops for the exact rescale to {cfg.rescale_target}")
        maxima = channel_maxima(model, batches)
        factors = rescale_herpn_inputs(model, maxima, cfg.rescale_target)
        log("largest rescale factor per layer kind: " + ", ".join(f"{k}={v:.1f}" for k, v in factors.items()))
    return model, factors


def set_bn_mode(model: PatchCNN, cfg: TrainConfig) -> None:
    """Frozen: every BatchNorm uses (and keeps) its running statistics; train: batch statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            if cfg.bn_mode == "frozen":
                m.eval()
            else:
                m.momentum = cfg.bn_momentum


def lr_at(cfg: TrainConfig, step: int, total: int, frac: float | None = None) -> float:
    """Linear warm-up, then constant or cosine decay over ``total`` steps, or over ``frac`` (0..1) when given."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if not cfg.cosine_decay or (frac is None and total <= cfg.warmup_steps):
        return cfg.lr
    if frac is None:
        frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


# ----------------------------------------------------------------------------- evaluation helpers


def wild_evaluation(model: PatchCNN, data: Prepared, resolution: int, bootstrap: int = 0) -> dict[str, Any] | None:
    """:func:`cryptoface.eval.wild.wild_result` of the model on the in-the-wild validation crops (None without)."""
    rows = np.array(validation_rows(data.index), np.int64)
    rows = rows[rows < len(data.crops)]
    names, labels = np.unique([data.index.identity[i] for i in rows], return_inverse=True)
    if len(names) < MIN_IDENTITIES:
        return None  # too few for a FAR (smoke data): the training-pair figures stand in
    return wild_result(embed_rows(model, data.crops, rows, resolution), labels, bootstrap=bootstrap)


def wild_metrics(model: PatchCNN, data: Prepared, resolution: int) -> dict[str, float]:
    """EER and TAR@FAR on the in-the-wild validation identities (no bootstrap: a per-epoch figure for selection)."""
    res = wild_evaluation(model, data, resolution)
    if res is None:
        return {}
    return {"wild_eer": res["eer"], **{f"wild_tar_{far_key(f)}": res[f"tar_at_far_{far_key(f)}"] for f in FARS}}


@torch.no_grad()
def embed_rows(model: PatchCNN, crops: np.ndarray, rows: np.ndarray, resolution: int, batch: int = 128) -> np.ndarray:
    was, dev = model.training, model_device(model)
    model.eval()
    out = [
        model(to_input(crops[rows[i : i + batch]], resolution).to(dev)).double().cpu().numpy()
        for i in range(0, len(rows), batch)
    ]
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, 256))


def training_pairs_threshold(emb: np.ndarray, identities: list[str], seed: int = 0) -> dict[str, Any]:
    """Best global cosine threshold (accuracy) on balanced genuine / impostor pairs of labelled training faces."""
    from cryptoface.eval.metrics import best_threshold

    ids = np.array(identities, dtype=object)
    groups = [np.flatnonzero(ids == k) for k in sorted(set(identities)) if k]
    genuine = [(a, b) for g in groups for i, a in enumerate(g) for b in g[i + 1 :]]
    if not genuine:
        return {"threshold": None, "reason": "no identity with two images"}
    rng = np.random.default_rng(seed)
    labelled = np.concatenate(groups)
    imp: list[tuple[int, int]] = []
    while len(imp) < len(genuine):
        a, b = rng.choice(labelled, 2, replace=False)
        if ids[a] != ids[b]:
            imp.append((int(a), int(b)))
    pairs = np.array(genuine + imp)
    same = np.r_[np.ones(len(genuine), bool), np.zeros(len(imp), bool)]
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    scores = np.einsum("ij,ij->i", u[pairs[:, 0]], u[pairs[:, 1]])
    thr, acc = best_threshold(scores, same)
    return {
        "threshold": float(thr),
        "accuracy": float(acc),
        "genuine_pairs": len(genuine),
        "impostor_pairs": len(imp),
        "identities": sum(len(g) >= 2 for g in groups),
    }


# ----------------------------------------------------------------------------- training


def _checkpoint_state(model, heads, opt, epoch, step, history, cfg, extra) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "heads": {k: v.state_dict() for k, v in heads.items()},
        "optimizer": opt.state_dict(),
        "epoch": epoch,
        "step": step,
        "history": history,
        "config": cfg.to_dict(),
        "extra": extra,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run the configured training; returns a summary (also written to ``<out_dir>/summary.json``)."""
    out = Path(cfg.out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    log(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: pick the fastest convolution once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t_start = time.monotonic()
    data = prepare_data(cfg)
    log(f"data: {json.dumps({k: v for k, v in data.report.items() if k != 'identities_used'})}")
    (out / "data_report.json").write_text(json.dumps(data.report, indent=1))
    ckpt_path = out / CHECKPOINT
    resume_state = torch.load(ckpt_path, map_location="cpu", weights_only=False) if resume else None
    if resume and resume_state is None:
        raise FileNotFoundError(ckpt_path)
    if resume_state is not None:
        model = PatchCNN(cfg.resolution)
        model.load_state_dict(resume_state["model"])
        model = model.to(device)
        factors = resume_state["extra"].get("rescale_factors", {})
        init_state, best = resume_state["extra"].get("init_state"), resume_state["extra"].get("best")
    else:
        model, factors = build_model(cfg, data, device)
        init_state, best = cpu_state(model), None  # the exact-rescaled start: the blend's zero point
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    heads: dict[str, torch.nn.Module] = {"projection": Projection(256, data.teacher.shape[-1])}
    if cfg.w_margin > 0 and data.n_classes >= 2:
        heads["cosface"] = CosFace(256, data.n_classes, cfg.margin_scale, cfg.margin)
    for h in heads.values():
        h.to(device)
    head_params = [p for h in heads.values() for p in h.parameters()]
    params = list(model.parameters()) + head_params
    groups = [
        {"params": list(model.parameters()), "lr_mult": 1.0},
        {"params": head_params, "lr_mult": cfg.head_lr_mult, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch, step = 0, 0
    if resume_state is not None:
        for k, h in heads.items():
            h.load_state_dict(resume_state["heads"][k])
        opt.load_state_dict(resume_state["optimizer"])
        start_epoch, step, history = resume_state["epoch"], resume_state["step"], resume_state["history"]
        torch.set_rng_state(resume_state["rng"]["torch"])
        np.random.set_state(resume_state["rng"]["numpy"])
        random.setstate(resume_state["rng"]["python"])
        log(f"resumed from {ckpt_path} at epoch {start_epoch}, step {step}")
    check_selection(cfg, data, start_epoch, best)  # before any epoch: a bad choice must not cost training time
    penalty = RangePenalty(model, cfg.range_bound) if cfg.w_range > 0 else None
    forward = torch.compile(model) if cfg.compile else model
    epoch_size = len(data.train_rows) if cfg.epoch_size is None else min(cfg.epoch_size, len(data.train_rows))
    steps_per_epoch = max(1, epoch_size // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    # With schedule_minutes the run is sized by time, not steps: the cosine follows the training seconds
    # spent (summed over resumed runs), and the run ends when they reach the budget.
    budget_s = None if cfg.schedule_minutes is None else 60.0 * cfg.schedule_minutes
    spent_before = sum(h.get("seconds", 0.0) for h in history)
    teacher = torch.from_numpy(data.teacher).to(device)
    labels = torch.from_numpy(data.labels).to(device)
    # On a GPU the whole crop array (~0.9 GB for 24k crops) lives in device memory: no per-step copies.
    crops_dev = torch.from_numpy(np.asarray(data.crops)).to(device) if device.type == "cuda" else None
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.teacher_partial and epoch > start_epoch and data.report["with_teacher"] < data.report["crops"]:
            data = prepare_data(cfg)  # pick up teacher chunks cached since the last epoch
            teacher = torch.from_numpy(data.teacher).to(device)
            labels = torch.from_numpy(data.labels).to(device)
            log(f"data refreshed: {data.report['with_teacher']} crops with teacher, {len(data.train_rows)} train")
        if budget_s is not None and spent_before >= budget_s:
            break  # resumed after the budget was already spent
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        perm = np.random.default_rng(cfg.seed * 1000 + epoch).permutation(data.train_rows)
        order = perm[: steps_per_epoch * cfg.batch_size]
        set_bn_mode(model, cfg)
        for h in heads.values():
            h.train()
        sums: dict[str, torch.Tensor] = {}
        t_epoch = time.monotonic()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress)
        for b in bar:
            rows = np.sort(order[b * cfg.batch_size : (b + 1) * cfg.batch_size])
            rows_t = torch.from_numpy(rows).to(device)
            if crops_dev is not None:
                u8 = crops_dev[rows_t]
            else:
                u8 = torch.from_numpy(np.ascontiguousarray(data.crops[rows]))
            x01 = u8.permute(0, 3, 1, 2).float().div_(255.0)
            x01, flipped = augment(x01, cfg, gen)
            x = resize(x01, cfg.resolution)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            view = (flipped & (teacher.shape[1] > 1)).long()
            t_emb = teacher[rows_t, view]
            frac = None if budget_s is None else (spent_before + time.monotonic() - t_epoch) / budget_s
            lr = lr_at(cfg, step, total_steps, frac)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_mult"]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                if cfg.w_jigsaw > 0:
                    emb, jl, jt = model.forward_train(x)
                else:
                    emb = forward(x)
            emb = emb.float()
            losses: dict[str, torch.Tensor] = {}
            if cfg.w_relational > 0:
                losses["relational"] = relational_loss(emb, t_emb)
            if cfg.w_projection > 0:
                losses["projection"] = projection_loss(heads["projection"](emb), t_emb)
            if "cosface" in heads:
                lab = labels[rows_t]
                mask = lab >= 0
                if int(mask.sum()) > 0:
                    losses["margin"] = heads["cosface"](emb[mask], lab[mask])
            if cfg.w_jigsaw > 0:
                losses["jigsaw"] = jigsaw_loss(jl, jt)
            if penalty is not None:
                losses["range"] = torch.as_tensor(penalty.pop(), device=device)
            weights = {
                "relational": cfg.w_relational,
                "projection": cfg.w_projection,
                "margin": cfg.w_margin,
                "jigsaw": cfg.w_jigsaw,
                "range": cfg.w_range,
            }
            loss = sum(weights[k] * v for k, v in losses.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            for k, v in losses.items():
                sums[k] = sums[k] + v.detach() if k in sums else v.detach().clone()
            if cfg.progress and b % 20 == 0:  # reading a GPU value waits for the GPU: not every step
                bar.set_postfix({k: f"{float(v) / (b + 1):.4f}" for k, v in sums.items()})
            if cfg.time_limit_minutes is not None and time.monotonic() - t_start > 60 * cfg.time_limit_minutes:
                stopped_early = True
                break
            if budget_s is not None and spent_before + time.monotonic() - t_epoch >= budget_s:
                break
        n_done = b + 1
        rec: dict[str, Any] = {
            "epoch": epoch + 1,
            "steps": n_done,
            "seconds": round(time.monotonic() - t_epoch, 1),
            "images_per_s": round(n_done * cfg.batch_size / max(1e-9, time.monotonic() - t_epoch), 2),
            **{k: float(v) / n_done for k, v in sums.items()},
        }
        if penalty is not None:
            rec["herpn_max_train"] = penalty.max_seen()
            penalty.maxima.clear()
        with penalty.paused() if penalty is not None else contextlib.nullcontext():  # evaluation, not training
            if cfg.exclude_wild:
                rec.update(wild_metrics(model, data, cfg.resolution))
            if len(data.val_rows):
                ve = embed_rows(model, data.crops, data.val_rows, cfg.resolution)
                vt = data.teacher[data.val_rows, 0]
                rec["val_relational"] = float(relational_loss(torch.from_numpy(ve), torch.from_numpy(vt)))
                held = set(data.report.get("holdout_identities", []))
                if held:
                    keep = np.array([data.index.identity[i] in held for i in data.val_rows])
                    pairs = training_pairs_threshold(ve[keep], [data.index.identity[i] for i in data.val_rows[keep]])
                    rec["val_pair_accuracy"] = pairs["accuracy"]
        history.append(rec)
        spent_before += rec["seconds"]
        log(f"epoch {epoch + 1}: {json.dumps(rec)}")
        with open(out / "history.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        best = track_best(cfg.select_by, rec, model, best)
        extra = {"rescale_factors": factors, "data": data.report, "init_state": init_state, "best": best}
        state = _checkpoint_state(model, heads, opt, epoch + 1, step, history, cfg, extra)
        tmp = out / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, ckpt_path)
        if stopped_early:
            log(f"time limit of {cfg.time_limit_minutes} min reached; stopping after a checkpoint")
            break
        if budget_s is not None and spent_before >= budget_s:
            log(f"schedule of {cfg.schedule_minutes} training minutes done after epoch {epoch + 1}")
            break
    if penalty is not None:
        penalty.remove()
    choice = export_weights(model, cfg, init_state, best)
    if cfg.export_rescale_target is not None:
        choice["rescale"] = final_rescale(model, cfg, data, device)
    path = export(model, cfg, data, history, factors, out / cfg.export_name, choice)
    summary = {
        "export": str(path),
        "history": history,
        "data": data.report,
        "stopped_early": stopped_early,
        "minutes": round((time.monotonic() - t_start) / 60, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model``'s state dict (weights and BatchNorm buffers)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def check_selection(cfg: TrainConfig, data: Prepared, start_epoch: int, best: dict | None) -> None:
    """ConfigError unless ``select_by`` is logged by this run and was tracked over every epoch already done."""
    if cfg.select_by is None:
        return
    if start_epoch > 0 and (best is None or best["key"] != cfg.select_by or best.get("through") != start_epoch):
        tracked = "nothing" if best is None else f"{best['key']!r} through epoch {best.get('through')}"
        raise ConfigError(f"select_by = {cfg.select_by!r} was not tracked over the {start_epoch} epoch(s) of this "
                          f"checkpoint (it tracked {tracked}; earlier epochs' weights are gone): set it before "
                          "training, or train again")
    available = {"val_relational": len(data.val_rows) > 0, "val_pair_accuracy": bool(data.report.get(
        "holdout_identities"))}
    rows = [i for i in validation_rows(data.index) if i < len(data.crops)]
    wild = cfg.exclude_wild and len({data.index.identity[i] for i in rows}) >= MIN_IDENTITIES
    available.update({k: wild for k in SELECTABLE if k.startswith("wild_")})
    if not available[cfg.select_by]:
        raise ConfigError(f"select_by = {cfg.select_by!r} is not logged by this run (in-the-wild figures need "
                          f"exclude_wild and {MIN_IDENTITIES} validation identities, val_relational a hold-out, "
                          "val_pair_accuracy holdout_identities)")


def track_best(select_by: str | None, rec: dict[str, Any], model: PatchCNN, best: dict | None) -> dict | None:
    """The epoch to export under ``select_by`` (the best by its direction in SELECTABLE, the earlier on a tie),
    with its weights; ``through`` is the last epoch compared. Untracked epochs leave ``best`` as it was."""
    if select_by is None:
        return best
    if select_by not in rec:
        raise ConfigError(f"select_by = {select_by!r} is not logged by this run; the epoch logs {sorted(rec)}")
    score = SELECTABLE[select_by] * rec[select_by]
    if best is None or best["key"] != select_by or score > best["score"]:
        best = {"epoch": rec["epoch"], "key": select_by, "value": rec[select_by], "score": score,
                "state": cpu_state(model)}
    return {**best, "through": rec["epoch"]}


def blend_states(init: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], blend: float) -> dict:
    """``init + blend * (trained - init)`` for every floating-point tensor; counters are taken from ``trained``.

    Weight-space interpolation between the exact-rescaled start and the fine-tuned weights (WiSE-FT): both
    share the start's parametrisation (same rescale, BatchNorm frozen), so the line between them stays a
    model that knows what the start knew, moved part of the way toward the teacher.
    """
    if init.keys() != trained.keys():
        raise CryptoFaceError("the starting and trained weights have different layers; cannot blend them")
    return {
        k: (init[k] + blend * (v - init[k]) if v.is_floating_point() else v) for k, v in trained.items()
    }


def export_weights(model: PatchCNN, cfg: TrainConfig, init_state: dict | None, best: dict | None) -> dict[str, Any]:
    """Load the weights to export into ``model`` (the selected epoch, blended); returns how they were chosen."""
    if cfg.select_by is None:
        best = None  # the last epoch, whatever the checkpoint tracked (check_selection vetted the other case)
    trained = best["state"] if best is not None else cpu_state(model)
    epoch = best["epoch"] if best is not None else None
    if cfg.blend != 1.0:
        if init_state is None:
            raise ConfigError("blend < 1 needs the starting weights, which this checkpoint does not hold "
                              "(it predates them); train again")
        trained = blend_states(init_state, trained, cfg.blend)
    model.load_state_dict(trained)
    return {"selected_epoch": epoch, "select_by": cfg.select_by,
            "selected_value": best["value"] if best is not None else None, "blend": cfg.blend}


def final_rescale(model: PatchCNN, cfg: TrainConfig, data: Prepared, device: torch.device) -> dict[str, Any]:
    """Rescale (exactly) every HerPN input channel whose max over all usable training crops exceeds
    ``export_rescale_target``; the exported function is unchanged, only its CKKS ranges shrink."""
    rows = np.sort(np.concatenate([data.train_rows, data.val_rows]))
    batches = (to_input(data.crops[rows[i : i + 256]], cfg.resolution).to(device) for i in range(0, len(rows), 256))
    maxima = channel_maxima(model, batches)
    before = max(float(m.max()) for m in maxima.values())
    factors = rescale_herpn_inputs(model, maxima, cfg.export_rescale_target)
    log(f"export rescale of every HerPN input channel above {cfg.export_rescale_target} on {len(rows)} crops "
        f"(max |HerPN input| there {before:.1f}); largest factor {max(factors.values()):.2f}")
    return {"target": cfg.export_rescale_target, "images": len(rows), "max_before": before,
            "largest_factor": max(factors.values())}


def lfw_metrics(model: PatchCNN, cfg: TrainConfig) -> dict[str, float] | None:
    """LFW 10-fold accuracy, EER and TAR@FAR of ``model`` (torch forward on the cached aligned crops), or None
    without ``lfw_dir``: every run reports LFW beside the in-the-wild validation."""
    if not cfg.lfw_dir:
        return None
    if not (Path(cfg.lfw_dir) / "pairs.txt").is_file():  # e.g. a pack run on a machine without the data
        log(f"no {Path(cfg.lfw_dir) / 'pairs.txt'}: LFW figures skipped at export")
        return None
    from cryptoface.eval import lfw as lfw_eval
    from cryptoface.eval.embedders import cosine_scores

    pairs = lfw_eval.read_pairs(Path(cfg.lfw_dir) / "pairs.txt")
    names = sorted(set(pairs.left) | set(pairs.right))
    crops, _ = lfw_eval.aligned_crops(cfg.lfw_dir, names, cfg.cache_dir, cfg.progress)
    emb = embed_rows(model, np.stack([crops[n] for n in names]), np.arange(len(names)), cfg.resolution)
    feats = dict(zip(names, emb, strict=True))
    res = lfw_eval.summarize(
        cosine_scores(np.stack([feats[n] for n in pairs.left]), np.stack([feats[n] for n in pairs.right])),
        pairs.same, pairs.fold,
    )
    return {k: float(res[k]) for k in ("accuracy", "accuracy_std", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3")}


def model_statistics(model: PatchCNN, data: Prepared, resolution: int, max_images: int | None = None) -> dict:
    """norm_stats (||t||^2 on training faces) and the training-pair threshold of an eval-mode model."""
    rows = data.train_rows if max_images is None else data.train_rows[:max_images]
    emb = embed_rows(model, data.crops, rows, resolution)
    bad = int((~np.isfinite(emb).all(axis=1)).sum())
    if bad:
        raise TrainingDivergedError(
            f"the trained model gives non-finite embeddings for {bad} of {len(rows)} training crops in eval mode "
            "(BatchNorm running statistics or weights diverged); nothing exported. Resume from an earlier "
            "checkpoint with a lower lr, or use bn_mode = 'frozen'"
        )
    # the shipped rule: tau for DEFAULT_FAR on the in-the-wild validation impostors, when training left them out;
    # else the accuracy-optimal tau on training pairs
    wild = wild_evaluation(model, data, resolution, bootstrap=BOOTSTRAP) if data.report.get("wild_validation_crops") \
        else None
    if wild is not None:
        thr = calibration(wild, DEFAULT_FAR)
    else:
        labelled = np.array([bool(data.index.identity[i]) for i in data.train_rows])
        lab_rows = data.train_rows[labelled]
        # Only identities with >= 2 images give genuine pairs (CelebA); embed those crops.
        lab_emb = embed_rows(model, data.crops, lab_rows, resolution)
        thr = training_pairs_threshold(lab_emb, [data.index.identity[i] for i in lab_rows])
    return {"norm_stats": {**squared_norm_stats(emb), "faces": "training crops"}, "threshold": thr}


def export(model: PatchCNN, cfg: TrainConfig, data: Prepared, history, factors, path: Path,
           choice: dict[str, Any] | None = None) -> Path:
    """Fuse ``model`` (eval mode, float64) and write it with the recipe and statistics as metadata."""
    model = model.to(memory_format=torch.contiguous_format).eval()
    stats = model_statistics(model, data, cfg.resolution, cfg.stats_images)  # on the training device
    lfw = lfw_metrics(model, cfg)
    thr = stats["threshold"]
    log("export: " + json.dumps({**(choice or {}), "lfw": lfw, "wild_eer": thr.get("eer"),
                                 "wild_tar": thr.get("tar"), "wild_tar_ci95": thr.get("tar_ci95")}))
    model = model.cpu()
    fused = fuse(model.double())
    model.float()
    meta = dict(fused.metadata)
    meta.update(
        {
            "source": {
                "description": "cryptoface train: distilled from OpenCV SFace on the faces-train crops",
                "init": cfg.init,
                "init_credit": (
                    "CryptoFace authors' released CryptoFaceNet4 (Ao & Boddeti, CVPR 2025), WebFace4M "
                    "non-commercial research terms"
                    if cfg.init == "paper"
                    else None
                ),
                "license": "derived weights: non-commercial research (CelebA, UTKFace, WebFace4M terms)",
            },
            "training": {
                "config": cfg.to_dict(),
                "history": history,
                "exported": choice or {},
                "rescale_factors": factors,
                "data": {k: v for k, v in data.report.items() if k != "identities_used"},
            },
            "norm_stats": stats["norm_stats"],
            "lfw": lfw,
            "threshold": stats["threshold"]["threshold"],
            "threshold_detail": stats["threshold"],
            "parameters": model.inference_parameter_count(),
            "activation_bound": None,  # set only after `cryptoface ranges` verified it on real faces
        }
    )
    from cryptoface.model.fused import FusedModel

    fm = FusedModel(fused.architecture, fused.resolution, fused.patches, fused.bias, meta)
    out = save_model(fm, path)
    log(f"exported {out}")
    return out

"""Training configuration: a flat JSON file (``configs/*.json``) mapped onto :class:`TrainConfig`.

JSON keeps the project free of a YAML dependency; unknown keys are an error so a typo never silently
falls back to a default. Relative paths are resolved against the current directory (run from the
repository root, as the README's commands do). ``--set key=value`` on the command line overrides a key
(value parsed as JSON, else taken as a string).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptoface.errors import CryptoFaceError


class ConfigError(CryptoFaceError):
    """A training config file is missing, malformed or names an unknown key."""


# Per-epoch figures an export can be chosen by, and their direction (+1: higher is better).
SELECTABLE = {"wild_tar_1e-3": 1, "wild_tar_1e-2": 1, "wild_eer": -1, "val_relational": -1,
              "val_pair_accuracy": 1}


@dataclass
class TrainConfig:
    # data
    train_dir: str = "../shared/data/faces-train"
    lfw_dir: str | None = "../shared/data/lfw"  # for the LFW guard (and optional LFW monitoring)
    cache_dir: str | None = None  # default $CRYPTOFACE_CACHE or ~/.cache/cryptoface
    pack: str | None = None  # train from a training pack (`cryptoface train --make-pack`) instead of the folder
    limit: int | None = None  # use only the first N crops (smoke runs)
    holdout: float = 0.02  # fraction of crops kept out of training to report validation losses
    holdout_identities: int = 0  # labelled identities kept entirely out of training: held-out pair accuracy
    exclude_wild: bool = True  # keep the in-the-wild validation identities (cryptoface.eval.wild) out of training
    teacher: str = "sface"  # "sface" or "random" (tests)
    teacher_views: int = 2  # 2: original + flipped crop embedded by the teacher; 1: original only
    teacher_partial: bool = False  # train on the crops whose teacher chunk is cached (cache filling elsewhere)
    guard_threshold: float = 0.45  # drop crops whose teacher cosine to any LFW pair photo is >= this
    guard_identity_threshold: float = 0.5  # drop labelled identities whose mean embedding matches an LFW name
    # model
    resolution: int = 64
    init: str = "paper"  # "paper" or "scratch"
    paper_checkpoint: str = "../shared/models/cryptofacenet4-64x64-paper.ckpt"
    rescale_target: float | None = 48.0  # exact per-channel rescale of HerPN inputs at init (None: off)
    rescale_images: int = 1024  # training crops used to measure the per-channel maxima
    bn_mode: str = "frozen"  # "frozen": BatchNorms use running stats (eval behaviour); "train": batch stats
    bn_momentum: float = 0.01  # running-stat momentum when bn_mode == "train"
    # losses
    w_relational: float = 1.0  # MSE between student and teacher in-batch cosine-similarity matrices
    w_projection: float = 1.0  # 1 - cos(P student, teacher), P a learned 256 -> 128 linear map
    w_margin: float = 0.0  # CosFace on labelled identities (>= 2 images)
    margin: float = 0.35
    margin_scale: float = 32.0
    w_jigsaw: float = 0.0
    w_range: float = 1.0  # mean(relu(|x| - range_bound)^2) per HerPN input, summed over HerPNs
    range_bound: float = 64.0
    # augmentation (flip uses the teacher's flipped embedding)
    flip: bool = True
    color_jitter: float = 0.0  # max relative brightness/contrast change, e.g. 0.1
    scale_jitter: float = 0.0  # max relative zoom, e.g. 0.05
    shift_jitter: float = 0.0  # max shift in pixels of the 112 crop, e.g. 3
    # optimisation
    seed: int = 0
    epochs: int = 1
    epoch_size: int | None = None  # samples per "epoch" (checkpoint interval); None: the whole training split
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" or "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    head_lr_mult: float = 1.0  # learning-rate multiplier of the training-only heads (projection, CosFace)
    warmup_steps: int = 20
    cosine_decay: bool = True
    grad_clip: float = 5.0
    threads: int = 2
    device: str = "cpu"  # "cpu", "cuda" or "auto" (cuda when available)
    compile: bool = False
    bf16: bool = False
    channels_last: bool = False
    time_limit_minutes: float | None = None  # stop (after a checkpoint) when exceeded
    # export: the epoch whose history value of select_by is highest (None: the last epoch), then
    # init + blend * (trained - init) in weight space (1: the trained weights; 0: the exact-rescaled start)
    select_by: str | None = None  # one of SELECTABLE, e.g. "wild_tar_1e-3"; set from the first epoch on
    blend: float = 1.0
    # exact rescale again before export, measured on every crop training may use (not a sample): training moves
    # the ranges, and a 512-crop sample misses the tails of some channels (None: off)
    export_rescale_target: float | None = None
    schedule_minutes: float | None = None  # size the run by training time: cosine over it, end when spent
    stats_images: int | None = 4096  # training crops for norm_stats at export (None: all)
    # output
    out_dir: str = "~/.cache/cryptoface/runs/default"
    export_name: str = "model.npz"
    progress: bool = True
    notes: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        if self.init not in ("paper", "scratch"):
            raise ConfigError(f"init must be 'paper' or 'scratch', got {self.init!r}")
        if self.teacher not in ("sface", "random"):
            raise ConfigError(f"teacher must be 'sface' or 'random', got {self.teacher!r}")
        if self.bn_mode not in ("frozen", "train"):
            raise ConfigError(f"bn_mode must be 'frozen' or 'train', got {self.bn_mode!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2 (the relational loss compares pairs in a batch)")
        if self.teacher_partial and self.w_margin > 0:
            raise ConfigError(
                "w_margin > 0 needs a complete teacher cache (teacher_partial = false): classes must not change"
            )
        if self.teacher_views not in (1, 2):
            raise ConfigError("teacher_views must be 1 or 2")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if self.epochs < 0:
            raise ConfigError("epochs must be >= 0")
        if self.select_by is not None and self.select_by not in SELECTABLE:
            raise ConfigError(f"select_by must be one of {sorted(SELECTABLE)} or null, got {self.select_by!r}")
        if self.export_rescale_target is not None and not self.export_rescale_target > 0:
            raise ConfigError(f"export_rescale_target must be positive, got {self.export_rescale_target}")
        if not 0.0 <= self.blend <= 1.0:
            raise ConfigError(f"blend must be in [0, 1] (0: the starting weights, 1: trained), got {self.blend}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> TrainConfig:
    """Read a JSON config, apply ``key=value`` overrides, validate."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config {p} not found")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a JSON object")
    data.pop("_comment", None)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        data[key.strip()] = _parse_value(value)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{p}: unknown keys {unknown}; known: {sorted(known)}")
    return TrainConfig(**data).validate()

"""Prepared model folders: the fused model plus everything the engine would otherwise rebuild in every server
process before its first inference, written once (``cryptoface prepare-model``) and loaded quickly.

What a server process rebuilds without one (the evaluator and :func:`cryptoface.engine.plan_for`): the plan
(layouts, BSGS splits, rotation keys), the weight-free conv structure of every conv output ciphertext (cached
per plan after the first inference) and, on every inference, the weighted diagonals of pool+head (a dense
(diagonals, slots) matrix). The folder holds them as arrays, so the engine starts from loaded state that is
bit-identical to what it would compute.

Folder layout (format 1)::

    manifest.json   format, kind, CryptoFace version, model id / sha256 / resolution, CKKS parameters and
                    their id (the store's params_fingerprint), backend named at preparation (informative: the
                    plan depends on slots and levels only), a plan summary, and each file's size and sha256
    model.npz       the fused model file, byte for byte as given
    plan.json       the plan's scalars: layers, terms, splits, counts, level schedule (layout arrays: arrays.npz)
    arrays.npz      layouts (``layout/<name>/{ct,base,pos}``), conv structures
                    (``structure/<layer>/<j>/<field>``) and pool+head diagonals (``diagonal/<layer>/<j>/...``)

No pickle anywhere: JSON, and ``.npz`` read with ``allow_pickle=False``. Loading checks the format, the file
sizes and the model's sha256 (the zip members carry their own CRC-32); ``verify=True`` also hashes the other
files. The plan follows the engine code that prepared it: prepare the folder again after upgrading CryptoFace
(the manifest records the version, and a load under another version is refused).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from cryptoface.backends.protocol import CkksBackend, CkksParameters
from cryptoface.engine import layout as lay
from cryptoface.engine import plan_for
from cryptoface.engine.evaluator import EncryptedModel, EngineCaches, weighted_terms
from cryptoface.engine.linear import (
    BsgsSplit,
    ConvStructure,
    ConvTerm,
    DenseDiagonals,
    Diagonals,
    LayerCount,
    PoolHeadTerm,
    conv_structure,
)
from cryptoface.engine.plan import Plan, PlanLayer, layer_diagonals
from cryptoface.errors import CryptoFaceError, MissingKeyError, ModelFileError
from cryptoface.model.file import load_model
from cryptoface.model.fused import FusedModel
from cryptoface.params import params_from_json, params_to_json

ARTEFACT_FORMAT = 1
ARTEFACT_KIND = "cryptoface-prepared-model"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.npz"
PLAN_FILE = "plan.json"
ARRAYS_FILE = "arrays.npz"
_STRUCTURE_FIELDS = tuple(f.name for f in fields(ConvStructure))
_COUNT_FIELDS = ("diagonals", "baby_rotations", "hoist_groups", "giant_rotations", "pre_rotations", "babies_hoisted")


class ArtefactError(ModelFileError):
    """A prepared model folder is missing, incomplete, of another format or CryptoFace version, or does not
    fit the backend it is used with."""


@dataclass(frozen=True)
class ArtefactManifest:
    """The manifest of a prepared model folder (``manifest.json``)."""

    format: int
    cryptoface: str
    model_id: str
    model_sha256: str
    architecture: str
    resolution: int
    params: CkksParameters
    params_id: str
    backend: str | None
    plan: Mapping[str, Any]
    files: Mapping[str, Mapping[str, Any]]  # name -> {"size": int, "sha256": str}

    def to_json(self) -> str:
        return json.dumps({
            "format": self.format, "kind": ARTEFACT_KIND, "cryptoface": self.cryptoface,
            "model": {"id": self.model_id, "sha256": self.model_sha256, "architecture": self.architecture,
                      "resolution": self.resolution},
            "params": json.loads(params_to_json(self.params)), "params_id": self.params_id,
            "backend": self.backend, "plan": dict(self.plan), "files": {k: dict(v) for k, v in self.files.items()},
        }, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: Path) -> ArtefactManifest:
        """Parse ``manifest.json``; ArtefactError names what is wrong."""
        try:
            raw = json.loads(text)
            if raw.get("kind") != ARTEFACT_KIND:
                raise ArtefactError(f"{where} is not a prepared model manifest (kind {raw.get('kind')!r})")
            if raw.get("format") != ARTEFACT_FORMAT:
                raise ArtefactError(f"{where}: prepared model format {raw.get('format')!r}, this CryptoFace reads "
                                    f"{ARTEFACT_FORMAT}; run 'cryptoface prepare-model' again")
            model = raw["model"]
            return cls(ARTEFACT_FORMAT, str(raw["cryptoface"]), str(model["id"]), str(model["sha256"]),
                       str(model["architecture"]), int(model["resolution"]),
                       params_from_json(json.dumps(raw["params"])), str(raw["params_id"]),
                       None if raw["backend"] is None else str(raw["backend"]), dict(raw["plan"]),
                       {str(k): {"size": int(v["size"]), "sha256": str(v["sha256"])} for k, v in raw["files"].items()})
        except ArtefactError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, CryptoFaceError) as exc:
            raise ArtefactError(f"{where} is not a readable prepared model manifest ({exc}); "
                                "run 'cryptoface prepare-model' again") from exc


@dataclass
class PreparedModel:
    """A loaded prepared folder: the model, its plan and the engine caches, ready for :meth:`engine`."""

    root: Path
    manifest: ArtefactManifest
    model: FusedModel
    plan: Plan
    caches: EngineCaches

    def check_backend(self, backend: CkksBackend) -> None:
        """ArtefactError unless ``backend`` has the parameters the folder was prepared for; MissingKeyError
        when its keys lack a rotation the plan needs (keys made for another plan)."""
        mine = _params_id(backend.params)
        if mine != self.manifest.params_id:
            raise ArtefactError(f"{self.root} was prepared for CKKS parameters {self.manifest.params_id}, the "
                                f"backend has {mine}; run 'cryptoface prepare-model --params ...' for these keys")
        have = getattr(backend, "rotation_steps", None)
        missing = self.plan.rotation_keys - have() if have is not None else frozenset()
        if missing:
            raise MissingKeyError(f"the backend's keys lack {len(missing)} rotation(s) the prepared plan needs "
                                  f"(e.g. {sorted(missing)[:4]}); keys and folder come from different versions")

    def engine(self, backend: CkksBackend, *, workers: int | None = None) -> EncryptedModel:
        """The encrypted model on ``backend`` starting from the prepared plan and caches."""
        self.check_backend(backend)
        return EncryptedModel(self.model, backend, self.plan, workers=workers, caches=self.caches)

    def infer(self, backend: CkksBackend, cts: Sequence[Any], *, workers: int | None = None,
              progress: bool = False) -> tuple[Any, lay.TemplateLayout | lay.PlanarLayout]:
        """Server side: the encrypted output and its layout (as :func:`cryptoface.engine.infer_template`)."""
        return self.engine(backend, workers=workers).infer(cts, progress=progress)


# -- preparing -------------------------------------------------------------------------------------------
def prepare_model(
    model_path: str | os.PathLike[str],
    params: CkksParameters,
    out_dir: str | os.PathLike[str],
    *,
    backend: str | None = None,
) -> ArtefactManifest:
    """Write the prepared folder for the model file at ``model_path`` under ``params``; returns its manifest.

    The manifest is replaced last, so an interrupted run leaves no loadable half-written folder."""
    source = Path(model_path)
    model = load_model(source)
    plan = plan_for(model.resolution, params.slots, params.levels)
    caches = build_caches(model, plan)
    plan_json, arrays = plan_to_json(plan)
    arrays.update(caches_to_arrays(caches))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    _atomic(out / MODEL_FILE, lambda f: _copy_into(source, f))
    _atomic(out / PLAN_FILE, lambda f: f.write(json.dumps(plan_json, sort_keys=True).encode()))
    _atomic(out / ARRAYS_FILE, lambda f: np.savez(f, **arrays))
    files = {name: {"size": (out / name).stat().st_size, "sha256": _sha256(out / name)}
             for name in (MODEL_FILE, PLAN_FILE, ARRAYS_FILE)}
    sha = files[MODEL_FILE]["sha256"]
    manifest = ArtefactManifest(
        ARTEFACT_FORMAT, _version(), f"{model.architecture}-{model.resolution}-{sha[:12]}", sha,
        model.architecture, model.resolution, params, _params_id(params), backend,
        {"family": plan.family, "key_mode": plan.key_mode, "slots": plan.slots, "start_level": plan.start_level,
         "end_level": plan.end_level, "layers": len(plan.layers), "rotation_keys": len(plan.rotation_keys)},
        files)
    _atomic(out / MANIFEST_FILE, lambda f: f.write(manifest.to_json().encode()))
    return manifest


def build_caches(model: FusedModel, plan: Plan) -> EngineCaches:
    """Exactly what the evaluator computes for ``plan``: conv structures and weighted pool+head diagonals."""
    structures: dict[str, list[ConvStructure]] = {}
    diagonals: dict[str, list[Diagonals]] = {}
    for layer in plan.layers:
        if layer.kind != "linear":
            continue
        if isinstance(layer.out_layout, lay.TemplateLayout):
            wlayer = replace(layer, terms=weighted_terms(model, layer))
            diagonals[layer.name] = layer_diagonals(wlayer, plan.slots, with_weights=True)
        else:
            structures[layer.name] = [
                conv_structure(layer.terms, layer.in_layouts, layer.in_ct_offsets, layer.out_layout, j)
                for j in range(layer.out_layout.n_cts)]
    return EngineCaches(structures, diagonals)


# -- loading ---------------------------------------------------------------------------------------------
def read_manifest(out_dir: str | os.PathLike[str]) -> ArtefactManifest:
    """The manifest of a prepared folder (ArtefactError when there is none)."""
    path = Path(out_dir) / MANIFEST_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise ArtefactError(f"no prepared model in {Path(out_dir)} ({exc.strerror}); run 'cryptoface "
                            f"prepare-model --out {Path(out_dir)}' first") from exc
    return ArtefactManifest.from_json(text, path)


def load_prepared(out_dir: str | os.PathLike[str], *, verify: bool = False) -> tuple[FusedModel, PreparedModel]:
    """(model, prepared plan and caches) from a folder written by :func:`prepare_model`.

    Checks format, version, file sizes and the model's sha256; ``verify`` also hashes plan and arrays."""
    root = Path(out_dir)
    manifest = read_manifest(root)
    if manifest.cryptoface != _version():
        raise ArtefactError(f"{root} was prepared by CryptoFace {manifest.cryptoface}, this is {_version()}; "
                            "run 'cryptoface prepare-model' again")
    for name in (MODEL_FILE, PLAN_FILE, ARRAYS_FILE):
        entry = manifest.files.get(name)
        path = root / name
        if entry is None or not path.is_file() or path.stat().st_size != entry["size"]:
            raise ArtefactError(f"{path} is missing or not the file the manifest lists; prepare the folder again")
        if (verify or name == MODEL_FILE) and _sha256(path) != entry["sha256"]:
            raise ArtefactError(f"{path} does not match its sha256 in the manifest; prepare the folder again")
    model = load_model(root / MODEL_FILE)
    try:
        plan_json = json.loads((root / PLAN_FILE).read_text())
        with np.load(root / ARRAYS_FILE, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        plan = plan_from_json(plan_json, arrays)
        caches = caches_from_arrays(plan, arrays)
    except ArtefactError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, EOFError,
            zipfile.BadZipFile) as exc:  # a damaged member fails its zip CRC-32
        raise ArtefactError(f"{root} holds an unreadable plan or arrays ({exc}); prepare the folder again") from exc
    if plan.resolution != model.resolution or plan.slots != manifest.params.slots:
        raise ArtefactError(f"{root}: the plan does not fit the model or parameters; prepare the folder again")
    return model, PreparedModel(root, manifest, model, plan, caches)


# -- plan <-> JSON + arrays ------------------------------------------------------------------------------
def plan_to_json(plan: Plan) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The plan's scalars as JSON and its layouts' arrays (weights are not part of a plan)."""
    names = {id(v): k for k, v in plan.layouts.items()}
    arrays: dict[str, np.ndarray] = {}
    layouts = {}
    for key, lo in plan.layouts.items():
        layouts[key] = {"name": lo.name, "shape": list(lo.shape), "slots": lo.slots, "n_cts": lo.n_cts}
        for part in ("ct", "base", "pos"):
            arrays[f"layout/{key}/{part}"] = getattr(lo, part)

    def layout_ref(lo: Any) -> Any:
        if isinstance(lo, lay.TemplateLayout):
            return {"template": _template_json(lo)}
        if id(lo) not in names:
            raise ValueError(f"a layer's layout {lo.name!r} is not one of the plan's layouts")
        return names[id(lo)]

    layers = [{
        "name": ly.name, "kind": ly.kind, "weights": list(ly.weights), "level_in": ly.level_in,
        "level_out": ly.level_out, "in_layouts": [layout_ref(x) for x in ly.in_layouts],
        "out_layout": layout_ref(ly.out_layout), "terms": [_term_json(t) for t in ly.terms],
        "in_ct_offsets": list(ly.in_ct_offsets),
        "split": None if ly.split is None else {"n1": ly.split.n1, "centered": ly.split.centered},
        "count": None if ly.count is None else {**{f: getattr(ly.count, f) for f in _COUNT_FIELDS},
                                                 "keys": sorted(ly.count.keys)},
        "pre_steps": list(ly.pre_steps), "post_steps": list(ly.post_steps), "cost": ly.cost, "out_cts": ly.out_cts,
    } for ly in plan.layers]
    return {"family": plan.family, "key_mode": plan.key_mode, "resolution": plan.resolution,
            "n_patches": plan.n_patches, "slots": plan.slots, "layouts": layouts,
            "template": None if plan.template is None else _template_json(plan.template), "layers": layers,
            "start_level": plan.start_level, "end_level": plan.end_level, "rotation_keys": sorted(plan.rotation_keys),
            "clear_tail": plan.clear_tail}, arrays


def plan_from_json(raw: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Plan:
    """Inverse of :func:`plan_to_json` (layers share layout objects as a built plan does)."""
    layouts = {key: lay.PlanarLayout(str(v["name"]), tuple(int(s) for s in v["shape"]), int(v["slots"]),
                                     int(v["n_cts"]), *(arrays[f"layout/{key}/{p}"] for p in ("ct", "base", "pos")))
               for key, v in raw["layouts"].items()}

    def layout_of(ref: Any) -> Any:
        return lay.TemplateLayout(**ref["template"]) if isinstance(ref, dict) else layouts[ref]

    layers = []
    for ly in raw["layers"]:
        count = None
        if ly["count"] is not None:
            count = LayerCount(**{f: ly["count"][f] for f in _COUNT_FIELDS}, keys=set(ly["count"]["keys"]))
        layers.append(PlanLayer(
            ly["name"], ly["kind"], tuple(ly["weights"]), int(ly["level_in"]), int(ly["level_out"]),
            tuple(layout_of(x) for x in ly["in_layouts"]), layout_of(ly["out_layout"]),
            tuple(_term_from_json(t) for t in ly["terms"]), tuple(int(o) for o in ly["in_ct_offsets"]),
            None if ly["split"] is None else BsgsSplit(int(ly["split"]["n1"]), bool(ly["split"]["centered"])),
            count, tuple(ly["pre_steps"]), tuple(ly["post_steps"]), float(ly["cost"]), int(ly["out_cts"])))
    return Plan(str(raw["family"]), str(raw["key_mode"]), int(raw["resolution"]), int(raw["n_patches"]),
                int(raw["slots"]), layouts, None if raw["template"] is None else lay.TemplateLayout(**raw["template"]),
                layers, int(raw["start_level"]), int(raw["end_level"]), frozenset(int(k) for k in raw["rotation_keys"]),
                clear_tail=bool(raw.get("clear_tail", False)))


def _template_json(t: lay.TemplateLayout) -> dict[str, Any]:
    return {"stride": t.stride, "replicas": t.replicas, "scale": t.scale}


def _term_json(term: Any) -> dict[str, Any]:
    if isinstance(term, ConvTerm):
        return {"type": "conv", "source": term.source, "kernel": term.kernel, "stride": term.stride,
                "pad": term.pad, "c_out": term.c_out, "c_in": term.c_in, "channel_diagonal": term.channel_diagonal}
    return {"type": "pool_head", "source": term.source, "window": term.window, "dim": term.dim,
            "pre_steps": list(term.pre_steps)}


def _term_from_json(raw: Mapping[str, Any]) -> ConvTerm | PoolHeadTerm:
    body = {k: v for k, v in raw.items() if k != "type"}
    if raw["type"] == "conv":
        return ConvTerm(**body)
    if raw["type"] == "pool_head":
        return PoolHeadTerm(**{**body, "pre_steps": tuple(body["pre_steps"])})
    raise ArtefactError(f"unknown plan term type {raw['type']!r}; prepare the folder again")


# -- caches <-> arrays -----------------------------------------------------------------------------------
def caches_to_arrays(caches: EngineCaches) -> dict[str, np.ndarray]:
    """``structure/<layer>/<j>/<field>`` and ``diagonal/<layer>/<j>/<part>`` arrays of the caches."""
    out: dict[str, np.ndarray] = {}
    for name, sts in caches.structures.items():
        for j, st in enumerate(sts):
            for f in _STRUCTURE_FIELDS:
                out[f"structure/{name}/{j}/{f}"] = getattr(st, f)
    for name, diags in caches.diagonals.items():
        for j, d in enumerate(diags):
            pre = f"diagonal/{name}/{j}/"
            out[pre + "in_ct"], out[pre + "offset"] = d.in_ct, d.offset
            if isinstance(d, DenseDiagonals):
                out[pre + "dense"] = d.dense
            else:
                for i, part in enumerate(d.entries):
                    out[pre + f"entries{i}"] = part
                out[pre + "bounds"] = d._bounds
    return out


def caches_from_arrays(plan: Plan, arrays: Mapping[str, np.ndarray]) -> EngineCaches:
    """The caches of every linear layer of ``plan`` from :func:`caches_to_arrays`' arrays."""
    structures: dict[str, list[ConvStructure]] = {}
    diagonals: dict[str, list[Diagonals]] = {}
    for layer in plan.layers:
        if layer.kind != "linear":
            continue
        if isinstance(layer.out_layout, lay.TemplateLayout):
            pre = f"diagonal/{layer.name}/0/"
            if pre + "dense" in arrays:
                d: Diagonals = DenseDiagonals(arrays[pre + "in_ct"], arrays[pre + "offset"],
                                              dense=arrays[pre + "dense"])
            else:
                d = Diagonals(arrays[pre + "in_ct"], arrays[pre + "offset"],
                              tuple(arrays[pre + f"entries{i}"] for i in range(3)), arrays[pre + "bounds"])
            diagonals[layer.name] = [d]
        else:
            structures[layer.name] = [
                ConvStructure(**{f: arrays[f"structure/{layer.name}/{j}/{f}"] for f in _STRUCTURE_FIELDS})
                for j in range(layer.out_layout.n_cts)]
    return EngineCaches(structures, diagonals)


# -- helpers ---------------------------------------------------------------------------------------------
def _params_id(params: CkksParameters) -> str:
    from cryptoface.store.base import params_fingerprint

    return params_fingerprint(params_to_json(params))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cryptoface")
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


def _copy_into(source: Path, f: Any) -> None:
    with source.open("rb") as src:
        shutil.copyfileobj(src, f)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file of the same folder, then rename it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = [
    "ARTEFACT_FORMAT",
    "ArtefactError",
    "ArtefactManifest",
    "PreparedModel",
    "build_caches",
    "load_prepared",
    "prepare_model",
    "read_manifest",
]

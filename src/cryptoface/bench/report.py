"""Report plumbing shared by the benchmarks: dataclass -> JSON, medians, key sizes, atomic JSON files."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

_OMIT_IF_NONE = "omit_if_none"
# metadata of a report field left out of the JSON while it is None (a measurement the run did not make):
#     x: float | None = field(default=None, metadata=OPTIONAL)
OPTIONAL = MappingProxyType({_OMIT_IF_NONE: True})


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: dataclasses in field order (optional fields dropped while None), numpy
    scalars and arrays as Python numbers and lists, paths as strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None and f.metadata.get(_OMIT_IF_NONE):
                continue
            out[f.name] = jsonable(value)
        return out
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


class Report:
    """Mixin of the benchmark report dataclasses: the JSON the CLI writes is ``to_json()``."""

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)


def write_json(path: Path, report: Report) -> None:
    """Write ``report`` to ``path`` through a temporary file, so a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(report.to_json())
    os.replace(tmp, path)


def median(values: Iterable[float]) -> float | None:
    """The median, or None for no values (a stage that has not run yet)."""
    v = list(values)
    return float(statistics.median(v)) if v else None


def bytes_by_kind(sizes: Mapping[str, int]) -> dict[str, int]:
    """Key bytes summed per kind (``rotation:4`` and ``rotation:8`` both count as ``rotation``)."""
    out: dict[str, int] = {}
    for name, n in sizes.items():
        kind = name.split(":", 1)[0]
        out[kind] = out.get(kind, 0) + int(n)
    return out


def params_summary(params: Any) -> dict[str, int]:
    """The CKKS parameters a report records."""
    return {"log_ring": params.log_ring, "levels": params.levels, "scale_bits": params.scale_bits,
            "key_switch_digits": params.key_switch_digits, "log_qp": params.log_qp}

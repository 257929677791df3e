"""Key blobs exchanged through a folder, so a benchmark's server process reads keys as bytes, one at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path


class FileKeys(Mapping[str, bytes]):
    """Key blobs in a folder, read one at a time (the server never holds all key bytes at once)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._names = json.loads((self.folder / "index.json").read_text())

    def __getitem__(self, name: str) -> bytes:
        if name not in self._names:
            raise KeyError(name)
        return (self.folder / self._names[name]).read_bytes()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)


def write_keys(keys: Mapping[str, bytes], folder: Path) -> dict[str, int]:
    """Write each key blob to its own file in ``folder`` with an index :class:`FileKeys` reads; {name: bytes}."""
    folder.mkdir(parents=True, exist_ok=True)
    index, sizes = {}, {}
    for i, (name, blob) in enumerate(keys.items()):
        fname = f"key-{i:03d}.bin"
        (folder / fname).write_bytes(blob)
        index[name] = fname
        sizes[name] = len(blob)
    (folder / "index.json").write_text(json.dumps(index))
    return sizes

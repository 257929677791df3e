"""Key rotation: a new key set, registered and enrolled from fresh photos, then the old one erased.

Templates cannot move between key sets (the service never decrypts, and the client has no copy), so rotation
is re-enrolment. The order keeps a working key set at every step: the new keys are made in ``<home>/rotating``
and enrolled there; only then does the home switch over (the old files go to ``<home>/retired-<id>`` until the
old key set is erased on the service, then they are deleted). A failure before the switch erases the new key
set and leaves the old one untouched; an interruption during the switch leaves both folders for recovery.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptoface.client.client import Client, PhotoOrProbe
from cryptoface.client.keys import KEYSET_FILE, MATCH_DIR, SECRET_FILE, ClientKeys, KeyHomeError
from cryptoface.client.transport import Subject
from cryptoface.errors import CryptoFaceError
from cryptoface.names import validate_name

STAGING = "rotating"
_KEY_FILES = ("eval", SECRET_FILE, MATCH_DIR, KEYSET_FILE)  # keyset.json last: a home holding it is complete


class RotationError(CryptoFaceError):
    """Key rotation refused, or stopped after the switch (the message says what is left to do)."""


def rotate_keys(
    client: Client,
    enrolments: Mapping[str, Sequence[Any]],
    *,
    drop_missing: bool = False,
    make_probe: Callable[[Client, Any], PhotoOrProbe] | None = None,
    threads: int = 1,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[Client, list[Subject]]:
    """Replace ``client``'s key set by a new one enrolled from ``enrolments`` (name -> photos); returns the new
    client and its subjects. Subjects of the old key set left out of ``enrolments`` are refused unless
    ``drop_missing`` (they are erased with the old key set). ``make_probe`` turns a photo into a probe under the
    new keys (default: the client encrypts the photo)."""
    old = client.keys
    if old.home is None:
        raise RotationError("key rotation needs a saved key home")
    home = old.home
    wanted = {validate_name(n, "subject name"): list(p) for n, p in enrolments.items()}
    if not wanted or not all(wanted.values()):
        raise RotationError("give each subject to re-enrol with at least one photo (--enroll NAME=PHOTO)")
    missing = sorted({s.name for s in client.subjects()} - set(wanted))
    if missing and not drop_missing:
        raise RotationError(f"the old key set also holds {', '.join(map(repr, missing))}: re-enrol them with "
                            "--enroll NAME=PHOTO, or pass --drop-missing to erase them with the old key set")
    staging = home / STAGING
    _abandon(client, staging)
    say(f"generating a new {old.backend_name} key set (same parameters)")
    fresh = ClientKeys.generate(old.backend_name, old.params, stride=old.stride, resolution=old.resolution,
                                match_ring=old.match is not None, threads=threads)
    fresh.save(staging)
    new = Client(fresh, client.transport, threshold=client.threshold, protocol=client.protocol)
    enrolled = []
    try:
        say(f"registering key set {fresh.key_id[:12]}")
        new.register()
        for name, photos in wanted.items():
            probes = [p if make_probe is None else make_probe(new, p) for p in photos]
            enrolled.append(new.enroll(name, probes))
            say(f"enrolled {name}: {len(enrolled[-1].template_ids)} template(s)")
    except BaseException:
        with contextlib.suppress(CryptoFaceError):
            new.delete_key_set()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = home / f"retired-{old.key_id[:12]}"
    _switch(home, staging, retired)
    new = Client(ClientKeys.load(home), client.transport, threshold=client.threshold, protocol=client.protocol)
    failed = []
    for keys in reversed(client.key_sets()):  # every old key set, whatever happened to the others
        try:
            client.delete_key_set(keys.key_id)
        except CryptoFaceError as exc:
            failed.append((keys.key_id, exc))
    if failed:
        todo = "; ".join(f"'cryptoface delete keyset --key-id {k}' ({e})" for k, e in failed)
        raise RotationError(f"the new key set {new.key_id[:12]} is in use, but erasing the old ones failed: run "
                            f"{todo}, then remove {retired}")
    shutil.rmtree(retired, ignore_errors=True)
    say(f"erased the old key set {old.key_id[:12]} on the server and its secret key here")
    return new, enrolled


def _abandon(client: Client, staging: Path) -> None:
    """Clear what an interrupted rotation left in ``staging`` (its key set too, if the service has it)."""
    if not staging.exists():
        return
    with contextlib.suppress(CryptoFaceError, OSError):
        stale = ClientKeys.load(staging)
        if stale.key_id != client.key_id:
            for keys in stale.key_sets():
                with contextlib.suppress(CryptoFaceError):
                    client.delete_key_set(keys.key_id)
    shutil.rmtree(staging, ignore_errors=True)


def _switch(home: Path, staging: Path, retired: Path) -> None:
    """Move the old key files to ``retired`` and the staged ones into ``home`` (keyset.json out first, in last)."""
    try:
        retired.mkdir(mode=0o700)
        for name in reversed(_KEY_FILES):
            if (home / name).exists():  # a home without a matching ring has no match/
                (home / name).rename(retired / name)
        for name in _KEY_FILES:
            if (staging / name).exists():
                (staging / name).rename(home / name)
        staging.rmdir()
    except OSError as exc:
        raise KeyHomeError(f"switching {home} to the new key set failed ({exc}); the new keys are in {staging}, the "
                           f"old ones in {retired}") from exc

"""Output directories a stage owns: it deletes or overwrites only what lmforge wrote there.

Before a stage writes anything, `claim` writes an ownership record, `.lmforge-owner.json`,
into its directory, so even a stage killed at once leaves proof of what is lmforge's. A
directory is claimed when it is missing, empty, or already this stage's; a non-empty
directory without a record, or another stage's, is refused with a UserError.

The record is in one of two states:
  running  the stage is writing: every entry except `kept` (what was already there and is
           not lmforge's) is lmforge's, so a re-run after kill -9 clears its half-written files
  done     the stage finished: `files` (size, mtime) and `dirs` are exactly what it wrote,
           so whatever a user adds afterwards survives the next run; the stage's internal
           folders (checkpoints, work dirs) are lmforge's as a whole
A file lmforge wrote that changed since (another size, or another mtime and not the content
hash recorded for it) is treated as the user's: the next run refuses instead of deleting it.
Links are never followed: a symbolic link inside an output directory is refused.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from lmforge import __version__
from lmforge.errors import UserError
from lmforge.io import atomic_write_json, sha256_file

OWNER = ".lmforge-owner.json"
MANIFEST = "manifest.json"
STATES = ("running", "done")

Entries = tuple[dict[str, os.stat_result], set[str]]  # files (with their lstat), dirs


def claim(out_dir: Path, stage: str, clear: bool, internal: tuple[str, ...] = ()) -> set[str]:
    """Make `out_dir` this stage's before it writes; delete what lmforge wrote when `clear`.

    `internal`: top-level names that only lmforge writes (work dirs, checkpoints), owned as
    a whole in a directory an older lmforge left with a manifest but no ownership record.
    Returns the entries that are not lmforge's (kept, and never listed in a manifest)."""
    _make_dir(out_dir)
    _drop_record_temps(out_dir)
    record = _read_record(out_dir)
    files, dirs = _walk(out_dir)
    owned_files, owned_dirs = _owned(out_dir, stage, record, (files, dirs), internal)
    kept = (set(files) - owned_files) | (dirs - owned_dirs)
    _write_record(out_dir, {"stage": stage, "state": "running", "kept": sorted(kept)})
    if clear:
        _delete(out_dir, set(files) - kept, dirs - kept)
    return kept


def remove_outputs(out_dir: Path, names: tuple[str, ...] | list[str], stage: str) -> None:
    """Delete what lmforge wrote under the top-level `names` of `out_dir` (claimed for
    `stage` if it is not yet), leaving everything else, a user's files included."""
    kept = claim(out_dir, stage, clear=False)
    files, dirs = _walk(out_dir)
    mine = {rel for rel in (set(files) | dirs) - kept if rel.split("/")[0] in names}
    _delete(out_dir, mine & set(files), mine & dirs)


def kept_entries(out_dir: Path) -> set[str]:
    """The entries of a claimed directory that are not lmforge's."""
    record = _read_record(out_dir) or {}
    return set(record.get("kept", []))


def seal(out_dir: Path, stage: str) -> None:
    """Record exactly what the finished stage wrote: everything not kept at its claim, with
    size, mtime and (where the manifest has it, and for the manifest) the content hash."""
    kept = kept_entries(out_dir)
    files, dirs = _walk(out_dir)
    hashes = _manifest_hashes(out_dir)
    if MANIFEST in files:
        hashes[MANIFEST] = sha256_file(out_dir / MANIFEST)
    written = {rel: [st.st_size, st.st_mtime_ns, hashes.get(rel)]
               for rel, st in files.items() if rel not in kept}
    _write_record(out_dir, {"stage": stage, "state": "done", "files": written,
                            "dirs": sorted(dirs - kept)})


def _make_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} is a file, not a directory; choose another output")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {out_dir}: {e.strerror}") from None


def _drop_record_temps(out_dir: Path) -> None:
    """A kill while the record was being written leaves its temp file: ours, so removed."""
    for tmp in out_dir.glob(f".{OWNER}.*.tmp"):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink()


def _read_record(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / OWNER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if _well_formed(record) else None


def _well_formed(record: Any) -> bool:
    """A record lmforge wrote; anything else (hand-edited, truncated) proves nothing."""
    if not isinstance(record, dict) or record.get("state") not in STATES:
        return False
    kept, files = record.get("kept", []), record.get("files", {})
    return (isinstance(record.get("stage"), str)
            and isinstance(kept, list) and all(isinstance(k, str) for k in kept)
            and isinstance(record.get("dirs", []), list) and isinstance(files, dict)
            and all(isinstance(v, list) and len(v) == 3 for v in files.values()))


def _write_record(out_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(out_dir / OWNER, {"written_by": f"lmforge {__version__}", **record})


def _walk(out_dir: Path) -> Entries:
    """Every file and directory below out_dir (paths relative, with '/'), never through a
    link; a link is refused, since writing or deleting through it could reach anywhere."""
    files: dict[str, os.stat_result] = {}
    dirs: set[str] = set()
    pending = [""]
    while pending:
        prefix = pending.pop()
        for entry in _scan(out_dir / prefix if prefix else out_dir):
            rel = f"{prefix}{entry.name}"
            if rel == OWNER:
                continue
            if entry.is_symlink():
                raise UserError(
                    f"{out_dir / rel} is a symbolic link; lmforge does not write or delete "
                    f"through links in its output directories: remove the link, or choose "
                    f"another output"
                )
            if entry.is_dir(follow_symlinks=False):
                dirs.add(rel)
                pending.append(rel + "/")
            else:
                files[rel] = entry.stat(follow_symlinks=False)
    return files, dirs


def _scan(directory: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except OSError as e:
        raise UserError(f"cannot read output directory {directory}: {e.strerror}") from None


def _owned(out_dir: Path, stage: str, record: dict[str, Any] | None, entries: Entries,
           internal: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """The files and dirs below out_dir that lmforge provably wrote for `stage`."""
    files, dirs = entries
    if record is None:
        return _owned_without_record(out_dir, stage, entries, internal)
    if record["stage"] != stage:
        raise UserError(_other_stage(out_dir, record["stage"], stage))
    if record.get("state") == "running":
        kept = set(record.get("kept", []))
        return set(files) - kept, dirs - kept
    owned = {rel for rel in files if rel.split("/")[0] in internal}  # lmforge's alone
    for rel, (size, mtime_ns, digest) in record.get("files", {}).items():
        if rel not in files or rel in owned:
            continue
        now = files[rel]
        same = stat.S_ISREG(now.st_mode) and now.st_size == size
        if not (same and (now.st_mtime_ns == mtime_ns
                          or (digest is not None and sha256_file(out_dir / rel) == digest))):
            raise UserError(
                f"{out_dir / rel} changed after lmforge wrote it, so it is not deleted or "
                f"overwritten: move it out of {out_dir} (or delete it) and run again"
            )
        owned.add(rel)
    return owned, dirs & ({*record.get("dirs", []), *internal})


def _owned_without_record(out_dir: Path, stage: str, entries: Entries,
                          internal: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """An empty directory owns nothing; an older lmforge's output is proven by its manifest
    (files whose hashes match it, and the stage's internal folders); anything else is foreign."""
    files, dirs = entries
    if not files and not dirs:
        return set(), set()
    manifest = _read_manifest(out_dir)
    if manifest is None:
        raise UserError(
            f"output {out_dir} is not empty and was not written by lmforge (no {OWNER}); "
            f"choose another output directory, or empty this one"
        )
    if manifest.get("stage") != stage:
        raise UserError(_other_stage(out_dir, str(manifest.get("stage")), stage))
    hashes = _manifest_hashes(out_dir)
    owned = {MANIFEST} & set(files)
    owned |= {rel for rel in files if rel.split("/")[0] in internal}
    owned |= {rel for rel, digest in hashes.items()
              if rel in files and stat.S_ISREG(files[rel].st_mode)
              and sha256_file(out_dir / rel) == digest}
    owned_dirs = {d for d in dirs if d.split("/")[0] in internal}
    owned_dirs |= {d for d in dirs if any(rel.startswith(d + "/") for rel in owned)}
    return owned, owned_dirs


def _other_stage(out_dir: Path, found: str, stage: str) -> str:
    return (f"output {out_dir} holds lmforge's {found} stage, not {stage}; each stage writes "
            f"its own directory: choose another output")


def _read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / MANIFEST
    if path.is_symlink() or not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _manifest_hashes(out_dir: Path) -> dict[str, str]:
    manifest = _read_manifest(out_dir) or {}
    listed = manifest.get("files", [])
    return {f["path"]: f["sha256"] for f in listed if isinstance(f, dict)
            and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)}


def _delete(out_dir: Path, files: set[str], dirs: set[str]) -> None:
    """Unlink the files, then remove the dirs that are left empty (deepest first); a dir that
    still holds something not lmforge's stays."""
    for rel in sorted(files):
        (out_dir / rel).unlink(missing_ok=True)
    for rel in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
        try:
            (out_dir / rel).rmdir()
        except OSError:
            continue

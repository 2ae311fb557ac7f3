"""The files of a golden directory on disk: digests that prove them, and where a golden set may be written.

Light (standard library only): `granite-bench reference` checks its --out folder here before torch loads.

digests.json, written last (after every other file of the set, before the folder is renamed into place):
    {"format_version": 1, "algorithm": "sha256", "files": {name: sha256 hex}, "set": sha256 hex}
`files` covers golden.json and every prompt file it lists; `set` is the sha256 of the sorted "name digest" lines, so
a digest table edited by hand without its set digest is caught too. A golden directory without it was written by an
older granite-bench (or never finished): it is refused with the command that re-creates it.

Where goldens may be written: a new folder, an empty one, or a golden directory (replaced whole, atomically). A
folder holding anything granite-bench did not write there is refused, and so is the folder the command runs in (or
one that holds it): nothing that a user put there is ever deleted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import re
from pathlib import Path

GOLDEN_FILE = "golden.json"
DIGEST_FILE = "digests.json"
DIGEST_FORMAT = 1
# What a golden directory may hold: the index, its digests, the prompt files and the framework-error files.
OWN_FILE = re.compile(r"^(golden\.json|digests\.json|prompt-\d{5}\.safetensors|framework-[a-z0-9]+\.json)$")
CHUNK = 1 << 20


class GoldenError(ValueError):
    """A goldens directory that cannot be used (missing, corrupt, made for another checkpoint or other prompts), or a
    folder goldens must not be written to: one line that says what to do."""


def redo(directory: Path) -> str:
    return f"re-create it with `granite-bench reference --out {directory}` (same --model/--prompts/--num-tokens)"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def set_sha256(files: dict[str, str]) -> str:
    """The digest of the whole set: sha256 over its sorted 'name digest' lines."""
    return hashlib.sha256("".join(f"{name} {files[name]}\n" for name in sorted(files)).encode()).hexdigest()


def write_digests(directory: Path, names: list[str]) -> dict:
    """Hash `names` (files in `directory`) and write digests.json beside them; call after every other file."""
    files = {name: file_sha256(Path(directory) / name) for name in sorted(names)}
    doc = {"format_version": DIGEST_FORMAT, "algorithm": "sha256", "files": files, "set": set_sha256(files)}
    path = Path(directory) / DIGEST_FILE
    with open(path, "w") as handle:
        handle.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return doc


def read_digests(directory: Path) -> dict[str, str]:
    """{file name: sha256} of a golden directory, its set digest checked; GoldenError when absent or corrupt."""
    directory = Path(directory)
    path = directory / DIGEST_FILE
    if not path.exists():
        raise GoldenError(f"goldens in {directory} carry no {DIGEST_FILE} (written by an older granite-bench, or "
                              f"never finished), so they cannot be checked: {redo(directory)}")
    try:
        doc = json.loads(path.read_text())
        files = {str(name): str(value) for name, value in doc["files"].items()}
        valid = doc["format_version"] == DIGEST_FORMAT and doc["algorithm"] == "sha256" and \
            doc["set"] == set_sha256(files)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise GoldenError(f"corrupt goldens: {path} is not a valid digest table (edited or damaged): "
                              f"{redo(directory)}")
    return files


def verify_file(directory: Path, name: str, digests: dict[str, str]) -> None:
    """GoldenError (one line naming the file) unless `name` is listed and its bytes match its digest."""
    path = Path(directory) / name
    if name not in digests:
        raise GoldenError(f"corrupt goldens: {path} is not listed in {DIGEST_FILE}: {redo(directory)}")
    if not path.is_file():
        raise GoldenError(f"corrupt goldens: {path} is missing: {redo(directory)}")
    if file_sha256(path) != digests[name]:
        raise GoldenError(f"corrupt goldens: {path} does not match its sha256 in {DIGEST_FILE} (changed or "
                              f"damaged after it was written): {redo(directory)}")


# -- where goldens may be written ---------------------------------------------------------------------------------
def is_golden_dir(directory: Path) -> bool:
    return (Path(directory) / GOLDEN_FILE).is_file()


def check_goldens_target(directory: Path, option: str = "--out") -> None:
    """GoldenError unless goldens may be written to `directory`: absent, empty, or a golden directory holding
    only files granite-bench writes there; never the working folder or one that holds it."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise GoldenError(f"{option} {directory} is a file: give a folder for the goldens")
    resolved = directory.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise GoldenError(f"{option} {directory} is the folder this command runs in (or holds it), which goldens "
                              f"would replace whole: name a folder of its own, e.g. {option} goldens")
    if not directory.is_dir():
        return
    entries = sorted(p.name for p in directory.iterdir())
    if not entries:
        return
    if not is_golden_dir(directory):
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise GoldenError(f"{option} {directory} is not empty and holds no goldens ({shown}): goldens replace "
                              f"their folder whole, so give a new or empty folder")
    foreign = [name for name in entries if not OWN_FILE.match(name)]
    if foreign:
        raise GoldenError(f"{option} {directory} holds goldens and files granite-bench did not write there "
                              f"({', '.join(foreign[:3])}): move them out or give another folder")


def _rename_exchange():
    """libc renameat2 with RENAME_EXCHANGE (Linux), or None where it is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return call


AT_FDCWD = -100
RENAME_EXCHANGE = 2


def swap_into_place(new: Path, directory: Path) -> Path | None:
    """Put the finished folder `new` at `directory`. An existing `directory` is exchanged with `new` in one atomic
    step where the system allows it (readers see the old set or the new one, never neither), else renamed aside
    first. Returns the folder now holding the old set (for the caller to remove), or None."""
    new, directory = Path(new), Path(directory)
    if not directory.exists():
        os.replace(new, directory)
        return None
    if not any(directory.iterdir()):
        os.replace(new, directory)     # a rename onto an empty folder replaces it
        return None
    exchange = _rename_exchange()
    if exchange is not None and exchange(AT_FDCWD, os.fsencode(new), AT_FDCWD, os.fsencode(directory),
                                         RENAME_EXCHANGE) == 0:
        return new                      # `new` now holds the old set
    aside = new.with_name(new.name + "-old")
    os.replace(directory, aside)
    try:
        os.replace(new, directory)
    except BaseException:
        os.replace(aside, directory)   # the old set goes back where it was
        raise
    return aside


def verify_golden_set(directory: Path) -> None:
    """Every file of a golden directory against its digest, with the standard library only (before torch loads):
    GoldenError naming the first file that is missing, unlisted or changed. The tensors' own checks (NaN, greedy
    tokens, key agreement) follow when goldens.load_goldens reads them."""
    directory = Path(directory)
    if not (directory / GOLDEN_FILE).is_file():
        raise GoldenError(f"{directory} holds no {GOLDEN_FILE}: point --goldens at a directory written by "
                          f"`granite-bench reference --out DIR`")
    digests = read_digests(directory)
    verify_file(directory, GOLDEN_FILE, digests)
    try:
        files = [str(entry["file"]) for entry in json.loads((directory / GOLDEN_FILE).read_text())["prompts"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise GoldenError(f"corrupt goldens: {directory / GOLDEN_FILE} is not a golden index: {redo(directory)}") \
            from None
    for name in files:
        verify_file(directory, name, digests)

"""Small file helpers shared by every command: atomic writes, JSON lines, content fingerprints
and the rules that keep a command from touching what it did not write.

Temporary names hold TEMP_MARK, so that the leftovers of a killed write are recognised (and
removed by `sweep_temps`) on the next run. Files and folders are made readable per the umask
(mkstemp/mkdtemp create them private), so that e.g. a container's non-root user can read a
mounted model.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prunerec.errors import PrunerecError

TEMP_MARK = ".prunerec-tmp"


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_prefix(target: Path) -> str:
    return f".{target.name}{TEMP_MARK}."


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), dir=target.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def make_temp_dir(target: Path) -> Path:
    """A fresh temporary folder beside `target`, readable per the umask."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())
    return tmp


def share_per_umask(folder: Path) -> None:
    """Give every file and folder under `folder` the permissions the umask allows (libraries that
    write through temporary files, e.g. model.safetensors, leave them private)."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(Path(root, name), 0o777 & ~mask)
        for name in files:
            path = Path(root, name)
            if not path.is_symlink():
                os.chmod(path, (path.stat().st_mode | 0o666) & 0o777 & ~mask)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; it replaces `path` only if the block succeeds."""
    target = Path(path)
    tmp = make_temp_dir(target)
    try:
        yield tmp
        share_per_umask(tmp)
        if target.exists():
            old = target.with_name(f"{_temp_prefix(target)}old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(staging: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move every file of a finished staging folder into `out`, each by an atomic rename."""
    staging, out = Path(staging), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    share_per_umask(staging)
    for item in sorted(staging.iterdir()):
        destination = out / item.name
        if destination.is_dir() and not item.is_dir():
            shutil.rmtree(destination)
        os.replace(item, destination)
        crash_point("publish")
    shutil.rmtree(staging, ignore_errors=True)


def sweep_temps(root: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that killed writes left anywhere under `root`."""
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for folder, dirs, files in os.walk(root):
        for name in [d for d in dirs if TEMP_MARK in d]:
            shutil.rmtree(Path(folder, name), ignore_errors=True)
            removed.append(Path(folder, name))
            dirs.remove(name)
        for name in files:
            if TEMP_MARK in name:
                Path(folder, name).unlink(missing_ok=True)
                removed.append(Path(folder, name))
    return removed


# --------------------------------------------------------------------------- fingerprints

def free_port() -> int:
    """A loopback TCP port free at the moment of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def folder_bytes(folder: Path) -> int:
    """Bytes of the files a deployment copies (hidden folders such as .train-state left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*")
               if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def weights_bytes(folder: Path) -> int:
    """Bytes of a model folder's safetensors files."""
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) if folder.is_dir() else 0


def file_digest(path: Path, digest=None):
    digest = digest or hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest


def fingerprint(folder: str | os.PathLike, names: Iterable[str] | None = None) -> str:
    """sha256 over the names and contents of `names` in `folder` (default: its visible files)."""
    folder = Path(folder)
    if names is None:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256()
    for name in names:
        path = folder / name
        digest.update(name.encode() + b"\0")
        if path.is_file():
            file_digest(path, digest)
        digest.update(b"\0")
    return digest.hexdigest()


# --------------------------------------------------------------------------- output rules

def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_output_over_inputs(out: str | os.PathLike, flag: str, **inputs) -> None:
    """Refuse an output folder that equals or contains an input (writing there could delete it).

    `inputs` maps an option name (e.g. model="...") to a path or reference; non-paths are skipped."""
    out_path = Path(out).expanduser().resolve()
    for name, ref in inputs.items():
        if ref is None or not Path(str(ref)).expanduser().exists():
            continue
        source = Path(str(ref)).expanduser().resolve()
        if _inside(source, out_path):
            raise PrunerecError(f"{flag} {out} {'is' if source == out_path else 'contains'} the input "
                                f"--{name} {ref}: pick an output folder outside the inputs")


def check_fresh_output(out: str | os.PathLike, own: Iterable[str], resume: bool, overwrite: bool,
                       what: str, resumable: bool = True) -> bool:
    """Refuse to start over in an `out` that holds earlier results, unless asked.

    Returns True when the earlier results (the names in `own`) are to be replaced."""
    out = Path(out)
    if resume and overwrite:
        raise PrunerecError("--resume and --overwrite exclude each other: pick one")
    if resume or not out.is_dir():
        return False
    found = [name for name in own if (out / name).exists()]
    if found and not overwrite:
        hint = "--resume to continue it or --overwrite to replace it" if resumable else "--overwrite to replace it"
        raise PrunerecError(f"{out} already holds {what} ({', '.join(found[:4])}); rerun with {hint}")
    return bool(found)


def remove_own(out: Path, own: Iterable[str]) -> None:
    """Delete the named results of an earlier run in `out` (only those; other files stay)."""
    for name in own:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test hook: with PRUNEREC_TEST_KILL_AT=NAME:N in the environment the process SIGKILLs itself
    the Nth time it passes the point NAME (e.g. inside a checkpoint save)."""
    wanted = os.environ.get("PRUNEREC_TEST_KILL_AT")
    if not wanted or wanted.partition(":")[0] != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(wanted.partition(":")[2] or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)

"""The files the kit writes: atomically, one writer per output, no debris from a killed run, nothing replaced
that the kit did not write.

- Atomic writes (:func:`atomic_path`, :func:`atomic_write_bytes`, :func:`atomic_write_text`,
  :func:`atomic_directory`): a reader (or a crash) never sees a half-written checkpoint, model, engine or
  map. Everything is written to a temporary sibling first, flushed, then renamed over the destination
  (``os.replace`` is atomic on one filesystem).
- :func:`output_lock` holds an exclusive ``flock`` on a hidden ``.<name>.lock`` beside an output for the
  whole time one process writes it; a second writer gets :class:`OutputError` naming the holder's PID. The
  kernel drops the lock when its holder dies (even by ``kill -9``), so a lock never goes stale.
- :func:`clean_stale` removes, under that lock, the temporary siblings (``.<name>.*.tmp``, ``.<name>.old-*``)
  that the atomic writes leave when a run is killed mid-write, and says so.
- :func:`check_replaceable_map`, :func:`check_not_dataset` and :func:`check_writable_file` refuse, before any
  work, an output that would destroy something the kit did not write or could not be written at all.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

from runtime.errors import OutputError

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``dest``; on success it is renamed to ``dest``.

    On an exception the temporary file is removed and ``dest`` is left as it was.
    Use it for writers that want a path (``torch.save``, ``onnx.save``, ``faiss.write_index``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions of a new file
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically; returns ``dest``."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_text(dest: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``dest`` atomically; returns ``dest``."""
    return atomic_write_bytes(dest, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``dest``; on success it replaces ``dest``.

    If ``dest`` exists and ``overwrite`` is false, :class:`FileExistsError` is raised before any work.
    An existing ``dest`` is only removed after the new one is complete (moved aside, then deleted).
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"'{dest}' already exists; choose another path or pass overwrite=True")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _lock_file(dest: Path) -> Path:
    dest = Path(os.path.abspath(dest))
    return dest.parent / f".{dest.name}.lock"


@contextlib.contextmanager
def output_lock(dest: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Hold the exclusive writer's lock of ``dest`` (a file or a folder) for the ``with`` block.

    Raises :class:`OutputError` at once when another process holds it, naming its PID. The lock file is
    removed on release.
    """
    dest = Path(dest)
    lock = _lock_file(dest)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(
                f"{what} '{dest}' is being written by another netvlad-kit process (PID {holder}); wait for it "
                f"to finish or choose another output path"
            ) from None
        # the previous holder may have unlinked the file between our open and our flock: retry on a fresh one
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)  # releases the flock


def clean_stale(dest: str | os.PathLike, extra_patterns: tuple[str, ...] = ()) -> list[Path]:
    """Remove what a killed writer of ``dest`` left beside it; call it only while holding its lock.

    Removes ``.<name>.*.tmp`` and ``.<name>.old-*`` siblings of ``dest`` (runtime.files's temporaries) and
    whatever matches ``extra_patterns`` inside ``dest`` (for example ``.export-*`` staging folders). Logs a
    warning naming each removed path; returns them.
    """
    dest = Path(os.path.abspath(dest))
    found: list[Path] = []
    if dest.parent.is_dir():
        for pattern in (f".{dest.name}.*.tmp", f".{dest.name}.old-*"):
            found += sorted(dest.parent.glob(pattern))
    if dest.is_dir():
        for pattern in extra_patterns:
            found += sorted(dest.glob(pattern))
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        log.warning("removed '%s', left behind by an earlier run that was killed while writing", path)
    return found


def describe_contents(folder: Path, limit: int = 6) -> str:
    """``'a.jpg', 'b.csv', ... (12 entries)`` for an error message."""
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return (
        (shown + (", ..." if len(names) > limit else "") + f" ({len(names)} entries)") if names else "nothing"
    )


def check_replaceable_map(out: Path, overwrite: bool, meta_file: str = "map.json") -> None:
    """``out`` may become a map: it does not exist, or it is a kit map folder and ``overwrite`` is set."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise OutputError(
            f"--out '{out}' is a file, not a map folder; netvlad-map replaces only a map it wrote "
            "(a folder with map.json); choose another --out"
        )
    if not (out / meta_file).is_file():
        raise OutputError(
            f"--out '{out}' is a folder that is not a netvlad-kit map (no {meta_file}; it holds "
            f"{describe_contents(out)}); netvlad-map replaces only a map it wrote; choose another --out"
        )
    if not overwrite:
        raise OutputError(f"map '{out}' already exists; choose another --out or pass --overwrite")


def check_not_dataset(out: Path, dataset_root: Path, flag: str = "--out") -> None:
    """Refuse an output folder that is the dataset's folder or one of its parents (it would be replaced)."""
    out_r, root_r = Path(os.path.abspath(out)).resolve(), Path(os.path.abspath(dataset_root)).resolve()
    if out_r == root_r or out_r in root_r.parents:
        raise OutputError(
            f"{flag} '{out}' is {'the dataset folder' if out_r == root_r else 'a folder holding the dataset'} "
            f"'{dataset_root}'; writing it would replace the dataset's images; choose another {flag}"
        )


def check_not_replacing(outputs: dict[str, str | os.PathLike | None], overwrite: bool) -> None:
    """Before a run: unless ``overwrite``, none of ``outputs`` (flag -> path or None) exists yet."""
    existing = [
        f"{flag} '{path}'" for flag, path in outputs.items() if path is not None and Path(path).exists()
    ]
    if existing and not overwrite:
        raise OutputError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; pass --overwrite to "
            "replace, or choose another path"
        )


def check_writable_file(path: str | os.PathLike | None, flag: str) -> None:
    """Before a run: ``path`` can be created or replaced as a file (not a folder; a writable folder)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} '{path}' is a folder; give a file name, for example {path / 'run.out'}")
    parent = Path(os.path.abspath(path)).parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag} '{path}': '{existing}' is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} '{path}': folder '{existing}' is not writable; choose another path")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{flag} '{path}' exists and is read-only; choose another path or make it writable")


def holds_output_lock(argument: str, what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function that writes the output named by its parameter ``argument``: it runs holding
    :func:`output_lock` on that path, after :func:`clean_stale` (for in-place updates such as
    ``netvlad-map add``, where two concurrent writers would lose one update)."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            dest = Path(signature.bind(*args, **kwargs).arguments[argument])
            with output_lock(dest, what):
                clean_stale(dest)
                return fn(*args, **kwargs)

        return wrapper

    return decorate

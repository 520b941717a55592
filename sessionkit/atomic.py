"""Writing files whole or not at all: a temporary file beside the target, then a rename.

A full disk, a crash or Ctrl-C while writing leaves the previous file as it was, never a truncated one.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import SessionkitError


# Files no output may replace: the database this process opened and its SQLite companions
# (sessionkit.db.open_db adds them). `report -o sessions.db` would otherwise rename a report over
# every recorded session.
_PROTECTED: set[str] = set()


def protect(path: str | os.PathLike) -> None:
    """Refuse, from now on in this process, any write_atomic to ``path`` or its ``-wal``,
    ``-shm`` and ``-journal`` files (through links and hard links too)."""
    real = os.path.realpath(path)
    _PROTECTED.update({real, real + "-wal", real + "-shm", real + "-journal"})


def _refuse_protected(path: Path) -> None:
    if not _PROTECTED:
        return
    real = os.path.realpath(path)
    hit = real in _PROTECTED
    if not hit and os.path.exists(real):
        try:
            st = os.stat(real)
            hit = any(os.path.exists(p) and os.path.samestat(st, os.stat(p)) for p in _PROTECTED)
        except OSError:
            pass
    if hit:
        raise SessionkitError(f"will not write {path}: it is the session database (or one of its "
                              "files); give another output path")


def check_output(path: str | os.PathLike) -> None:
    """Refuse ``path`` as an output (``-o``) before anything is made for it, by the rules
    :func:`write_atomic` applies: the session database or one of its files, a symbolic link in a
    loop, and a dangling symbolic link (writing through it would make its target, and the folders
    on the way to it, wherever it points). Nothing is written.

    Raises :class:`~sessionkit.errors.SessionkitError` with one line.
    """
    path = Path(path)
    _refuse_protected(path)
    _target(path)


def write_atomic(path: str | os.PathLike, text: str | bytes, *, make_parents: bool = False) -> Path:
    """Write ``text`` (str as UTF-8, or bytes) to ``path`` atomically and return the path.

    A regular file or a new path is replaced whole (a temporary file, then a rename). A symbolic link
    is kept: its target is written that way instead (a dangling one is refused). Anything else that is not a regular file (a FIFO,
    a device, ``/dev/stdout``) is written in place, since a rename would replace it with a file.

    Raises :class:`~sessionkit.errors.SessionkitError` with one line when the folder is missing
    (unless ``make_parents``), not writable, or the disk is full, and for a path
    :func:`check_output` refuses; the old file, if any, is kept.
    """
    path = Path(path)
    _refuse_protected(path)
    target = _target(path)
    if target is None:
        _write_in_place(path, text)
        return path
    _replace(target, text, make_parents=make_parents, shown=path)
    return path


def _target(path: Path) -> Path | None:
    """The regular file (existing or new) to replace for ``path``; None to write in place."""
    import stat

    for folder in path.parents:  # a dangling link on the way: making the folders would fail on it
        if folder.is_symlink() and not folder.exists():
            raise SessionkitError(f"cannot write {path}: its folder {folder} is a symbolic link to "
                                  f"{os.readlink(folder)}, which does not exist")
    try:
        st = os.stat(path)  # follows links
    except FileNotFoundError:
        st = None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link in a loop: renaming over it would replace it
            raise SessionkitError(f"cannot write {path}: its symbolic links form a loop") from None
        return path  # let the write below report it
    if path.is_symlink():
        if st is None:  # dangling: its target (and, for make_parents, its folders) would be made
            raise SessionkitError(f"cannot write {path}: it is a symbolic link to "
                                  f"{os.readlink(path)}, which does not exist")
        real = Path(os.path.realpath(path))
        if str(real).startswith(("/proc/", "/dev/")):  # /dev/stdout and other fd links
            return None
        return real if st is None or stat.S_ISREG(st.st_mode) else None
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        return None
    return path


def _write_in_place(path: Path, text: str | bytes) -> None:
    """Write to a FIFO, device or descriptor link as it is (no temporary file, no rename)."""
    try:
        with open(path, "wb") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
            fh.flush()
    except OSError as exc:
        raise SessionkitError(f"cannot write {path}: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device"
    return exc.strerror or str(exc)


def _replace(path: Path, text: str | bytes, *, make_parents: bool, shown: Path) -> None:
    tmp = None
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.parent.is_dir():
            raise SessionkitError(f"cannot write {shown}: the folder {path.parent} does not exist")
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:  # the file is written beside its target, then renamed over it
            raise SessionkitError(f"cannot write {shown}: no new file can be made in its folder "
                                  f"{path.parent} ({_reason(exc)})") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise SessionkitError(f"cannot write {shown}: {_reason(exc)}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass

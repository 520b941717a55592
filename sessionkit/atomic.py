"""Writing files whole or not at all: a temporary file beside the target, then a rename.

A full disk, a crash or Ctrl-C while writing leaves the previous file as it was, never a truncated one.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import SessionkitError


def write_atomic(path: str | os.PathLike, text: str, *, make_parents: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path.

    Raises :class:`~sessionkit.errors.SessionkitError` with one line when the folder is missing
    (unless ``make_parents``), not writable, or the disk is full; the old file, if any, is kept.
    """
    path = Path(path)
    tmp = None
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.parent.is_dir():
            raise SessionkitError(f"cannot write {path}: the folder {path.parent} does not exist")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        reason = "no space left on device" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (
            exc.strerror or str(exc))
        raise SessionkitError(f"cannot write {path}: {reason}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path

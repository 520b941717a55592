"""Browse a database with Datasette: ``sessionkit serve``.

Needs the optional ``[browse]`` extra (datasette). The metadata file ``templates/datasette.yaml``
describes every table, view and column with its unit, and holds the canned queries: sessions with
cost and best speedup, regressions between consecutive benched sessions, the slowest steps against
their budgets, and the telemetry of one step. Datasette serves the database read-only.
"""

from __future__ import annotations

import errno
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .errors import SessionkitError, UsageError
from .report.resources import templates_dir

METADATA_TEMPLATE = "datasette.yaml"
DEFAULT_PORT = 8001


class DatasetteUnavailable(SessionkitError):
    """datasette is not installed."""


class PortInUse(SessionkitError):
    """The address to serve on is taken, or cannot be listened on."""


def check_port_free(host: str, port: int) -> None:
    """Bind (and release) a TCP socket on ``host``:``port``, as Datasette's server would, before it
    starts. Port 0 (any free port) always passes. Raises :class:`PortInUse` with one line when the
    port is taken or the address cannot be bound, :class:`UsageError` when ``host`` does not resolve."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"cannot listen on {host!r}: {getattr(exc, 'strerror', None) or exc}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"port {port} on {host} is already in use; pass another --port "
                                "(0: any free port)") from None
            raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def datasette_name(db_path: str | Path) -> str:
    """The database's name in Datasette's URLs: its file name without the extension, with the
    characters Datasette escapes encoded as it does (``my sessions.db`` -> ``my+sessions``)."""
    name = Path(db_path).stem
    try:
        from datasette.utils import tilde_encode
    except ImportError:  # an older Datasette: names were not escaped
        return name
    return tilde_encode(name)


def metadata_text(db_path: str | Path) -> str:
    """The metadata YAML for the database at ``db_path``: Datasette names a database after its file
    name without the extension, so that name replaces ``DATABASE``."""
    text = (templates_dir() / METADATA_TEMPLATE).read_text(encoding="utf-8")
    name = Path(db_path).stem
    if ":" in name or name.strip() != name or not name:
        raise UsageError(f"cannot serve {db_path}: Datasette cannot name a database {name!r}")
    import json

    return text.replace("\n  DATABASE:\n", f"\n  {json.dumps(name)}:\n", 1)


def metadata(db_path: str | Path) -> dict:
    """The metadata as data (needs PyYAML, which datasette installs)."""
    import yaml

    return yaml.safe_load(metadata_text(db_path))


def require_datasette() -> None:
    """Raise :class:`DatasetteUnavailable`, naming the command that installs it, when datasette
    cannot be imported."""
    import importlib.util

    if importlib.util.find_spec("datasette") is None:
        from .extras import install_hint

        raise DatasetteUnavailable(f"datasette is not installed: {install_hint('browse')}") from None


def datasette_command(db_path: str | Path, metadata_path: str | Path, *, host: str = "127.0.0.1",
                      port: int = DEFAULT_PORT) -> list[str]:
    """The Datasette command line that serves ``db_path`` with the metadata at ``metadata_path``.
    Raises :class:`DatasetteUnavailable` when datasette is not installed."""
    require_datasette()
    return [sys.executable, "-m", "datasette", "serve", str(db_path), "--metadata", str(metadata_path),
            "--host", host, "--port", str(port), "--setting", "sql_time_limit_ms", "10000"]


def serve(db_path: str | Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, workdir: Path) -> int:
    """Run Datasette on ``db_path`` until it is stopped; returns its exit status.

    The metadata file is written into ``workdir``. Ctrl-C, SIGTERM and SIGHUP stop Datasette and
    return 128 + the signal number (130, 143, 129).
    Raises :class:`PortInUse` when ``host``:``port`` is taken (see :func:`check_port_free`).
    """
    check_port_free(host, port)
    meta = Path(workdir) / "datasette-metadata.yaml"
    meta.write_text(metadata_text(db_path), encoding="utf-8")
    cmd = datasette_command(db_path, meta, host=host, port=port)
    from .childproc import child_setup

    # Datasette must end with sessionkit: on Ctrl-C, on SIGTERM or SIGHUP (a closed SSH session,
    # `timeout`, systemd), and on Linux even when sessionkit is killed outright.
    proc = subprocess.Popen(cmd, preexec_fn=child_setup)

    class _Stop(Exception):
        def __init__(self, signum):
            self.signum = signum

    def _raise(signum, frame):
        raise _Stop(signum)

    handled = [s for s in (signal.SIGTERM, signal.SIGHUP) if s is not None]
    previous = {s: signal.signal(s, _raise) for s in handled}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        code = 130
    except _Stop as stop:
        code = 128 + stop.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return code


def chromium() -> str | None:
    """Path of a headless-capable Chromium, if one is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None

"""Environment snapshots: keeping secrets out, storing them, reading them back and comparing them.

A snapshot is the JSON that ``sessionkit step preflight`` records in ``env_snapshots.data`` (see
:mod:`sessionkit.preflight` for how it is gathered). This module holds the parts that need no probing:

* :func:`relevant_env` and :class:`Redactor` decide which environment variables are kept and make sure
  no secret value reaches the database or the terminal;
* :func:`store_snapshot`, :func:`load_snapshot` and :func:`snapshot_pair` read and write the table;
* :func:`diff_snapshots` is a pure function comparing two snapshots (reports reuse it);
* :func:`format_snapshot` and :func:`format_diff` render them as text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import SessionkitError

REDACTED = "<redacted>"

# A variable whose name contains one of these words has its value replaced, wherever the word appears
# in the name (HF_TOKEN, NVIDIA_API_KEY, MY_SECRET_FILE, ...).
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")

# Variables that change how CUDA code builds, loads or runs; nothing else is kept.
RELEVANT_PREFIXES = (
    "CUDA", "NVIDIA_", "NVCC_", "TORCH", "PYTORCH_", "SESSIONKIT_", "NCCL_", "CUDNN_", "CUBLAS",
    "TRITON_", "OMP_", "MKL_",
)
RELEVANT_NAMES = frozenset({
    "PATH", "LD_LIBRARY_PATH", "LIBRARY_PATH", "CPATH", "CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS",
    "MAX_JOBS", "VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "XDG_CACHE_HOME",
})

# Values shorter than this are not scrubbed out of other strings (a secret "1" would blank every "1").
MIN_SECRET_LEN = 6

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{0,31}://)(?P<userinfo>[^/@\s]+)@")

# Keys left out of diffs: readings that change from one minute to the next.
DIFF_IGNORE = ("state", "taken_at", "elapsed_s")


class NoSnapshot(SessionkitError):
    """A session has no environment snapshot (preflight has not run in it)."""


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in SECRET_WORDS)


def is_relevant_name(name: str) -> bool:
    return name in RELEVANT_NAMES or name.startswith(RELEVANT_PREFIXES)


class Redactor:
    """Scrubs the secrets of one environment out of any JSON-like value.

    Secret-named variables are the source of secret values; each such value (long enough to be
    recognisable) is replaced wherever it occurs inside any string, and ``user:password@`` in URLs is
    removed too.
    """

    def __init__(self, environ: Mapping[str, str]):
        values = {str(v) for k, v in environ.items() if is_secret_name(k) and v}
        self.secrets = sorted((v for v in values if len(v) >= MIN_SECRET_LEN), key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        if "://" not in value:
            return value
        return _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", value)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.scrub(k) if isinstance(k, str) else k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub(v) for v in value]
        return value


def relevant_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables worth recording, secrets replaced by ``<redacted>``, sorted by name.

    Relevant variables are kept (CUDA_*, NVIDIA_*, TORCH_*, PATH, CC, ...); any variable with a secret
    word in its name is kept only as ``<redacted>``; secret values inside other values are scrubbed.
    """
    redactor = Redactor(environ)
    out: dict[str, str] = {}
    for name in sorted(environ):
        if is_secret_name(name):
            out[name] = REDACTED
        elif is_relevant_name(name):
            out[name] = redactor.text(str(environ[name]))
    return out


# --------------------------------------------------------------------------------------------
# Storing and reading


def _get(data: Mapping, *path, default=None):
    for key in path:
        if isinstance(data, Mapping) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return default
    return data


def snapshot_columns(data: Mapping) -> dict:
    """The indexed columns of ``env_snapshots`` derived from a snapshot's data."""
    commit = _get(data, "git", "commit")
    if commit and _get(data, "git", "dirty"):
        commit = f"{commit}-dirty"
    return {
        "host": data.get("host"),
        "python_version": _get(data, "python", "version"),
        "torch_version": _get(data, "torch", "version"),
        "torch_cuda": _get(data, "torch", "cuda"),
        "nvcc_version": _get(data, "toolchain", "nvcc_version"),
        "driver_version": data.get("driver"),
        "gpu_name": _get(data, "gpus", 0, "name"),
        "gpu_cc": _get(data, "gpus", 0, "cc"),
        "git_commit": commit,
    }


def store_snapshot(db, data: Mapping, *, session_id: str | None, step_id: str | None,
                   taken_at: str) -> int:
    """Insert one snapshot row; ``data`` must already be scrubbed. Returns the row id."""
    row = {"session_id": session_id, "step_id": step_id, "taken_at": taken_at,
           **snapshot_columns(data), "data": json.dumps(data, sort_keys=True, default=str)}
    with db.conn:
        return db["env_snapshots"].insert(row).last_pk


def _snapshot_row(db, session: dict) -> dict:
    rows = list(db.query(
        "SELECT * FROM env_snapshots WHERE session_id = ? ORDER BY taken_at DESC, id DESC LIMIT 1",
        [session["id"]]))
    if not rows:
        raise NoSnapshot(
            f"session {session['number']} has no environment snapshot; "
            "run 'sessionkit step preflight' while it is open")
    return _with_session(rows[0], session)


def snapshot_data(text) -> dict:
    """A snapshot's ``data`` column read back as a dict. A row that does not hold what
    :func:`store_snapshot` writes (not JSON, not an object; a damaged or foreign row) reads as {};
    of the parts readers look into, ``gpus`` keeps only its objects and ``torch``, ``toolchain``,
    ``git`` and ``python`` are left out unless they are objects."""
    if isinstance(text, str):
        try:
            text = json.loads(text or "{}")
        except (ValueError, RecursionError):  # not JSON, or nested too deep
            text = None
    data = dict(text) if isinstance(text, dict) else {}
    if "gpus" in data:
        gpus = data["gpus"]
        data["gpus"] = [g for g in gpus if isinstance(g, dict)] if isinstance(gpus, list) else []
    for key in ("torch", "toolchain", "git", "python"):
        if key in data and not isinstance(data[key], dict):
            del data[key]
    return data


def _with_session(row: dict, session: dict) -> dict:
    return {"session": {"number": session["number"], "id": session["id"], "name": session["name"]},
            "taken_at": row["taken_at"], "step_id": row["step_id"], "id": row["id"],
            "data": snapshot_data(row["data"])}


def _latest_snapshot_sessions(db, limit: int) -> list[dict]:
    """Sessions with a snapshot, newest session first."""
    return [dict(r) for r in db.query(
        "SELECT s.* FROM sessions s WHERE EXISTS "
        "(SELECT 1 FROM env_snapshots e WHERE e.session_id = s.id) "
        "ORDER BY s.number DESC LIMIT ?", [limit])]


def load_snapshot(db, ref: str | int | None = None) -> dict:
    """The newest snapshot of a session (number, id, name or ``last``); default: the newest session
    that has one. Returns ``{"session", "taken_at", "step_id", "id", "data"}``."""
    from .sessions import get_session

    if ref is None:
        found = _latest_snapshot_sessions(db, 1)
        if not found:
            raise NoSnapshot("no session has an environment snapshot yet; "
                             "run 'sessionkit step preflight' in an open session")
        return _snapshot_row(db, found[0])
    return _snapshot_row(db, get_session(db, ref))


def snapshot_pair(db, a: str | int | None = None, b: str | int | None = None) -> tuple[dict, dict]:
    """The snapshots to compare: the last two sessions that have one by default; with one reference,
    that session against the newest session with a snapshot."""
    from .sessions import get_session

    if a is None and b is None:
        found = _latest_snapshot_sessions(db, 2)
        if len(found) < 2:
            raise NoSnapshot(
                f"env diff needs two sessions with an environment snapshot, found {len(found)}; "
                "run 'sessionkit step preflight' in each session")
        return _snapshot_row(db, found[1]), _snapshot_row(db, found[0])
    first = _snapshot_row(db, get_session(db, a))
    if b is None:
        found = _latest_snapshot_sessions(db, 1)
        second = _snapshot_row(db, found[0])
    else:
        second = _snapshot_row(db, get_session(db, b))
    return first, second


# --------------------------------------------------------------------------------------------
# Comparing


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists of dicts by index (``gpus[0].name``); other lists whole."""
    out: dict[str, Any] = {}
    if isinstance(data, Mapping):
        if not data and prefix:
            out[prefix] = {}
        for key in data:
            out.update(flatten(data[key], f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and any(isinstance(v, Mapping) for v in data):
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}[{i}]"))
    else:
        out[prefix] = list(data) if isinstance(data, tuple) else data
    return out


def diff_snapshots(a: Mapping, b: Mapping, *, ignore: tuple[str, ...] = DIFF_IGNORE) -> list[dict]:
    """What changed from snapshot ``a`` to ``b``: ``[{"key", "a", "b"}]`` sorted by key.

    A key missing on one side has ``None`` there. Top-level keys in ``ignore`` (momentary readings such
    as clocks and free disk, kept under ``state``) are left out.
    """
    fa = {k: v for k, v in flatten(dict(a)).items() if k.split(".")[0].split("[")[0] not in ignore}
    fb = {k: v for k, v in flatten(dict(b)).items() if k.split(".")[0].split("[")[0] not in ignore}
    changes = []
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key), fb.get(key)
        if va != vb:
            changes.append({"key": key, "a": va, "b": vb})
    return changes


def diff_sessions(db, a=None, b=None) -> dict:
    """:func:`snapshot_pair` and :func:`diff_snapshots` together, as JSON-able data."""
    first, second = snapshot_pair(db, a, b)
    return {
        "a": {**first["session"], "taken_at": first["taken_at"], "host": first["data"].get("host")},
        "b": {**second["session"], "taken_at": second["taken_at"], "host": second["data"].get("host")},
        "changes": diff_snapshots(first["data"], second["data"]),
    }


# --------------------------------------------------------------------------------------------
# Text


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(str(v) for v in value) if value else "(empty)"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "(empty)"
    return str(value)


def _label(side: dict) -> str:
    when = (side.get("taken_at") or "")[:19].replace("T", " ")
    host = f" on {side['host']}" if side.get("host") else ""
    return f"session {side['number']} ({when} UTC{host})"


def format_diff(result: dict) -> str:
    lines = [f"{_label(result['a'])} -> {_label(result['b'])}"]
    changes = result["changes"]
    if not changes:
        lines.append("  no differences")
        return "\n".join(lines)
    width = min(36, max(len(c["key"]) for c in changes))
    for change in changes:
        lines.append(f"  {change['key'].ljust(width)}  {_show(change['a'])}  ->  {_show(change['b'])}")
    plural = "difference" if len(changes) == 1 else "differences"
    lines.append(f"{len(changes)} {plural}")
    return "\n".join(lines)


def format_snapshot(snapshot: dict) -> str:
    s = snapshot["session"]
    when = (snapshot.get("taken_at") or "")[:19].replace("T", " ")
    lines = [f"Environment of session {s['number']} ({s['name']}), taken {when} UTC"]
    flat = flatten(snapshot["data"])
    width = min(36, max((len(k) for k in flat), default=0))
    for key, value in flat.items():
        lines.append(f"  {key.ljust(width)}  {_show(value)}")
    return "\n".join(lines)

"""Log sessions to an MLflow tracking server: one run per session, a nested run per step.

Needs the optional ``[mlflow]`` extra (the MLflow client, ``mlflow-skinny``). What is logged:

- params: ``objective``, ``budget_s``, ``gpu_rate_usd_per_h``, ``ai_rate_usd_per_h``, ``plan``,
  ``step_budgets`` (JSON) and ``grid`` (the bench grid of the last bench step);
- tags: ``sessionkit.session_id`` (the UUID that finds the run again, with ``sessionkit.kind`` =
  ``session``; step runs have ``sessionkit.step_id`` and ``sessionkit.kind`` = ``step``), ``sessionkit.number``,
  ``sessionkit.status``, ``host``, ``gpu``, ``torch``, ``cuda``, ``git_commit`` (also as
  ``mlflow.source.git.commit``);
- metrics of the session run: ``duration_s``, ``cost_usd``, ``gpu_cost_usd``, ``ai_cost_usd``,
  ``geomean_speedup`` and ``best_speedup`` (ours over SDPA), and per (implementation, config) of the
  last bench step ``bench.<impl>.<config>.tflops`` and ``bench.<impl>.<config>.latency_ms``;
- metrics of each step run: ``duration_s``, ``budget_s``, ``cost_usd`` and the step's own metrics
  (``<key>`` or ``<key>.<subject>``);
- artifacts of the session run: ``report/session-N.md`` with its PNG plots, ``bench/bench-N.csv``.

Pushing again finds the runs by their ``sessionkit.session_id`` / ``sessionkit.step_id`` tags and
updates them: tags are overwritten, metrics are logged again at the time of the push (MLflow shows
the latest value and keeps the earlier ones as the metric's history), artifacts are replaced. MLflow params cannot change once logged; a param whose value
changed since the last push is left as it was and reported in ``params_kept``.

Tracking URIs: ``http://`` and ``https://`` servers, and ``sqlite:///FILE.db`` whose folder exists
(MLflow 3 no longer serves its plain-folder store); an experiment created in a SQLite store keeps
its artifacts in ``mlruns/`` beside FILE.db. Anything else, or a URI that does not parse, is a
:class:`~sessionkit.errors.UsageError` before anything is sent. An HTTP server is probed with one TCP
connection (5 s) first, and the push runs with ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=2``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` (seconds) unless those
are set in the environment already: an unreachable server is an error within seconds, not after
MLflow's minutes of retries.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .costs import session_costs
from .errors import SessionkitError, UsageError, first_line
from .sessions import get_session, list_sessions, session_steps
from .timefmt import now_iso, parse_iso

SESSION_TAG = "sessionkit.session_id"
STEP_TAG = "sessionkit.step_id"
KIND_TAG = "sessionkit.kind"  # "session" or "step"
DEFAULT_EXPERIMENT = "sessionkit"
_MLFLOW_STATUS = {"open": "RUNNING", "passed": "FINISHED", "failed": "FAILED", "abandoned": "KILLED"}
_STEP_STATUS = {"running": "RUNNING", "passed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED",
                "skipped": "FINISHED"}


class MlflowUnavailable(SessionkitError):
    """The MLflow client is not installed, or the tracking server cannot be reached."""


@dataclass
class PushResult:
    """One pushed session: its MLflow run, whether the run was created or updated, and counts."""

    session_id: str
    number: int
    run_id: str
    created: bool
    step_runs: int
    metrics: int
    params: int
    artifacts: list[str] = field(default_factory=list)
    params_kept: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def metric_key(*parts) -> str:
    """An MLflow metric name from parts: characters MLflow refuses become ``_``; parts join with
    ``.``. E.g. ``("bench", "ours", "bf16 B4 H16 S1024 D128 causal", "tflops")`` ->
    ``bench.ours.bf16_B4_H16_S1024_D128_causal.tflops``."""
    return ".".join(re.sub(r"[^A-Za-z0-9_\-./]", "_", str(p).strip()).strip("_") or "_" for p in parts)


def _ms(iso: str | None) -> int | None:
    moment = parse_iso(iso)
    return None if moment is None else int(moment.timestamp() * 1000)


TRACKING_SCHEMES = ("http", "https", "sqlite")
# MLflow's own HTTP settings for a push, unless the environment sets them (MLflow reads them per request)
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROBE_TIMEOUT_S = 5.0


def check_tracking_uri(uri: str) -> urllib.parse.SplitResult:
    """Parse and check a tracking URI before MLflow sees it: ``http(s)://HOST[:PORT]/...`` or
    ``sqlite:///PATH`` (relative) / ``sqlite:////PATH`` (absolute) whose folder exists. Returns the
    parsed URI; raises :class:`UsageError` with one line otherwise."""
    hint = "use http(s)://HOST:PORT or sqlite:///PATH.db"
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise UsageError(f"tracking URI {uri!r} does not parse ({exc}); {hint}") from None
    scheme = parts.scheme.lower()
    if scheme not in TRACKING_SCHEMES:
        what = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise UsageError(f"tracking URI {uri!r} has {what}; {hint}")
    if scheme in ("http", "https") and not parts.hostname:
        raise UsageError(f"tracking URI {uri!r} names no host; {hint}")
    if scheme == "sqlite":
        if parts.netloc or not uri.lower().startswith("sqlite:///"):
            raise UsageError(f"tracking URI {uri!r}: a SQLite store is sqlite:///PATH.db (relative) or "
                             "sqlite:////PATH.db (absolute)")
        path = Path(urllib.parse.unquote(uri[len("sqlite:///"):].split("?", 1)[0]))
        if not path.name or not path.parent.is_dir():
            raise UsageError(f"tracking URI {uri!r}: no folder {str(path.parent)!r} to hold the SQLite file")
    return parts


def sqlite_artifact_location(uri: str) -> str | None:
    """For a ``sqlite:///PATH`` store, the ``file://`` URI of the folder ``mlruns`` beside PATH, where
    a new experiment keeps its artifacts (MLflow's own default is ``./mlruns`` under the working
    directory of whoever creates it); None for a server, which has its own artifact store."""
    if not uri.lower().startswith("sqlite:///"):
        return None
    path = Path(urllib.parse.unquote(uri[len("sqlite:///"):].split("?", 1)[0]))
    return (path.resolve().parent / "mlruns").as_uri()


def probe_server(parts: urllib.parse.SplitResult, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Open (and close) one TCP connection to an HTTP(S) tracking server; raises
    :class:`MlflowUnavailable` when that fails within ``timeout`` seconds."""
    if parts.scheme.lower() not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise MlflowUnavailable(f"cannot reach the MLflow tracking server at {parts.hostname}:{port}: "
                                f"{why}") from None


@contextlib.contextmanager
def _http_settings():
    """:data:`HTTP_DEFAULTS` in the environment for the block, where the user has not set them."""
    added = [k for k in HTTP_DEFAULTS if k not in os.environ]
    for k in added:
        os.environ[k] = HTTP_DEFAULTS[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _client_missing() -> str:
    from .extras import install_hint

    return f"the MLflow client is not installed: {install_hint('mlflow')}"


def _client(tracking_uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MlflowUnavailable(_client_missing()) from None
    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location`` when given) if missing."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise UsageError(f"MLflow experiment {name!r} is deleted; restore it or pass another --experiment")
            return found.experiment_id
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as exc:
        raise MlflowUnavailable(f"MLflow tracking server: {first_line(exc)}") from None


def _find_run(client, experiment_id: str, tag: str, value: str, kind: str):
    runs = client.search_runs([experiment_id], max_results=2, filter_string=(
        f"tags.`{tag}` = '{value}' and tags.`{KIND_TAG}` = '{kind}'"))
    return runs[0] if runs else None


def session_payload(db, session: dict, folder: Path, *, plots: bool = True) -> dict:
    """What one session's run holds, computed from the database; the report, its plots and the
    bench CSV are written under ``folder``. Returns ``{"params", "tags", "metrics", "artifacts",
    "steps": [{"step", "tags", "metrics"}], "start_ms", "end_ms", "status"}``."""
    from .report import session_report

    report = session_report(db, session, out=folder / f"session-{session['number']}.md", plots=plots)
    data = report.data
    steps = session_steps(db, session["id"])
    now = now_iso()
    costs = session_costs(session, steps, now=now)
    env = data["environment"] or {}
    facts = {f["name"]: f["value"] for f in env.get("facts", [])}
    bench = data["bench"]

    params = {"objective": session["objective"], "budget_s": session["budget_s"],
              "gpu_rate_usd_per_h": session["gpu_rate_usd_per_h"],
              "ai_rate_usd_per_h": session["ai_rate_usd_per_h"],
              "plan": json.dumps(session["plan"]), "step_budgets": json.dumps(session["step_budgets"],
                                                                               sort_keys=True),
              "grid": bench.get("grid") if bench else None}
    params = {k: str(v) for k, v in params.items() if v is not None}
    commit = facts.get("git commit") or session.get("git_commit")
    tags = {SESSION_TAG: session["id"], KIND_TAG: "session", "sessionkit.number": str(session["number"]),
            "sessionkit.name": session["name"], "sessionkit.status": session["status"],
            "host": session.get("host"), "gpu": facts.get("GPU"), "torch": facts.get("torch"),
            "cuda": facts.get("torch CUDA"), "git_commit": commit, "mlflow.source.git.commit": commit,
            "mlflow.runName": f"session {session['number']}: {session['name']}"}
    tags = {k: str(v) for k, v in tags.items() if v not in (None, "")}

    metrics = {"duration_s": costs["wall_s"], "cost_usd": costs["total_usd"],
               "gpu_cost_usd": costs["gpu_usd"], "ai_cost_usd": costs["ai_usd"]}
    if bench:
        metrics["geomean_speedup"] = bench["geomean_speedup"]
        metrics["best_speedup"] = bench["best_speedup"]
        for row in bench["raw"]:
            if row["status"] != "ok":
                continue
            from .report.data import config_label

            label = config_label(row)
            metrics[metric_key("bench", row["impl"], label, "tflops")] = row["tflops"]
            metrics[metric_key("bench", row["impl"], label, "latency_ms")] = row["latency_ms"]
    metrics = {k: float(v) for k, v in metrics.items() if v is not None}

    artifacts = [(report.path, "report")] + [(img, "report") for img in report.images]
    if bench and bench["raw"]:
        csv_path = folder / f"bench-{session['number']}.csv"
        columns = list(bench["raw"][0])
        with open(csv_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(bench["raw"])
        artifacts.append((csv_path, "bench"))

    step_runs = []
    for st in steps:
        s_metrics = {"duration_s": costs["per_step"][st["id"]]["seconds"], "budget_s": st["budget_s"],
                     "cost_usd": costs["per_step"][st["id"]]["total_usd"]}
        for key, subject, value in db.execute(
                "SELECT key, subject, value FROM metrics WHERE step_id = ? AND value IS NOT NULL ORDER BY id",
                [st["id"]]):
            s_metrics[metric_key(key, subject) if subject else metric_key(key)] = value
        step_runs.append({
            "step": st,
            "tags": {STEP_TAG: st["id"], SESSION_TAG: session["id"], KIND_TAG: "step", "sessionkit.step": st["name"],
                     "sessionkit.seq": str(st["seq"]), "sessionkit.status": st["status"],
                     "mlflow.runName": f"{st['seq']:02d} {st['name']}"},
            "metrics": {k: float(v) for k, v in s_metrics.items() if v is not None},
        })
    return {"params": params, "tags": tags, "metrics": metrics, "artifacts": artifacts,
            "steps": step_runs, "start_ms": _ms(session["started_at"]),
            "end_ms": _ms(session["ended_at"]), "status": _MLFLOW_STATUS[session["status"]]}


def _log(client, run_id: str, metrics: dict, tags: dict, timestamp_ms: int, params: dict | None = None,
         existing_params: dict | None = None) -> list[str]:
    from mlflow.entities import Metric, Param, RunTag

    kept = []
    new_params = []
    for k, v in (params or {}).items():
        old = (existing_params or {}).get(k)
        if old is None:
            new_params.append(Param(k, v))
        elif old != v:
            kept.append(k)
    metric_items = [Metric(k, v, timestamp_ms, 0) for k, v in metrics.items()]
    tag_items = [RunTag(k, v) for k, v in tags.items()]
    # log_batch takes at most 100 params, 100 tags and 1000 metrics per call
    for i in range(0, len(new_params), 100):
        client.log_batch(run_id, params=new_params[i:i + 100])
    for i in range(0, len(tag_items), 100):
        client.log_batch(run_id, tags=tag_items[i:i + 100])
    for i in range(0, len(metric_items), 1000):
        client.log_batch(run_id, metrics=metric_items[i:i + 1000])
    return kept


def _terminate(client, run_id: str, status: str, end_ms: int | None) -> None:
    """Set a run's final status; the client's "View run at" lines stay off our stdout."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        client.set_terminated(run_id, status, end_time=end_ms)


def push_session(client, experiment_id: str, db, session: dict, *, plots: bool = True) -> PushResult:
    """Create or update the MLflow run of one session and its nested step runs."""
    with tempfile.TemporaryDirectory(prefix="sessionkit-mlflow-") as tmp:
        payload = session_payload(db, session, Path(tmp), plots=plots)
        timestamp = _ms(now_iso())  # the latest push is the value MLflow shows
        existing = _find_run(client, experiment_id, SESSION_TAG, session["id"], "session")
        created = existing is None
        if created:
            run = client.create_run(experiment_id, start_time=payload["start_ms"],
                                    tags={SESSION_TAG: session["id"], KIND_TAG: "session"})
            run_id, old_params = run.info.run_id, {}
        else:
            run_id, old_params = existing.info.run_id, dict(existing.data.params)
        kept = _log(client, run_id, payload["metrics"], payload["tags"], timestamp,
                    payload["params"], old_params)
        for path, folder in payload["artifacts"]:
            client.log_artifact(run_id, str(path), artifact_path=folder)
        step_metrics = 0
        for entry in payload["steps"]:
            st = entry["step"]
            found = _find_run(client, experiment_id, STEP_TAG, st["id"], "step")
            if found is None:
                child = client.create_run(experiment_id, start_time=_ms(st["started_at"]),
                                          tags={"mlflow.parentRunId": run_id, STEP_TAG: st["id"],
                                                KIND_TAG: "step"})
                child_id = child.info.run_id
            else:
                child_id = found.info.run_id
            _log(client, child_id, entry["metrics"], {**entry["tags"], "mlflow.parentRunId": run_id},
                 timestamp)
            step_metrics += len(entry["metrics"])
            if st["status"] != "running":
                _terminate(client, child_id, _STEP_STATUS[st["status"]], _ms(st["ended_at"]))
        if payload["status"] != "RUNNING":
            _terminate(client, run_id, payload["status"], payload["end_ms"])
        return PushResult(session_id=session["id"], number=session["number"], run_id=run_id,
                          created=created, step_runs=len(payload["steps"]),
                          metrics=len(payload["metrics"]) + step_metrics, params=len(payload["params"]),
                          artifacts=[f"{folder}/{Path(p).name}" for p, folder in payload["artifacts"]],
                          params_kept=kept)


def push_sessions(db, refs, *, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT,
                  plots: bool = True) -> list[PushResult]:
    """Push the sessions named by ``refs`` (numbers, ids, names, ``last``; all when empty) to the
    MLflow tracking server at ``tracking_uri``, in ``experiment`` (created when missing).

    Raises :class:`UsageError` for a tracking URI that :func:`check_tracking_uri` refuses,
    :class:`MlflowUnavailable` without the client or when the server cannot be reached (within
    seconds: see the module's notes), :class:`~sessionkit.errors.SessionNotFound` for an unknown
    session.
    """
    if not tracking_uri:
        raise UsageError("a tracking server is required: --tracking-uri URI")
    sessions = [get_session(db, r) for r in refs] if refs else \
        [get_session(db, row["id"]) for row in reversed(list_sessions(db))]
    parts = check_tracking_uri(tracking_uri)
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise MlflowUnavailable(_client_missing()) from None
    probe_server(parts)
    results = []
    with _http_settings():
        try:
            client = _client(tracking_uri)
            experiment_id = _experiment_id(client, experiment, sqlite_artifact_location(tracking_uri))
            for session in sessions:
                results.append(push_session(client, experiment_id, db, session, plots=plots))
        except MlflowException as exc:
            raise MlflowUnavailable(f"MLflow: {first_line(exc)}") from None
        except (OSError, ValueError) as exc:  # a connection dropped mid-push, a URI MLflow refuses
            raise MlflowUnavailable(f"MLflow: {type(exc).__name__}: {first_line(exc)}") from None
    return results


def format_push(results: list[PushResult], tracking_uri: str) -> str:
    lines = []
    for r in results:
        lines.append(f"session {r.number}: run {r.run_id} {'created' if r.created else 'updated'} "
                     f"({r.step_runs} step runs, {r.metrics} metrics, {r.params} params, "
                     f"{len(r.artifacts)} artifacts)")
        if r.params_kept:
            lines.append(f"  params changed since the last push, kept as they were (MLflow params "
                         f"cannot change): {', '.join(r.params_kept)}")
    lines.append(f"tracking server: {tracking_uri}")
    return "\n".join(lines)

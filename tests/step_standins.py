"""Stand-ins that let the bench and profile steps run whole on a CPU, through their real code.

- :func:`fake_bench_gpu`: a stand-in torch with a CUDA device and a stand-in timer; the step's
  passes, result rows, samples, CSV and metrics are the real ones.
- :func:`files_source`: a database of ended sessions whose one step wrote and recorded files of
  random bytes (what a merge copies).
- :func:`write_fake_ncu` / :func:`fake_ncu`: a stand-in ``ncu`` script that lists metrics,
  "profiles" by writing a report and imports by printing ``tests/data/ncu_sample.csv`` (captured
  from torch SDPA on an H100), or for ``--page source`` ``tests/data/ncu_source_sass_sample.csv``
  (every 8th instruction of our sm90 kernel's SASS page, D=64 causal, on an H200).
"""

from __future__ import annotations

import os

import stat
import sys
import types
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent / "data" / "ncu_sample.csv"
SASS_SAMPLE = Path(__file__).resolve().parent / "data" / "ncu_source_sass_sample.csv"
SOURCE_FAILURE = "==ERROR== Failed to load the report's source counters."
H100 = "NVIDIA H100 80GB HBM3"
PERM_OUTPUT = ("==PROF== Connected to process 4242 (/usr/bin/python3.12)\n"
               "==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU "
               "Performance Counters on the target device 0.\n")
GRAPH_SPEEDUP = 1.25  # the stand-in timer's CUDA-graph replays are this much faster


def fake_bench_gpu(monkeypatch) -> list:
    """Install the bench stand-ins; returns the list of visits the timer sees:
    (implementation names, whether earlier samples were known, the rule's minimum samples).

    Each visit's latency is ``1 + 0.01 * visits so far`` ms, twice that for ``sdpa``, and
    :data:`GRAPH_SPEEDUP` times less with ``--graph``.
    """
    from sessionkit.bench import timing
    from sessionkit.bench.timing import ImplRun

    fake_torch = types.SimpleNamespace(
        __version__="0.0-fake",
        cuda=types.SimpleNamespace(is_available=lambda: True, current_device=lambda: 0),
        device=lambda kind, index: types.SimpleNamespace(type=kind, index=index))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    visits = []

    class FakeTimer:
        def __init__(self, torch, device, *, probe=None, graph=False, cooldown=0.0):
            self.device, self.cooldown, self.graph = device, cooldown, graph

        def measure(self, impls, sets, *, rule, deadline, known=None, **_):
            visits.append(({i.name for i in impls}, bool(known), rule.min_samples))
            base = (1.0 + 0.01 * len(visits)) / (GRAPH_SPEEDUP if self.graph else 1.0)
            return [ImplRun(i.name, samples=[base * (2 if i.name == "sdpa" else 1)] * 12,
                            throttled=[False] * 12, reasons=[0] * 12, clocks=[1980.0] * 12,
                            launches=1, memory_mb=5.0, estimate_ms=base)
                    for i in impls]

    monkeypatch.setattr(timing, "Timer", FakeTimer)
    monkeypatch.setattr(timing.Probe, "for_torch_device", classmethod(
        lambda cls, index: cls(reason="no NVML in this test")))
    monkeypatch.setattr(timing, "ours_impl",
                        lambda torch, config: (timing.Impl("ours", lambda q, k, v: None), None))
    monkeypatch.setattr(timing, "sdpa_impls", lambda torch, config: [
        timing.Impl("sdpa", lambda q, k, v: None, reference=True),
        timing.Impl("sdpa_flash", lambda q, k, v: None)])
    monkeypatch.setattr(timing, "make_input_sets", lambda *a, **k: [])
    monkeypatch.setattr(timing, "preheat", lambda timer, cap_s: {
        "seconds": 1.0, "temp_start_c": None, "temp_end_c": None, "steady": False})
    monkeypatch.setattr(timing, "matmul_ceiling", lambda timer: (700.0, 1.57))
    return visits


def write_fake_ncu(tmp_path, *, perm=False, source_text: str | None = None,
                   source_fails: bool = False) -> str:
    """Write the stand-in ncu into ``tmp_path`` (its calls go to ``ncu-calls.txt`` there).
    ``--page source`` prints ``source_text`` (default: :data:`SASS_SAMPLE`'s text), or with
    ``source_fails`` :data:`SOURCE_FAILURE` on stderr and exits 1."""
    if source_text is None:
        source_text = SASS_SAMPLE.read_text()
    (tmp_path / "ncu-source.csv").write_text(source_text)
    script = tmp_path / "ncu"
    script.write_text(f'''#!{sys.executable}
import sys, json
args = sys.argv[1:]
with open({str(tmp_path / "ncu-calls.txt")!r}, "a") as fh:
    fh.write(json.dumps(args) + "\\n")
if "--query-metrics" in args:
    print("lts__t_sector_hit_rate   Ratio   hit rate\\ndram__bytes_read   Counter   bytes")
elif "--import" in args and "source" in args and {source_fails!r}:
    sys.stderr.write({SOURCE_FAILURE!r} + "\\n")
    sys.exit(1)
elif "--import" in args and "source" in args:
    sys.stdout.write(open({str(tmp_path / "ncu-source.csv")!r}).read())
elif "--import" in args:
    sys.stdout.write(open({str(SAMPLE)!r}).read())
elif {perm!r}:
    sys.stdout.write({PERM_OUTPUT!r})
    sys.exit(1)
else:
    open(args[args.index("--export") + 1] + ".ncu-rep", "wb").write(b"report")
    print("PROFILE_TARGET " + json.dumps({{"gpu_name": {H100!r}, "torch": "2.11.0+cu130"}}))
''')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def fake_ncu(tmp_path, monkeypatch, *, perm=False, **source) -> str:
    """The stand-in ncu found on the PATH, on an H100 that the profile step sees (``source``: the
    keywords of :func:`write_fake_ncu` for ``--page source``)."""
    from sessionkit import profile
    from sessionkit.toolchain import Found

    path = write_fake_ncu(tmp_path, perm=perm, **source)
    monkeypatch.setattr("sessionkit.toolchain.find_cuda_tool", lambda tool: Found(path, True, "PATH"))
    monkeypatch.setattr(profile, "gpu_facts", lambda: (None, H100))
    return path


def files_source(path: Path, step: str, sizes: list[int], sessions: int = 1) -> None:
    """A database at ``path`` with ``sessions`` ended sessions, each with one step named ``step``
    that wrote and recorded a file of random bytes of each of ``sizes``."""
    from sessionkit.runner import run_step
    from sessionkit.sessions import end_session, start_session
    from sessionkit.db import open_db
    from sessionkit.steps import Step, StepResult

    class Files(Step):
        name = step
        description = "Write and record files."
        budget_s = 60.0

        def run(self, context):
            for i, size in enumerate(sizes):
                out = context.workdir / f"{step}-{i:04d}.bin"
                out.write_bytes(os.urandom(size))
                context.artifact(out, "data")
            return StepResult("passed", message="wrote them")

    db = open_db(path, create=True)
    for _ in range(sessions):
        s = start_session(db, "files", objective="a session with artifacts")
        run_step(db, s, Files(), stream=open(os.devnull, "w"))
        end_session(db, s, outcome="done", status="passed")
    db.conn.close()

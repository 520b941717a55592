"""How much the CLI costs: start-up of --help and status, and the overhead of `step run`.

Run: python benchmarks/cli_overhead.py [--repeats 20]

Prints the median wall time of each command over fresh processes, and checks that neither --help nor
status imports torch, jinja2 or pynvml. Targets: --help and status under 0.25 s each; `step run x -- true`
adds under 150 ms over `true` alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HEAVY = ("torch", "jinja2", "pynvml", "numpy", "matplotlib")


def sessionkit_argv() -> list[str]:
    exe = shutil.which("sessionkit")
    return [exe] if exe else [sys.executable, "-m", "sessionkit"]


def wall(argv: list[str], env: dict, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - t0)
    return times


def heavy_imports(args: list[str], env: dict) -> list[str]:
    code = ("import sys\nfrom sessionkit.cli import cli\n"
            f"try:\n    cli({args!r}, prog_name='sessionkit')\nexcept SystemExit:\n    pass\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stderr
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return [m for m in last.split(",") if m]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    sk = sessionkit_argv()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, SESSIONKIT_DB=os.path.join(tmp, "s.db"))
        subprocess.run(sk + ["start", "--objective", "overhead"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        for i in range(5):  # a session with some history, as status would see it
            subprocess.run(sk + ["step", "run", f"warm{i}", "--", "true"], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        true = shutil.which("true")
        rows = [
            ("sessionkit --help", wall(sk + ["--help"], env, args.repeats), 0.25),
            ("sessionkit status", wall(sk + ["status"], env, args.repeats), 0.25),
            ("true", wall([true], env, args.repeats), None),
            ("sessionkit step run x -- true", wall(sk + ["step", "run", "x", "--", true], env, args.repeats), None),
        ]
        med = {name: statistics.median(t) for name, t, _ in rows}
        overhead = med["sessionkit step run x -- true"] - med["true"]
        print(f"{'command':34s} {'median s':>9s} {'min s':>7s} {'max s':>7s}  target")
        ok = True
        for name, times, target in rows:
            verdict = ""
            if target is not None:
                verdict = f"< {target} s: {'ok' if med[name] < target else 'MISSED'}"
                ok &= med[name] < target
            print(f"{name:34s} {med[name]:9.3f} {min(times):7.3f} {max(times):7.3f}  {verdict}")
        verdict = "ok" if overhead < 0.150 else "MISSED"
        ok &= overhead < 0.150
        print(f"{'step run overhead over true':34s} {overhead:9.3f} {'':7s} {'':7s}  < 0.150 s: {verdict}")
        for cmd in (["--help"], ["status"]):
            heavy = heavy_imports(cmd, env)
            ok &= not heavy
            print(f"heavy modules imported by {' '.join(cmd)!r}: {', '.join(heavy) or 'none'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Where the sm90 consumers wait: the SM clock cycles each consumer warpgroup spends in each kind of
wait, for one config, from a diagnostic build of the kernels (-DSK_SM90_WAIT_PROFILE=1).

    python benchmarks/wait_profile.py --config 32,32,512,512,64,bf16,1 [--runs 3]

The build adds `SK_SM90_WAIT_PROFILE=1` to $SESSIONKIT_NVCC_FLAGS (its own cached build): every
consumer thread times its waits with clock64, and a small kernel after each launch prints one
"sk_wait" line per consumer warpgroup (csrc/sm90/kernel.cuh). The clock reads add a few
instructions to the loop, so the build is slower than the shipped one: read the shares, not the
speed (the three-consumer D=64 kernels, non-causal and causal of long keys, at 160 registers a
thread, may even spill in it).
Kinds: tile (the next tile's index, dynamic schedule), q / k / v (the TMA loads: mbarrier waits on
Q, K and V), turn (the pingpong turn: the other consumers' GEMMs), s (Q K^T not yet done),
pv (P V not yet done), epilogue (the rest of the epilogue, not a wait: normalising O, the tail
split's merge, the TMA store's issue), and its parts counted apart from it: efinal (the softmax's
finalize: the row sums across the quad, 1 / sum, the LSE), estore (the stores of O and the LSE,
into the staging or to global memory) and, where O leaves by TMA store, ostore (waiting for the
previous tile's store to have read the O staging, and the barrier after that) and osync (the
proxy fence and the barrier before the store). What is left of the
consumer's time is its own work: softmax, issuing GEMMs, bookkeeping. "tiles" counts the tiles a
consumer computed; the waits of a consumer that only keeps pace on a tile whose rows all lie past
seq_len_q (D=64 non-causal, short keys) are counted, that tile is not. Needs a CUDA GPU with sm_90a.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

from sessionkit.argtypes import config_text, positive_int

KINDS = ("tile", "q", "k", "v", "turn", "s", "pv", "epilogue", "ostore", "osync", "efinal",
         "estore")
_LINE = re.compile(r"sk_wait cta (\d+) consumer (\d+) tiles (\d+) total (\d+) " +
                   " ".join(rf"{k} (\d+)" for k in KINDS))
MARKER = "== wait_profile run"


def parse(text: str) -> list[dict[str, int]]:
    """The "sk_wait" lines after the last run marker in ``text``, one dict per consumer warpgroup
    (cta, consumer, tiles, total and each of KINDS, in SM clock cycles)."""
    tail = text.rsplit(MARKER, 1)[-1]
    rows = []
    for match in _LINE.finditer(tail):
        values = list(map(int, match.groups()))
        rows.append(dict(zip(("cta", "consumer", "tiles", "total", *KINDS), values)))
    return rows


def summarize(rows: list[dict[str, int]]) -> str:
    """A table: for each kind, the mean cycles per consumer, per tile, and the share of the
    consumers' total time; then the part of the time in none of them (own work)."""
    if not rows:
        raise ValueError("no sk_wait lines: was the build made with -DSK_SM90_WAIT_PROFILE=1?")
    busy = [r for r in rows if r["tiles"] > 0]
    total = sum(r["total"] for r in busy)
    tiles = sum(r["tiles"] for r in busy)
    if not busy or total == 0:
        raise ValueError("no consumer ran a tile")
    lines = [f"{len(busy)} consumer warpgroups ran {tiles} tiles; mean {total / len(busy):,.0f} "
             f"cycles each, {total / tiles:,.0f} cycles per tile",
             f"{'kind':<10}{'cycles/consumer':>17}{'cycles/tile':>13}{'share':>8}"]
    waited = 0
    for kind in KINDS:
        cycles = sum(r[kind] for r in busy)
        waited += cycles
        lines.append(f"{kind:<10}{cycles / len(busy):>17,.0f}{cycles / tiles:>13,.0f}"
                     f"{100 * cycles / total:>7.1f}%")
    own = total - waited
    lines.append(f"{'own work':<10}{own / len(busy):>17,.0f}{own / tiles:>13,.0f}"
                 f"{100 * own / total:>7.1f}%")
    return "\n".join(lines)


def _child(config_text: str, runs: int) -> int:
    import torch

    from sessionkit.attention import parse_config
    from sessionkit.bench.timing import make_input_sets
    from sessionkit.kernels import flash_attention, load_extension

    config = parse_config(config_text)
    load_extension()
    q, k, v = make_input_sets(torch, config, torch.device("cuda"), 1)[0]
    for run in range(runs):
        print(f"{MARKER} {run}", flush=True)
        flash_attention(q, k, v, causal=config.causal, causal_alignment=config.causal_alignment,
                        enable_gqa=config.num_heads_k != config.num_heads)
        torch.cuda.synchronize()  # the device printf buffer is written out here
        sys.stdout.flush()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n", 1)[0].split()))
    parser.add_argument("--config", required=True, type=config_text, help="B,H,Sq,Sk,D,dtype,causal[,H_kv]")
    parser.add_argument("--runs", type=positive_int, default=3, help="launches; the last one is reported "
                                                             "(default: 3)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        from sessionkit.errors import SessionkitError

        try:
            return _child(args.config, args.runs)
        except SessionkitError as exc:  # no CUDA torch, no GPU, a failed build: its message alone
            print(exc, file=sys.stderr)
            return 1
    env = dict(os.environ)
    flags = env.get("SESSIONKIT_NVCC_FLAGS", "")
    env["SESSIONKIT_NVCC_FLAGS"] = (flags + " -DSK_SM90_WAIT_PROFILE=1").strip()
    proc = subprocess.run([sys.executable, __file__, "--child", "--config", args.config,
                           "--runs", str(args.runs)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        print(f"error: {said[-1] if said else f'exit {proc.returncode}'}", file=sys.stderr)
        return proc.returncode
    try:
        print(f"config {args.config} ({env['SESSIONKIT_NVCC_FLAGS']})")
        print(summarize(parse(proc.stdout)))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

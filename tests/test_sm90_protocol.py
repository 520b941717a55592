"""The sm90 kernel's synchronisation protocol, on an executable model of it
(tests/sm90_protocol_model.py): the producer, the consumers, the mbarrier phases, the pingpong
turns and the tile ring of each shipped kernel shape and of the per-consumer Q switch, over random
tile sequences (runs of key-less tiles, idle consumers, empty tail-split pieces, one-block tiles)
and random interleavings, must never deadlock, read a slot that does not hold what it expects, or
overwrite one that is still read. The model also shows the faults it exists to catch: the first
draft of the stagger (no turn on a key-less tile), a Q slot freed too early, the producer loading
every consumer's Q first, and a lag of three turns (which Traits refuses)."""

from __future__ import annotations

import pytest

from sm90_protocol_model import explore

BASE = dict(chunks=1, pingpong=True, keyless_turn=True, qstages=1, qpc=False, nmax=5)

# (C consumers, ring stages, Q slots, stagger, tile ring) of the shipped kernels (csrc/sm90/traits.cuh)
SHIPPED = {
    "d64_causal_shortkeys": dict(C=2, stages=4, qstages=2, stagger=1, ring=True, keyless=True),
    "d64_causal_midkeys": dict(C=3, stages=4, qstages=1, stagger=0, ring=True, keyless=True),
    "d64_causal": dict(C=3, stages=2, qstages=1, stagger=0, ring=True, keyless=True),
    "d64_noncausal": dict(C=3, stages=2, qstages=1, stagger=0, ring=False, idle=True,
                          pieces0=True),
    "d128_noncausal": dict(C=2, stages=2, qstages=2, stagger=0, ring=False, pieces0=True),
    "d128_causal_shortkeys": dict(C=2, stages=2, qstages=2, stagger=0, ring=True, keyless=True),
    "splitkv": dict(C=2, stages=2, qstages=1, stagger=0, ring=False, keyless=True),
}


def _explore(iters: int = 200, seed: int = 1, **cfg) -> dict:
    return explore({**BASE, **cfg}, iters, seed=seed)


@pytest.mark.parametrize("name", sorted(SHIPPED))
@pytest.mark.parametrize("qpc", [False, True], ids=["shipped", "q_per_consumer"])
def test_no_deadlock_or_wrong_read(name, qpc):
    fails = _explore(**SHIPPED[name], qpc=qpc)
    assert not fails, fails


@pytest.mark.parametrize("stagger, stages", [(1, 3), (2, 4)])
@pytest.mark.parametrize("qpc", [False, True], ids=["two_q_slots", "q_per_consumer"])
def test_staggers_of_one_and_two_turns_hold(stagger, stages, qpc):
    fails = _explore(C=2, stages=stages, qstages=2, stagger=stagger, ring=True, keyless=True,
                     qpc=qpc, seed=stagger)
    assert not fails, fails


@pytest.mark.parametrize("fault, cfg", [
    # The stagger's first draft: a key-less tile took no turn (two such tiles in a row hang).
    ("keyless tiles take no turn", dict(stagger=1, keyless_turn=False)),
    # A consumer frees its Q slot before its last Q K^T has read it.
    ("Q freed early", dict(stagger=1, qpc=True, mut_early_release=True)),
    # The producer loads the lagging consumer's Q before the first consumer's key blocks.
    ("every Q first", dict(stagger=2, qpc=True, mut_q_all_first=True)),
    # A lag of three turns (Traits caps the stagger at two).
    ("three turns", dict(stagger=3, stages=5)),
    # O staged in the Q rows, but the rows freed at the last Q K^T (before the O store).
    ("O in Q rows freed early", dict(stagger=1, stages=3, qstages=1, qpc=True, o_in_q=True)),
])
def test_the_model_catches_faults(fault, cfg):
    params = dict(C=2, stages=4, qstages=2, ring=True, keyless=True)
    params.update(cfg)
    assert _explore(iters=300, **params), f"the model missed: {fault}"


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("shape", ["d128_noncausal", "d128_causal_shortkeys"])
def test_the_d128_stagger_design_holds(shape, stages):
    """-DSK_SM90_STAGGER_D128 (docs/kernel-notes.md, 0f): at D=128 a stagger of one turn with
    per-consumer Q rows in which each consumer also stages its O, freeing them only after the O
    store has read them, on the switch's three-stage ring (and on two), with empty tail-split
    pieces that take a turn (non-causal, the switch's shape) or key-less tiles through the tile
    ring (causal, the design's other use)."""
    cfg = dict(SHIPPED[shape], stages=stages, qstages=1, qpc=True, stagger=1, o_in_q=True,
               q_after_epilogue=True, piece_turn=True)
    fails = _explore(iters=300, seed=stages, **cfg)
    assert not fails, fails

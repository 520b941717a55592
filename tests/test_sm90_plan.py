"""The shared-memory plan of the sm90 tile shapes (csrc/sm90/traits.cuh), read on the host from the
kernels' own header: every plan fits the 227 KB a CTA may use, two Q slots ship at D=128 non-causal,
in D=128 causal's short-keys variant and in D=64 causal's (for its staggered consumers) only, and
the two-slot Q switch (SK_SM90_Q_STAGES=2 for the other shapes) takes a second Q
slot only where it fits next to everything the one-slot plan has, so it never costs a shape its
TMA store of O."""

from __future__ import annotations

import pytest

from host_check import run_host_check

# Shapes whose O leaves by TMA store in the shipped plan (128-byte swizzle and room; the
# three-consumer D=64 tiles since v21).
TMA_STORE = {"d64_causal_shortkeys", "d64_causal_midkeys", "d64_causal", "d64_noncausal",
             "d64_noncausal_shortkeys", "d128_causal", "d128_causal_shortkeys", "d128_noncausal"}
# Shapes that ship with two Q slots.
TWO_Q_SHIPPED = {"d64_causal_shortkeys", "d128_causal_shortkeys", "d128_noncausal"}
# Shapes that ship with staggered consumers (Traits::kStagger), and by how many pingpong turns.
STAGGER_SHIPPED = {"d64_causal_shortkeys": 1}
# Shapes where a second Q slot does not fit: D=256 (64 KB per Q tile) and D=128's 176-key block.
NO_ROOM_FOR_TWO_Q = {"d128_noncausal_longkeys", "d256_causal", "d256_noncausal",
                     "d256_noncausal_splitkv"}


def _plans(tmp_path, *flags) -> dict[str, dict[str, int]]:
    out = run_host_check("sm90_plan_check.cu", tmp_path, flags)
    plans = {}
    for line in out.splitlines():
        name, *values = line.split()
        plans[name] = dict(zip(("block_m", "block_n", "q_stages", "tma_store_o", "smem", "smem_max",
                                "stages", "stagger"), map(int, values)))
    assert len(plans) == 16, out
    return plans


def test_shipped_plan_fits_and_has_two_q_slots_where_shipped(tmp_path):
    plans = _plans(tmp_path)
    for name, plan in plans.items():
        assert plan["q_stages"] == (2 if name in TWO_Q_SHIPPED else 1), name
        assert plan["stagger"] == STAGGER_SHIPPED.get(name, 0), (name, plan)
        assert plan["smem"] <= plan["smem_max"] == 227 * 1024, (name, plan)
        assert plan["tma_store_o"] == (name in TMA_STORE), (name, plan)
    assert plans["d256_noncausal"]["block_n"] == 80
    # D=64 causal's short-keys variant ships a four-stage K/V ring (the others two), on two
    # consumers; its long-keys kernel has D64 full's tile since v21: three consumers, 128-key blocks.
    ring4 = 2 * 4 * plans["d64_causal_shortkeys"]["block_n"] * 64 * 2
    assert plans["d64_causal_shortkeys"]["smem"] >= ring4 + 128 * 64 * 2
    assert plans["d64_causal_shortkeys"]["stages"] == 4
    assert plans["d64_causal_shortkeys"]["block_m"] == 128
    # The mid-keys variant (1025-2048 keys, v22) is the short-keys tile on three consumers: the
    # four-stage ring and 128-key blocks, 192 query rows, one Q slot and no stagger.
    mid = plans["d64_causal_midkeys"]
    assert (mid["block_m"], mid["block_n"], mid["stages"], mid["q_stages"], mid["stagger"]) == \
        (192, 128, 4, 1, 0), mid
    for name in ("d64_causal", "d64_noncausal", "d64_noncausal_shortkeys"):
        assert (plans[name]["block_m"], plans[name]["block_n"], plans[name]["stages"]) == (192, 128, 2), \
            (name, plans[name])


@pytest.mark.parametrize("flag", ["-DSK_SM90_Q_STAGES=2"])
def test_two_q_slots_only_where_they_fit_and_keep_the_tma_store(tmp_path, flag):
    one = _plans(tmp_path, "-DSK_SM90_Q_STAGES_D128=1", "-DSK_SM90_STAGGER=0")
    two = _plans(tmp_path, flag)
    for name in one:
        assert two[name]["q_stages"] == (1 if name in NO_ROOM_FOR_TWO_Q else 2), (name, two[name])
        assert two[name]["tma_store_o"] == one[name]["tma_store_o"], name
        assert two[name]["smem"] <= two[name]["smem_max"], (name, two[name])
        # one more Q tile (block_m rows of head_dim 2-byte elements) and its two barriers, or nothing
        head_dim = int(name.split("_")[0][1:])
        extra = two[name]["block_m"] * head_dim * 2 + 16 if two[name]["q_stages"] == 2 else 0
        assert two[name]["smem"] - one[name]["smem"] == extra, (name, one[name], two[name])


@pytest.mark.parametrize("flag, shapes, stages", [
    ("-DSK_SM90_STAGES_D64=4", ("d64_causal_shortkeys", "d64_causal", "d64_noncausal",
                                "d64_noncausal_shortkeys", "d64_noncausal_splitkv"), 4),
    ("-DSK_SM90_STAGES_D64_CAUSAL_SHORT=2", ("d64_causal_shortkeys", "d64_causal_midkeys"), 2),
    ("-DSK_SM90_STAGES_D64_CAUSAL_SHORT=6", ("d64_causal_shortkeys", "d64_causal_midkeys"), 6),
    ("-DSK_SM90_STAGES_D128=3", ("d128_causal", "d128_causal_shortkeys", "d128_noncausal",
                                 "d128_noncausal_splitkv"), 3),
])
def test_deeper_rings_fit_and_give_way_only_where_they_must(tmp_path, flag, shapes, stages):
    """A deeper K/V ring at one head dim changes only that head dim's plans, and fits: at D=64
    everything else stays where there is room for it (four stages; six beside 128 query rows), and
    the O staging gives way only where it would not fit (six stages beside the mid-keys variant's
    192 rows); at D=128 the second Q slot and the O staging give way (three stages of 128-key
    blocks are 192 KB)."""
    # In step consumers on both sides: the stagger's second Q slot needs a ring of 3 stages or more.
    one, deep = _plans(tmp_path, "-DSK_SM90_STAGGER=0"), _plans(tmp_path, flag, "-DSK_SM90_STAGGER=0")
    for name in one:
        plan = deep[name]
        assert plan["smem"] <= plan["smem_max"], (name, plan)
        if name not in shapes:
            assert plan == one[name], name
            continue
        head_dim = int(name.split("_")[0][1:])
        ring = 2 * stages * plan["block_n"] * head_dim * 2
        assert plan["smem"] >= ring + plan["block_m"] * head_dim * 2, (name, plan)
        if head_dim == 64:
            assert plan["q_stages"] == one[name]["q_stages"], name
            if plan["tma_store_o"] != one[name]["tma_store_o"]:
                # the O staging (block_m rows of O) gave way: with it the plan would not fit
                assert plan["tma_store_o"] == 0, (name, plan)
                assert plan["smem"] + plan["block_m"] * head_dim * 2 > plan["smem_max"], (name, plan)
        else:
            assert (plan["q_stages"], plan["tma_store_o"]) == (1, 0), name


@pytest.mark.parametrize("stagger, applies", [(1, True), (2, True), (3, False)])
def test_the_stagger_takes_two_q_slots_in_d64_causal_short_keys_only(tmp_path, stagger, applies):
    """-DSK_SM90_STAGGER=L starts D64 causal short keys' second consumer L pingpong turns behind
    the first (L = 1 ships; 0 keeps the two in step). It needs two Q slots and a ring of L + 2
    stages (that kernel has four), so L = 3 is refused (no stagger, the in-step plan); where it
    applies the plan gains the second Q slot and keeps its TMA store of O, and no other shape
    changes."""
    plain = _plans(tmp_path, "-DSK_SM90_STAGGER=0")
    plans = _plans(tmp_path, f"-DSK_SM90_STAGGER={stagger}")
    assert all(plan["stagger"] == 0 and plan["q_stages"] == (2 if name.startswith("d128") and
                                                             name in TWO_Q_SHIPPED else 1)
               for name, plan in plain.items())
    if stagger == 1:
        assert plans == _plans(tmp_path), "L = 1 is the shipped plan"
    for name, plan in plans.items():
        if name == "d64_causal_shortkeys" and applies:
            assert plan["stagger"] == stagger and plan["q_stages"] == 2, plan
            assert plan["stages"] >= stagger + 2 and plan["tma_store_o"] == 1, plan
            assert plan["smem"] <= plan["smem_max"], plan
        else:
            assert plan == plain[name], (name, plan, plain[name])


def test_per_consumer_q_slots_fit_in_one_slot_and_keep_the_stagger(tmp_path):
    """-DSK_SM90_Q_PER_CONSUMER=1 gives each consumer its own 64 rows of Q with their own full and
    empty barriers: every plan has one Q slot's bytes plus one more barrier pair per extra
    consumer (16 bytes), keeps its TMA store of O, and D64 causal short keys keeps its stagger
    without the second Q slot. The causal kernels at D=96-256 (they spill with it) keep their
    plan."""
    one = _plans(tmp_path, "-DSK_SM90_Q_STAGES_D128=1", "-DSK_SM90_STAGGER=0")
    plain = _plans(tmp_path)
    per = _plans(tmp_path, "-DSK_SM90_Q_PER_CONSUMER=1")
    for name, plan in per.items():
        if "causal" in name.split("_") and not name.startswith("d64"):
            assert plan == plain[name], (name, plan, plain[name])
            continue
        consumers = plan["block_m"] // 64
        assert plan["q_stages"] == 1, (name, plan)
        assert plan["tma_store_o"] == one[name]["tma_store_o"], (name, plan)
        assert plan["smem"] - one[name]["smem"] == 16 * (consumers - 1), (name, one[name], plan)
        assert plan["stagger"] == STAGGER_SHIPPED.get(name, 0), (name, plan)


def test_the_d128_stagger_stages_o_in_its_q_rows(tmp_path):
    """-DSK_SM90_STAGGER_D128=1 gives D128 full (the default variant) a stagger of one turn on a
    three-stage ring, with per-consumer Q rows in which each consumer also stages its O: one Q
    slot, the TMA store kept, no separate O staging (3 x 64 KB of K and V, 32 KB of Q, two Q
    barrier pairs, 12 ring and 4 tile-ring barriers, 8 bytes of tile slots, 1 KB of alignment).
    No other plan changes."""
    plain, plans = _plans(tmp_path), _plans(tmp_path, "-DSK_SM90_STAGGER_D128=1")
    for name, plan in plans.items():
        if name != "d128_noncausal":
            assert plan == plain[name], (name, plan, plain[name])
            continue
        assert (plan["stages"], plan["q_stages"], plan["tma_store_o"], plan["stagger"]) == (3, 1, 1, 1)
        assert plan["smem"] == 2 * 3 * 32768 + 32768 + 8 * (2 * 2 + 4 * 3 + 4) + 8 + 1024, plan
        assert plan["smem"] <= plan["smem_max"], plan

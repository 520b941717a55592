"""An executable model of the sm90 kernel's producer / consumer protocol (csrc/sm90/kernel.cuh,
one CTA), kept by hand in step with the kernel: Q slots (whole-tile, or per consumer with
-DSK_SM90_Q_PER_CONSUMER), the K and V ring, the two-slot tile ring, the pingpong turns on named
barriers, the stagger (Traits::kStagger), idle consumers (Traits::kSkipIdleRows), key-less tiles
and the tail split's empty pieces.

Processes: the producer thread, C consumer warpgroups (each one actor: its 128 threads act
together, so tile_empty's count of 128 * C becomes C), and one process per TMA copy in flight.
Each process is a generator that yields a predicate; the scheduler picks a random process whose
predicate holds and runs it to its next yield (the code between yields is atomic). mbarriers keep
a count, pending arrivals, transaction bytes and a count of completed phases; a wait on parity P
passes when (completed & 1) != P, and each wait also checks that it saw the phase it meant (an
aliased phase is an error). Named barriers hold one pending arrival at most (a second one before
the wait is an error). Shared-memory regions (Q slot x consumer rows, K stage, V stage) carry a tag
of what was last written; a TMA write is in flight from issue to completion, a wgmma read from
issue to the wait that retires it. Errors: a read of a region in flight or with the wrong tag, a
write issued while a read is live, deadlock, barriers left mid-phase at exit.

Left out: the epilogue, the O store and the tail split's merge (their barriers are per consumer),
the split of a warpgroup into threads, and which tiles a CTA gets (any sequence is explored, which
covers both schedules). The checks in test_sm90_protocol.py run it.
"""
import random
import sys


class Err(Exception):
    pass


class MBar:
    def __init__(self, name, count):
        self.name, self.count, self.pending, self.tx, self.done = name, count, count, 0, 0

    def _maybe(self):
        if self.pending == 0 and self.tx == 0:
            self.done += 1
            self.pending = self.count

    def arrive(self):
        self.pending -= 1
        if self.pending < 0:
            raise Err(f"{self.name}: too many arrivals")
        self._maybe()

    def arrive_expect_tx(self, b):
        self.tx += b
        self.arrive()

    def complete_tx(self, b):
        self.tx -= b
        if self.tx < 0:
            raise Err(f"{self.name}: tx underflow")
        self._maybe()

    def ready(self, parity):
        return (self.done & 1) != parity

    def check(self, expect_done, who):
        # expect_done: the number of completed phases the waiter means to see.
        if self.done != expect_done:
            raise Err(f"{who}: wait on {self.name} passed with {self.done} phases done, meant {expect_done}")


class Region:
    def __init__(self, name):
        self.name, self.tag, self.writing, self.readers = name, None, 0, set()


class Model:
    """One CTA's run over ``tiles`` (dicts: ``n`` key blocks; ``idle``, the consumers whose rows all
    lie past seq_len_q; ``pieces0``, an empty piece of the tail split) under the configuration
    ``cfg``: ``C`` consumers, ``stages`` of the K/V ring, ``qstages`` whole-tile Q slots or ``qpc``
    (per-consumer Q rows), ``stagger`` turns, ``ring`` (tiles through the tile ring) and
    ``pingpong``; ``keyless_turn`` is the stagger's turn on a key-less tile. Deliberate faults, to
    show that the checks catch them: ``mut_early_release`` (a consumer frees its Q before its last
    Q K^T has read it), ``mut_q_all_first`` (the producer loads every consumer's Q at the start of
    a tile) and ``mut_qj`` (the key block after which the other consumers' Q is loaded). The
    D=128 stagger (-DSK_SM90_STAGGER_D128, Traits::kOInQ) adds ``o_in_q`` (each consumer stages
    its O in its own Q rows, and the producer loads the first consumer's rows after the tile's
    first K and V), ``q_after_epilogue`` (the rows are freed only after the O store has read them;
    without it they are freed at the last Q K^T, a fault the checks must catch) and
    ``piece_turn`` (an empty tail-split piece takes a turn, as a key-less tile does under the
    stagger)."""

    def __init__(self, cfg, tiles, rng):
        self.cfg, self.tiles, self.rng = cfg, tiles, rng
        C, K = cfg["C"], cfg["stages"]
        self.C = C
        qpc = cfg["qpc"]
        self.qpairs = C if qpc else cfg["qstages"]
        self.q_full = [MBar(f"q_full{i}", 1) for i in range(self.qpairs)]
        self.q_empty = [MBar(f"q_empty{i}", 1 if qpc else C) for i in range(self.qpairs)]
        self.k_full = [MBar(f"k_full{s}", 1) for s in range(K)]
        self.v_full = [MBar(f"v_full{s}", 1) for s in range(K)]
        self.k_empty = [MBar(f"k_empty{s}", C) for s in range(K)]
        self.v_empty = [MBar(f"v_empty{s}", C) for s in range(K)]
        self.tile_full = [MBar(f"tile_full{i}", 1) for i in range(2)]
        self.tile_empty = [MBar(f"tile_empty{i}", C) for i in range(2)]
        self.tile_slot = [None, None]
        nslots = 1 if qpc else cfg["qstages"]
        self.Q = {(sl, c): Region(f"Q[{sl}][{c}]") for sl in range(nslots) for c in range(C)}
        self.Kr = [Region(f"K[{s}]") for s in range(K)]
        self.Vr = [Region(f"V[{s}]") for s in range(K)]
        self.named = {i: 0 for i in range(1, C + 1)}
        self.procs = {}
        self.log = []

    # ---- helpers ----
    def _release_q_at_last_qk(self, qs):
        # The kernel frees a Q slot after its last Q K^T; with the design option q_after_epilogue
        # the release waits for the epilogue instead (below).
        if not self.cfg.get("q_after_epilogue"):
            self.q_empty[qs].arrive()

    def tma(self, regions, tag, bar, nbytes):
        for r in regions:
            if r.readers:
                raise Err(f"TMA write of {tag} into {r.name} while read by {sorted(r.readers)} (tag {r.tag})")
            r.writing += 1

        def g():
            yield lambda: True
            for r in regions:
                r.writing -= 1
                r.tag = tag
            bar.complete_tx(nbytes)
        self.nasync += 1
        self.procs[f"tma{self.nasync}"] = g()

    def read_start(self, who, region, tag):
        if region.writing:
            raise Err(f"{who} reads {region.name} while a TMA write is in flight (want {tag})")
        if region.tag != tag:
            raise Err(f"{who} reads {region.name}: holds {region.tag}, wants {tag}")
        region.readers.add(who)

    def read_end(self, who, region):
        region.readers.discard(who)

    # ---- producer (kernel.cuh: the producer's loop) ----
    def producer(self):
        cfg, C, K = self.cfg, self.C, self.cfg["stages"]
        S = cfg["stagger"]
        qpc = cfg["qpc"]
        it = 0
        q_round = 0
        ntiles = len(self.tiles)
        for rnd in range(10 ** 9):
            index = rnd
            if cfg["ring"]:
                slot = rnd & 1
                bar = self.tile_empty[slot]
                par = ((rnd >> 1) & 1) ^ 1
                yield lambda bar=bar, par=par: bar.ready(par)
                bar.check(rnd >> 1, "producer tile_empty")
                self.tile_slot[slot] = index
                self.tile_full[slot].arrive()
            if index >= ntiles:
                break
            t = self.tiles[index]
            n = t["n"]
            q_tile = q_round

            def load_q_rows(c, q_tile=q_tile, index=index):
                bar = self.q_empty[c]
                par = (q_tile & 1) ^ 1
                yield lambda: bar.ready(par)
                bar.check(q_tile, f"producer q_empty{c}")
                nb = 64 * cfg["chunks"] * 128
                self.q_full[c].arrive_expect_tx(nb)
                # one TMA per chunk; modeled as one write of consumer c's rows
                self.tma([self.Q[(0, c)]], ("Q", index), self.q_full[c], nb)

            if qpc and n > 0:
                if not cfg.get("o_in_q"):  # with O in the Q rows: after block 0's K and V (below)
                    yield from load_q_rows(0)
                if cfg.get("mut_q_all_first"):
                    for c in range(1, C):
                        yield from load_q_rows(c)
                q_round += 1
            elif n > 0:
                qs = q_round % cfg["qstages"]
                bar = self.q_empty[qs]
                par = ((q_round // cfg["qstages"]) & 1) ^ 1
                yield lambda bar=bar, par=par: bar.ready(par)
                bar.check(q_round // cfg["qstages"], "producer q_empty")
                nb = C * 64 * 128
                self.q_full[qs].arrive_expect_tx(nb)
                self.tma([self.Q[(qs, c)] for c in range(C)], ("Q", index), self.q_full[qs], nb)
                q_round += 1
            for j in range(n):
                blk = n - 1 - j
                s = it % K
                ph = (it // K) & 1
                for kind, full, empty, reg in (("K", self.k_full, self.k_empty, self.Kr),
                                               ("V", self.v_full, self.v_empty, self.Vr)):
                    e = empty[s]
                    yield lambda e=e, ph=ph: e.ready(ph ^ 1)
                    e.check(it // K, f"producer {kind}_empty{s}")
                    full[s].arrive_expect_tx(1000)
                    self.tma([reg[s]], (kind, index, blk, it), full[s], 1000)
                if qpc and cfg.get("o_in_q") and j == 0:
                    yield from load_q_rows(0)
                if qpc and not cfg.get("mut_q_all_first") and j == min(cfg.get("mut_qj", S), n - 1):
                    for c in range(1, C):
                        yield from load_q_rows(c)
                it += 1
        self.done_procs.add("producer")

    # ---- consumer (kernel.cuh: "consumers") ----
    def consumer(self, c):
        cfg, C, K = self.cfg, self.C, self.cfg["stages"]
        S = cfg["stagger"]
        qpc = cfg["qpc"]
        pingpong = C > 1 and cfg["pingpong"]
        who = f"C{c}"
        my_turn = 1 + c
        next_turn = 1 + (c + 1) % C
        turns = [0]

        def sched_wait():
            if pingpong:
                yield lambda: self.named[my_turn] > 0
                self.named[my_turn] -= 1
                turns[0] += 1

        def sched_signal():
            if pingpong:
                if self.named[next_turn] > 0:
                    raise Err(f"{who}: named barrier {next_turn} gets a second arrival before its wait")
                self.named[next_turn] += 1

        def pass_turns():
            for _ in range(S):
                yield from sched_wait()
                sched_signal()

        if c == C - 1:
            sched_signal()
        if S > 0 and c == 1:
            yield from pass_turns()
        it = 0
        q_round = 0
        ntiles = len(self.tiles)
        for rnd in range(10 ** 9):
            if cfg["ring"]:
                slot = rnd & 1
                bar = self.tile_full[slot]
                par = (rnd >> 1) & 1
                yield lambda bar=bar, par=par: bar.ready(par)
                bar.check((rnd >> 1) + 1, f"{who} tile_full")
                index = self.tile_slot[slot]
                if index != rnd:
                    raise Err(f"{who}: tile ring slot holds {index}, round {rnd}")
                self.tile_empty[slot].arrive()
            else:
                index = rnd
            if index >= ntiles:
                break
            t = self.tiles[index]
            if t.get("pieces0"):
                if S > 0 and cfg.get("piece_turn"):  # design option: an empty piece takes a turn
                    yield from sched_wait()
                    sched_signal()
                continue  # work.pieces == 0 (its n is 0 for the producer too)
            n = t["n"]
            qs = c if qpc else q_round % cfg["qstages"]
            q_phase = (q_round & 1) if qpc else ((q_round // cfg["qstages"]) & 1)
            q_expect_done = (q_round + 1) if qpc else (q_round // cfg["qstages"] + 1)
            qreg = self.Q[(0, c)] if qpc else self.Q[(qs, c)]
            idle = c in t.get("idle", ())
            if idle and n > 0:
                b = self.q_full[qs]
                yield lambda b=b: b.ready(q_phase)
                b.check(q_expect_done, f"{who} q_full")
                # (no read of Q: its GEMMs are skipped) -- but the rows must be there
                if qreg.tag != ("Q", index) or qreg.writing:
                    raise Err(f"{who} (idle) q_full passed but Q rows are {qreg.tag}")
                q_round += 1
                for j in range(n):
                    s = (it + j) % K
                    ph = ((it + j) // K) & 1
                    b = self.k_full[s]
                    yield lambda b=b, ph=ph: b.ready(ph)
                    b.check((it + j) // K + 1, f"{who} k_full")
                    yield from sched_wait()
                    sched_signal()
                    self.k_empty[s].arrive()
                    if j == n - 1:
                        self._release_q_at_last_qk(qs)
                    b = self.v_full[s]
                    yield lambda b=b, ph=ph: b.ready(ph)
                    b.check((it + j) // K + 1, f"{who} v_full")
                    self.v_empty[s].arrive()
                yield from sched_wait()
                sched_signal()
                it += n
            elif n > 0:
                b = self.q_full[qs]
                yield lambda b=b: b.ready(q_phase)
                b.check(q_expect_done, f"{who} q_full")
                q_round += 1
                # first block: S only
                s = it % K
                b = self.k_full[s]
                ph = (it // K) & 1
                yield lambda b=b, ph=ph: b.ready(ph)
                b.check(it // K + 1, f"{who} k_full")
                yield from sched_wait()
                self.read_start(who, qreg, ("Q", index))
                self.read_start(who, self.Kr[s], ("K", index, n - 1, it))
                sched_signal()
                yield lambda: True  # wgmma_wait_group<0>
                self.read_end(who, qreg)
                self.read_end(who, self.Kr[s])
                self.k_empty[s].arrive()
                if n == 1:
                    self._release_q_at_last_qk(qs)
                for j in range(1, n):
                    s = (it + j) % K
                    ph = ((it + j) // K) & 1
                    sp = (it + j - 1) % K
                    php = ((it + j - 1) // K) & 1
                    b = self.k_full[s]
                    yield lambda b=b, ph=ph: b.ready(ph)
                    b.check((it + j) // K + 1, f"{who} k_full")
                    yield from sched_wait()
                    self.read_start(who, qreg, ("Q", index))
                    self.read_start(who, self.Kr[s], ("K", index, n - 1 - j, it + j))
                    b = self.v_full[sp]
                    yield lambda b=b, php=php: b.ready(php)
                    b.check((it + j - 1) // K + 1, f"{who} v_full")
                    self.read_start(who, self.Vr[sp], ("V", index, n - j, it + j - 1))
                    sched_signal()
                    if cfg.get("mut_early_release") and j == n - 1:
                        self._release_q_at_last_qk(qs)
                    yield lambda: True  # wgmma_wait_group<1>: S_j done
                    self.read_end(who, qreg)
                    self.read_end(who, self.Kr[s])
                    self.k_empty[s].arrive()
                    if j == n - 1 and not cfg.get("mut_early_release"):
                        self._release_q_at_last_qk(qs)
                    yield lambda: True  # wgmma_wait_group<0>: P V done
                    self.read_end(who, self.Vr[sp])
                    self.v_empty[sp].arrive()
                last = it + n - 1
                b = self.v_full[last % K]
                ph = (last // K) & 1
                yield lambda b=b, ph=ph: b.ready(ph)
                b.check(last // K + 1, f"{who} v_full")
                yield from sched_wait()
                self.read_start(who, self.Vr[last % K], ("V", index, 0, last))
                sched_signal()
                yield lambda: True
                self.read_end(who, self.Vr[last % K])
                self.v_empty[last % K].arrive()
                it += n
            elif S > 0 and cfg["keyless_turn"]:
                yield from sched_wait()
                sched_signal()
            # epilogue: no shared barrier with others in the model
            yield lambda: True
            if cfg.get("o_in_q") and n > 0:
                # O staged in this consumer's Q rows (generic stores), TMA-stored from there; with
                # q_after_epilogue the rows are freed once the store has read them.
                if qreg.writing or qreg.tag != ("Q", index):
                    raise Err(f"{who} stages O in {qreg.name}, which holds {qreg.tag}"
                              f"{' (being written)' if qreg.writing else ''}, not its Q")
                qreg.tag = ("O", index)
                qreg.readers.add(who + " O store")
                yield lambda: True
                qreg.readers.discard(who + " O store")
                if cfg.get("q_after_epilogue"):
                    self.q_empty[qs].arrive()
        if S > 0 and c == 0:
            yield from pass_turns()
        if c == 0 and pingpong:
            yield from sched_wait()
        self.done_procs.add(who)

    def run(self, max_steps=200000):
        self.nasync = 0
        self.weights = None if self.rng.random() < 0.5 else {}
        self.done_procs = set()
        self.procs["producer"] = self.producer()
        for c in range(self.C):
            self.procs[f"C{c}"] = self.consumer(c)
        pending = {}
        for name, g in list(self.procs.items()):
            pending[name] = next(g, None)
        steps = 0
        while True:
            # new async procs
            for name, g in list(self.procs.items()):
                if name not in pending:
                    pending[name] = next(g, None)
            live = {k: v for k, v in pending.items() if v is not None}
            if not live:
                break
            ready = [k for k, v in live.items() if v()]
            if not ready:
                raise Err("deadlock: " + ", ".join(sorted(live)) + self.state())
            if self.weights is None:
                name = self.rng.choice(ready)
            else:
                ws = []
                for k in ready:
                    cls = "tma" if k.startswith("tma") else k
                    if cls not in self.weights:
                        self.weights[cls] = self.rng.choice([0.02, 0.2, 1.0, 5.0, 50.0])
                    ws.append(self.weights[cls])
                name = self.rng.choices(ready, ws)[0]
            try:
                pending[name] = self.procs[name].send(None)
            except StopIteration:
                pending[name] = None
            steps += 1
            if steps > max_steps:
                raise Err("livelock?")
        # balance checks
        for k, v in self.named.items():
            if v:
                raise Err(f"named barrier {k} left with {v} arrivals")
        for b in self.q_full + self.q_empty + self.k_full + self.v_full + self.k_empty + self.v_empty:
            if b.pending != b.count or b.tx:
                raise Err(f"{b.name} left mid-phase: pending {b.pending}/{b.count}, tx {b.tx}")

    def state(self):
        s = "\n  named " + str(self.named)
        for b in self.q_full + self.q_empty:
            s += f"\n  {b.name}: done {b.done} pending {b.pending}"
        return s


def random_tiles(rng, cfg):
    ntiles = rng.randint(0, cfg.get("tmax", 10))
    tiles = []
    for _ in range(ntiles):
        r = rng.random()
        if cfg.get("keyless") and r < 0.35:
            n = 0
        else:
            n = rng.randint(1 if not cfg.get("keyless") else 0, cfg.get("nmax", 5))
        t = {"n": n}
        if cfg.get("idle") and cfg["C"] > 1 and rng.random() < 0.4:
            k = rng.randint(1, cfg["C"] - 1)  # idle consumers are a suffix
            t["idle"] = tuple(range(cfg["C"] - k, cfg["C"]))
        if cfg.get("pieces0") and rng.random() < 0.2:
            t = {"n": 0, "pieces0": True}
        tiles.append(t)
    # runs of key-less tiles
    if cfg.get("keyless") and tiles and rng.random() < 0.3:
        p = rng.randrange(len(tiles))
        tiles[p:p] = [{"n": 0}] * rng.randint(2, 4)
    return tiles


def explore(cfg, iters, seed=0, sched_per=3, show=1):
    rng = random.Random(seed)
    fails = {}
    for i in range(iters):
        tiles = random_tiles(rng, cfg)
        for k in range(sched_per):
            m = Model(cfg, tiles, random.Random(rng.random()))
            try:
                m.run()
            except Err as e:
                key = str(e).split("\n")[0][:90]
                if key not in fails:
                    fails[key] = ([t["n"] if not t.get("idle") else (t["n"], t["idle"]) for t in tiles], str(e))
    return fails


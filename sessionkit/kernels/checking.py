"""Checking an attention kernel against an fp32 reference: configs, rule, poisoning, localization.

The kernel under test is any callable ``kernel(q, k, v, out, lse, causal, scale)`` that writes the
attention output into ``out`` (shape (B, H, Sq, D), the inputs' dtype) and the log-sum-exp of the
scaled scores over the unmasked keys into ``lse`` (fp32, (B, H, Sq), natural log). ``causal`` means
SDPA's ``is_causal=True``: query row ``i`` sees keys ``0..i`` (top-left aligned), whatever Sq and Sk.

For each config:

* inputs are fresh ``randn`` from the config's own seed; half of the configs pass (B, H, S, D)
  tensors viewed as (B, H, S, D) through ``.transpose(1, 2)``, so the kernel must honour strides;
* the reference is fp32 math on the upcast inputs (explicit masked softmax, then ``@ V``), computed
  in blocks of heads and query rows so that memory stays bounded;
* ``out`` and ``lse`` are filled with NaN before the kernel runs, inside larger NaN buffers whose
  margins must still be NaN afterwards: unwritten elements, NaN, Inf and writes past either end fail;
* the config passes when ``max|out - ref| <= 2 * max|sdpa - ref| + 1e-5``, where ``sdpa`` is
  ``torch.nn.functional.scaled_dot_product_attention`` in the same dtype on the same device, and
  ``max|lse - lse_ref| <= 1e-3``;
* a failure names the worst element (b, h, row, col) with both values.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from ..attention import AttentionConfig, torch_dtype
from ..errors import SessionkitError, UsageError, first_line

DTYPES = ("fp16", "bf16")  # the dtypes configs are drawn from: names of sessionkit.attention.DTYPES
HEAD_DIMS = (64, 128)
SEQ_LENS = (1, 17, 64, 113, 128, 1000, 2048, 4097)
BATCH_SIZES = (1, 2, 3, 4)
NUM_HEADS = (1, 2, 3, 4, 8, 12, 16)
LAYOUTS = ("bhsd", "bshd")

# Size budget per config: B * H * Sq * Sk scores. 4097 x 4097 keeps B * H <= 8.
MAX_SCORES = 1 << 27
# Largest block of fp32 scores the reference holds at once (64 MiB).
REFERENCE_BLOCK = 1 << 24
# NaN margin around the output buffers, in elements (a 128-row tile of D=128).
GUARD_ELEMENTS = 128 * 128

ERR_FACTOR = 2.0
ERR_SLACK = 1e-5
LSE_TOLERANCE = 1e-3

Kernel = Callable[..., object]


@dataclass(frozen=True, kw_only=True)
class Config(AttentionConfig):
    """One checked case: an attention config (:class:`~sessionkit.attention.AttentionConfig`, fp16 or
    bf16 here) with its place in the run, the layout its inputs are passed in and their seed."""

    idx: int
    layout: str  # "bhsd": contiguous (B, H, S, D); "bshd": (B, S, H, D) made, passed transposed
    seed: int  # seed of this config's inputs

    @property
    def group(self) -> str:
        """The results table's line: ``bf16 d128 causal`` (``full``, ``causal`` or ``causal-br``)."""
        return f"{self.dtype} d{self.head_dim} {self.mask}"

    @property
    def shape(self) -> str:
        return f"B{self.batch_size} {self.heads} S{self.seq_len_q}x{self.seq_len_k} {self.layout}"

    @property
    def case(self) -> str:
        """``#7 bf16 d128 causal B2 H8/2kv S113x64 bshd``: the case, for progress and failures."""
        return f"#{self.idx} {self.group} {self.shape}"

    @property
    def scores(self) -> int:
        return self.batch_size * self.num_heads * self.seq_len_q * self.seq_len_k


@dataclass
class CheckResult:
    config: Config
    passed: bool
    max_err: float | None = None  # inf when ``out`` holds NaN/Inf
    sdpa_err: float | None = None
    bound: float | None = None
    lse_err: float | None = None  # inf when ``lse`` holds NaN/Inf
    worst_index: tuple[int, ...] | None = None  # (b, h, row, col) of the worst output element
    worst_out: float | None = None
    worst_ref: float | None = None
    lse_worst_index: tuple[int, ...] | None = None  # (b, h, row)
    failures: list[str] = field(default_factory=list)
    context_lost: bool = False  # the device is unusable after this config

    @property
    def failure(self) -> str | None:
        return "; ".join(self.failures) if self.failures else None

    @property
    def ratio(self) -> float | None:
        """max_err / bound (inf for NaN/Inf output), or None when the config did not run."""
        if self.max_err is None or self.bound is None:
            return None
        return self.max_err / self.bound

    def row(self) -> dict:
        """A ``correctness_results`` row (without ``step_id``)."""
        c = self.config
        return {
            "idx": c.idx, "dtype": c.dtype, "batch_size": c.batch_size, "num_heads": c.num_heads,
            "seq_len_q": c.seq_len_q, "seq_len_k": c.seq_len_k, "head_dim": c.head_dim,
            "causal": int(c.causal), "layout": c.layout, "seed": c.seed,
            "max_err": self.max_err, "bound": self.bound, "lse_err": self.lse_err,
            "passed": int(self.passed), "worst_index": _index_text(self.worst_index),
            "worst_out": self.worst_out, "worst_ref": self.worst_ref, "failure": self.failure,
            "sdpa_err": self.sdpa_err, "scale": c.scale,
            "lse_worst_index": _index_text(self.lse_worst_index),
            "num_heads_k": c.num_heads_k, "causal_alignment": c.causal_alignment,
        }


def bound_for(sdpa_err: float) -> float:
    """The largest output error allowed, given SDPA's error in the same dtype."""
    return ERR_FACTOR * sdpa_err + ERR_SLACK


# --------------------------------------------------------------------------------------------------
# Configs


def generate_configs(count: int, seed: int, *, seq_lens=SEQ_LENS, head_dims=HEAD_DIMS,
                     dtypes=DTYPES, max_scores: int = MAX_SCORES) -> list[Config]:
    """``count`` configs drawn from ``seed``; the same arguments always give the same list.

    Every run of 8 consecutive configs covers each (dtype, head dim, causal) combination once (with
    the default dtypes and head dims). With ``count >= 3 * len(seq_lens)`` every sequence length
    appears as Sq and as Sk, once with Sq == Sk, once against a different Sk and once against a
    different Sq, so Sq < Sk and Sq > Sk both occur. Layouts alternate. B and H are drawn, then
    shrunk (H first) until B * H * Sq * Sk <= ``max_scores``.
    """
    if count < 1:
        raise UsageError(f"need at least one config, got {count}")
    lens = sorted(set(int(s) for s in seq_lens))
    if not lens:
        raise UsageError("no sequence lengths to draw configs from")
    if lens[0] < 1:
        raise UsageError(f"sequence lengths must be positive, got {lens[0]}")
    if not dtypes or not head_dims:
        raise UsageError("need at least one dtype and one head dim")
    for dt in dtypes:
        if dt not in DTYPES:
            raise UsageError(f"unknown dtype {dt!r}; use one of {', '.join(DTYPES)}")
    rng = random.Random(seed)

    pairs: list[tuple[int, int]] = [(s, s) for s in lens]
    for s in lens:
        others = [x for x in lens if x != s] or [s]
        pairs.append((s, rng.choice(others)))
        pairs.append((rng.choice(others), s))
    rng.shuffle(pairs)
    while len(pairs) < count:
        pairs.append((rng.choice(lens), rng.choice(lens)))
    pairs = pairs[:count]

    combos = [(dt, d, causal) for dt in dtypes for d in head_dims for causal in (False, True)]
    block: list = []
    configs = []
    for idx, (sq, sk) in enumerate(pairs):
        if not block:
            block = list(combos)
            rng.shuffle(block)
        dtype, head_dim, causal = block.pop()
        batch, heads = rng.choice(BATCH_SIZES), rng.choice(NUM_HEADS)
        while batch * heads * sq * sk > max_scores and batch * heads > 1:
            if heads > 1:
                heads //= 2
            else:
                batch //= 2
        seed_i = rng.randrange(1 << 31)
        # Every other config, where H allows it, groups the query heads (GQA, or MQA when
        # H_kv = 1); every other causal config is bottom-right aligned.
        ratios = [r for r in (2, 3, 4, 8, 16) if heads % r == 0]
        heads_k = heads // rng.choice(ratios) if ratios and idx % 4 in (1, 2) else heads
        alignment = "bottom_right" if causal and (idx // 2) % 2 == 1 else "top_left"
        configs.append(Config(idx=idx, dtype=dtype, batch_size=batch, num_heads=heads,
                              seq_len_q=sq, seq_len_k=sk, head_dim=int(head_dim),
                              causal=causal, layout=LAYOUTS[idx % 2], seed=seed_i,
                              num_heads_k=heads_k, causal_alignment=alignment))
    return configs


# --------------------------------------------------------------------------------------------------
# Tensors


def make_inputs(config: Config, device):
    """Fresh ``randn`` q (B, H_q, Sq, D), k and v (B, H_kv, Sk, D) from the config's seed.

    For the ``bshd`` layout they are made as (B, S, H, D) and returned as ``.transpose(1, 2)`` views.
    """
    import torch

    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed)
    dtype = torch_dtype(config.dtype)
    b, d = config.batch_size, config.head_dim

    def one(seq, h):
        if config.layout == "bshd":
            t = torch.randn(b, seq, h, d, generator=gen, device=device, dtype=torch.float32)
            return t.to(dtype).transpose(1, 2)
        t = torch.randn(b, h, seq, d, generator=gen, device=device, dtype=torch.float32)
        return t.to(dtype)

    hq, hk = config.num_heads, config.num_heads_k
    return one(config.seq_len_q, hq), one(config.seq_len_k, hk), one(config.seq_len_k, hk)


@contextmanager
def _full_fp32_matmul():
    """fp32 matmuls in full precision (no TF32) for the duration."""
    import torch

    previous = torch.get_float32_matmul_precision()
    if previous != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if previous != "highest":
            torch.set_float32_matmul_precision(previous)


def reference(q, k, v, causal: bool, scale: float, *, bottom_right: bool = False,
              block: int = REFERENCE_BLOCK):
    """fp32 attention on the upcast inputs: (out (B, H_q, Sq, D), lse (B, H_q, Sq)), both fp32.

    ``softmax(scale * q @ k^T, masked) @ v`` spelled out, over blocks of heads and query rows of at
    most ``block`` scores, so memory stays bounded for long sequences. k and v may have H_kv heads
    with H_q a multiple of H_kv (query head h reads kv head h // (H_q // H_kv)). ``causal`` masks
    key ``j`` for query row ``i`` when ``j > i`` (top-left aligned), or with ``bottom_right`` when
    ``j > i + Sk - Sq``. A row that sees no key gets out 0 and lse -inf.
    """
    import torch

    batch, heads, sq, d = q.shape
    heads_k, sk = k.shape[1], k.shape[2]
    if heads_k != heads:
        k = k.repeat_interleave(heads // heads_k, dim=1)
        v = v.repeat_interleave(heads // heads_k, dim=1)
    offset = sk - sq if bottom_right else 0
    n = batch * heads
    qf = q.float().reshape(n, sq, d)
    kf = k.float().reshape(n, sk, d)
    vf = v.float().reshape(n, sk, v.shape[-1])
    out = torch.empty(n, sq, vf.shape[-1], dtype=torch.float32, device=q.device)
    lse = torch.empty(n, sq, dtype=torch.float32, device=q.device)
    rows = max(1, min(sq, block // max(sk, 1)))
    group = max(1, block // (rows * max(sk, 1)))
    cols = torch.arange(sk, device=q.device)
    with _full_fp32_matmul():
        for h0 in range(0, n, group):
            h1 = min(n, h0 + group)
            kt = kf[h0:h1].transpose(1, 2)
            for r0 in range(0, sq, rows):
                r1 = min(sq, r0 + rows)
                scores = torch.matmul(qf[h0:h1, r0:r1], kt) * scale
                if causal:
                    row_ids = torch.arange(r0, r1, device=q.device)
                    scores.masked_fill_(cols[None, :] > row_ids[:, None] + offset, float("-inf"))
                row_lse = torch.logsumexp(scores, dim=-1)
                probs = torch.exp(scores - row_lse[..., None])
                probs = torch.nan_to_num(probs, nan=0.0)  # rows that see no key: -inf - -inf
                out[h0:h1, r0:r1] = torch.matmul(probs, vf[h0:h1])
                lse[h0:h1, r0:r1] = row_lse
    return out.reshape(batch, heads, sq, -1), lse.reshape(batch, heads, sq)


def sdpa_same_dtype(q, k, v, causal: bool, scale: float, *, bottom_right: bool = False):
    """PyTorch's SDPA in the inputs' dtype on their device (its default backend choice), with
    ``enable_gqa`` when k and v have fewer heads, and ``causal_lower_right`` for bottom-right.
    Rows that see no key are NaN in SDPA's output."""
    import torch.nn.functional as F

    gqa = k.shape[1] != q.shape[1]
    if causal and bottom_right and q.shape[2] != k.shape[2]:
        import warnings

        from torch.nn.attention.bias import causal_lower_right

        with warnings.catch_warnings():  # its NaN rows (Sq > Sk) are left out of the bound
            warnings.simplefilter("ignore", UserWarning)
            mask = causal_lower_right(q.shape[2], k.shape[2])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                              enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)


def poisoned_outputs(shape, dtype, device, *, guard: int = GUARD_ELEMENTS):
    """NaN-filled ``out`` (B, H, Sq, D) and ``lse`` (B, H, Sq), each the middle of a NaN buffer.

    Returns ``(out, lse, out_buffer, lse_buffer)``; the margins of the buffers must stay NaN.
    """
    import torch

    b, h, sq, d = shape
    n_out, n_lse = b * h * sq * d, b * h * sq
    out_buf = torch.full((n_out + 2 * guard,), float("nan"), dtype=dtype, device=device)
    lse_buf = torch.full((n_lse + 2 * guard,), float("nan"), dtype=torch.float32, device=device)
    out = out_buf[guard:guard + n_out].view(b, h, sq, d)
    lse = lse_buf[guard:guard + n_lse].view(b, h, sq)
    return out, lse, out_buf, lse_buf


def _margin_writes(buf, inner: int, guard: int) -> int:
    import torch

    margins = torch.cat([buf[:guard], buf[guard + inner:]])
    return int((~torch.isnan(margins)).sum())


def locate_worst(got, ref):
    """(error, index, got value, ref value) of the element of ``got`` farthest from ``ref``.

    A NaN or Inf in ``got`` is the worst (error inf; the first one in row-major order), so an element
    the kernel never wrote is named. Returns also how many elements were not finite.
    """
    import torch

    gotf = got.float()
    bad = ~torch.isfinite(gotf)
    nonfinite = int(bad.sum())
    if nonfinite:
        flat = int(bad.flatten().to(torch.int8).argmax())
        err = math.inf
    else:
        diff = (gotf - ref).abs().flatten()
        flat = int(diff.argmax())
        err = float(diff[flat])
    index = _unravel(flat, tuple(got.shape))
    return err, index, float(gotf.flatten()[flat]), float(ref.flatten()[flat]), nonfinite


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    index = []
    for size in reversed(shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def _index_text(index) -> str | None:
    return None if index is None else ",".join(str(i) for i in index)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def device_alive(device) -> bool:
    """False when the device can no longer run work (a CUDA error left the context unusable)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return True
    try:
        torch.cuda.synchronize(device)
        return float(torch.ones(1, device=device).sum().item()) == 1.0
    except Exception:
        return False


def _synchronize(device) -> None:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------
# Checking


def check_config(kernel: Kernel, config: Config, device) -> CheckResult:
    """Run ``kernel`` on one config and judge it. Raises only a kernel's own SessionkitError."""
    import torch

    q, k, v = make_inputs(config, device)
    scale = config.scale
    ref_out, ref_lse = reference(q, k, v, config.causal, scale, bottom_right=config.bottom_right)
    sdpa = sdpa_same_dtype(q, k, v, config.causal, scale, bottom_right=config.bottom_right)
    no_keys = torch.isneginf(ref_lse)  # rows that see no key: ours must give 0 and -inf there
    sdpa_diff = (sdpa.float() - ref_out).abs().masked_fill(no_keys[..., None], 0.0)
    sdpa_err = float(sdpa_diff.max()) if sdpa_diff.numel() else 0.0
    del sdpa, sdpa_diff
    result = CheckResult(config, passed=False, sdpa_err=sdpa_err)
    if not math.isfinite(sdpa_err):
        result.failures.append("SDPA in the same dtype gave NaN/Inf, so there is no error bound")
        return result
    result.bound = bound_for(sdpa_err)

    originals = (q.clone(), k.clone(), v.clone())
    shape = (config.batch_size, config.num_heads, config.seq_len_q, config.head_dim)
    out, lse, out_buf, lse_buf = poisoned_outputs(shape, q.dtype, q.device)
    extra = {"causal_alignment": "bottom_right"} if config.bottom_right else {}
    if config.num_heads_k != config.num_heads:
        extra["enable_gqa"] = True
    try:
        kernel(q, k, v, out, lse, config.causal, scale, **extra)
        _synchronize(q.device)
    except SessionkitError:
        raise
    except Exception as exc:
        result.failures.append(f"kernel raised {first_line(exc, limit=200, named=True)}")
        result.context_lost = not device_alive(q.device)
        return result

    err, index, got, want, nonfinite = locate_worst(out, ref_out)
    result.max_err, result.worst_index, result.worst_out, result.worst_ref = err, index, got, want
    where = f"b,h,row,col={_index_text(index)}"
    if nonfinite:
        result.failures.append(
            f"out has {nonfinite} NaN/Inf element(s) (unwritten or invalid), first at {where} "
            f"(ours {_num(got)}, ref {_num(want)})")
    elif err > result.bound:
        result.failures.append(
            f"max err {_num(err)} > bound {_num(result.bound)} at {where} "
            f"(ours {_num(got)}, ref {_num(want)})")

    empty_rows = int(no_keys.sum())
    if empty_rows:
        wrong = int((~torch.isneginf(lse[no_keys])).sum())
        if wrong:
            result.failures.append(f"lse is not -inf on {wrong} of the {empty_rows} row(s) that "
                                   f"see no key")
        # Compared below as equal: -inf where the reference is -inf.
        lse = torch.where(no_keys, torch.zeros_like(lse), lse)
        ref_lse = torch.where(no_keys, torch.zeros_like(ref_lse), ref_lse)
    lse_err, lse_index, lse_got, lse_want, lse_nonfinite = locate_worst(lse, ref_lse)
    result.lse_err, result.lse_worst_index = lse_err, lse_index
    lse_where = f"b,h,row={_index_text(lse_index)}"
    if lse_nonfinite:
        result.failures.append(
            f"lse has {lse_nonfinite} NaN/Inf element(s), first at {lse_where} "
            f"(ours {_num(lse_got)}, ref {_num(lse_want)})")
    elif lse_err > LSE_TOLERANCE:
        result.failures.append(
            f"lse err {_num(lse_err)} > {LSE_TOLERANCE:g} at {lse_where} "
            f"(ours {_num(lse_got)}, ref {_num(lse_want)})")

    stray_out = _margin_writes(out_buf, out.numel(), (out_buf.numel() - out.numel()) // 2)
    stray_lse = _margin_writes(lse_buf, lse.numel(), (lse_buf.numel() - lse.numel()) // 2)
    if stray_out or stray_lse:
        result.failures.append(
            f"wrote outside its outputs ({stray_out} element(s) around out, {stray_lse} around lse)")
    for name, now, before in zip("qkv", (q, k, v), originals):
        if not torch.equal(now, before):
            result.failures.append(f"modified its input {name}")
    result.passed = not result.failures
    return result


def run_checks(kernel: Kernel, configs: list[Config], device, *, on_start=None,
               on_result=None) -> list[CheckResult]:
    """Check every config in order. ``on_start(i, config)`` and ``on_result(result)`` are called
    around each one. When a config leaves the device unusable, the rest are recorded as not run."""
    results: list[CheckResult] = []
    for i, config in enumerate(configs):
        if on_start is not None:
            on_start(i, config)
        result = check_config(kernel, config, device)
        results.append(result)
        if on_result is not None:
            on_result(result)
        if result.context_lost:
            for rest in configs[i + 1:]:
                skipped = CheckResult(rest, passed=False, failures=[
                    f"not run: the device was unusable after config #{config.idx}"])
                results.append(skipped)
                if on_result is not None:
                    on_result(skipped)
            break
    return results


# --------------------------------------------------------------------------------------------------
# Summaries


def summarize(results: list[CheckResult], seed: int) -> dict:
    """The step summary: ``{"seed", "configs", "passed", "failed", "worst_ratio", "nonfinite"}``.

    ``worst_ratio`` is the largest max_err/bound over configs whose output was finite (None when
    none was); ``nonfinite`` counts configs whose output held NaN/Inf.
    """
    ratios = [r.ratio for r in results if r.ratio is not None and math.isfinite(r.ratio)]
    passed = sum(1 for r in results if r.passed)
    return {
        "seed": seed,
        "configs": len(results),
        "passed": passed,
        "failed": len(results) - passed,
        "worst_ratio": max(ratios) if ratios else None,
        "nonfinite": sum(1 for r in results if r.max_err is not None and math.isinf(r.max_err)),
    }


def results_table(results: list[CheckResult]) -> str:
    """One line per (dtype, head dim, causal) group: counts and the worst config of the group."""
    from ..views import table

    groups: dict[str, list[CheckResult]] = {}
    for r in results:
        groups.setdefault(r.config.group, []).append(r)
    rows = []
    for name in sorted(groups):
        members = groups[name]
        ran = [r for r in members if r.ratio is not None]
        worst = max(ran, key=lambda r: r.ratio) if ran else None
        rows.append([
            name, len(members), sum(1 for r in members if r.passed),
            f"{worst.ratio:.3g}" if worst else "-",
            f"#{worst.config.idx} {worst.config.shape}" if worst else "-",
        ])
    return table(["group", "configs", "passed", "worst err/bound", "worst config"], rows,
                 right={1, 2, 3})


def failure_line(result: CheckResult) -> str:
    return f"FAIL {result.config.case}: {result.failure}"

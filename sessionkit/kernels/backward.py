"""Gradients of ``sessionkit::flash_attn_fwd``: an LSE-based attention backward in PyTorch ops.

There is no backward kernel of our own yet. The backward here is the FlashAttention-2 backward
(Dao, 2023, Algorithm 2) written with PyTorch matmuls in fp32, over blocks of query rows so that
memory stays bounded. It reuses the forward's saved log-sum-exp instead of recomputing the softmax
normalizer:

    P  = exp(scale * Q K^T - LSE)          (masked keys and rows that see no key: 0)
    dV = P^T dO
    dP = dO V^T
    dS = P * (dP - rowsum(dO * O)) + P * dLSE
    dQ = scale * dS K,   dK = scale * dS^T Q

It handles what the forward handles and PyTorch's fused backwards do not all handle together:
grouped-query attention (the gradients of the query heads that share a key/value head are summed
into that head's dK and dV, with no copy of k or v), both causal alignments, Sq != Sk, and rows that
see no key (their gradients are 0). It is registered as the op ``sessionkit::flash_attn_bwd`` (a
torch.library custom op with a fake implementation), so ``torch.compile`` treats it as one opaque
node, under static and dynamic shapes. It runs on any device; the tests check it on the CPU against
autograd through the fp32 reference.

Importing this module imports torch.
"""

from __future__ import annotations

import torch

# Largest block of fp32 scores held at once, per temporary (P, dP, dS): 32 Mi elements (128 MiB).
BLOCK_ELEMENTS = 1 << 25


def _masked_scores(q_blk, k, scale, rows, row0, causal, causal_offset):
    """scale * q_blk @ k^T with causal masking; q_blk is (B, H_kv, r * rows, D)."""
    scores = torch.matmul(q_blk, k.transpose(-1, -2)) * scale
    if causal:
        sk = k.shape[-2]
        ratio_rows = q_blk.shape[-2]
        # Row index within the sequence of each of the r * rows stacked rows.
        row_ids = row0 + torch.arange(ratio_rows, device=q_blk.device) % rows
        cols = torch.arange(sk, device=q_blk.device)
        scores = scores.masked_fill(cols[None, :] > row_ids[:, None] + causal_offset, float("-inf"))
    return scores


def attention_backward(grad_out, q, k, v, out, lse, causal: bool, scale: float,
                       causal_bottom_right: bool = False, grad_lse=None, *,
                       block_elements: int = BLOCK_ELEMENTS):
    """(dQ, dK, dV) of attention with the forward's ``out`` and ``lse``.

    Shapes: q, out, grad_out (B, H_q, Sq, D); k, v (B, H_kv, Sk, D) with H_q % H_kv == 0; lse and
    grad_lse (B, H_q, Sq) float32 (natural log; grad_lse may be None). Returns contiguous tensors
    in the dtypes of q, k and v. ``causal``: query row i sees key j iff j <= i (top-left), or
    j <= i + Sk - Sq with ``causal_bottom_right``. Math in fp32 (float64 for float64 inputs),
    block by block of query rows of at most ``block_elements`` scores.
    """
    batch, heads, seqlen_q, head_dim = q.shape
    heads_k, seqlen_k = k.shape[1], k.shape[2]
    ratio = heads // heads_k if heads_k else 1
    causal_offset = seqlen_k - seqlen_q if causal_bottom_right else 0
    # fp32 math; float64 inputs (gradcheck's stand-ins) keep float64.
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dk = torch.zeros(k.shape, dtype=acc, device=q.device)
    dv = torch.zeros(v.shape, dtype=acc, device=q.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)

    kf, vf = k.to(acc), v.to(acc)
    per_row = max(1, batch * heads * seqlen_k)
    rows = max(1, min(seqlen_q, block_elements // per_row))

    def grouped(t, r0, r1):
        # (B, H_q, n, X) -> (B, H_kv, ratio * n, X): the query heads of one kv head stacked.
        n = r1 - r0
        return t[:, :, r0:r1].to(acc).reshape(batch, heads_k, ratio * n, t.shape[-1])

    for r0 in range(0, seqlen_q, rows):
        r1 = min(seqlen_q, r0 + rows)
        n = r1 - r0
        q_blk, do_blk, o_blk = grouped(q, r0, r1), grouped(grad_out, r0, r1), grouped(out, r0, r1)
        lse_blk = lse[:, :, r0:r1].to(acc).reshape(batch, heads_k, ratio * n)
        # Rows that see no key have LSE = -inf and every score -inf: P = exp(-inf - 0) = 0.
        lse_blk = torch.where(torch.isneginf(lse_blk), torch.zeros_like(lse_blk), lse_blk)
        scores = _masked_scores(q_blk, kf, scale, n, r0, causal, causal_offset)
        probs = torch.exp(scores - lse_blk[..., None])
        del scores
        dv += torch.matmul(probs.transpose(-1, -2), do_blk)
        dp = torch.matmul(do_blk, vf.transpose(-1, -2))
        delta = (do_blk * o_blk).sum(dim=-1, keepdim=True)
        dp -= delta
        if grad_lse is not None:
            dp += grad_lse[:, :, r0:r1].to(acc).reshape(batch, heads_k, ratio * n)[..., None]
        ds = probs * dp
        del probs, dp
        dq[:, :, r0:r1] = (torch.matmul(ds, kf) * scale).reshape(batch, heads, n, head_dim)
        dk += torch.matmul(ds.transpose(-1, -2), q_blk) * scale
        del ds
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@torch.library.custom_op("sessionkit::flash_attn_bwd", mutates_args=())
def flash_attn_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   out: torch.Tensor, lse: torch.Tensor, grad_lse: torch.Tensor | None,
                   causal: bool, scale: float, causal_bottom_right: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op form of :func:`attention_backward` (what the autograd formula calls)."""
    return attention_backward(grad_out, q, k, v, out, lse, causal, scale, causal_bottom_right,
                              grad_lse)


@flash_attn_bwd.register_fake
def _flash_attn_bwd_fake(grad_out, q, k, v, out, lse, grad_lse, causal, scale,
                         causal_bottom_right):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def setup_context(ctx, inputs, output) -> None:
    """Saves q, k, v, O and the LSE for the backward (the op's inputs are as in its schema)."""
    q, k, v, causal, scale, *rest = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.causal = bool(causal)
    ctx.scale = float(scale)
    ctx.causal_bottom_right = bool(rest[0]) if rest else False


def backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.sessionkit.flash_attn_bwd(
        grad_out, q, k, v, out, lse, grad_lse, ctx.causal, ctx.scale, ctx.causal_bottom_right)
    return dq, dk, dv, None, None, None


def register_autograd(op_name: str = "sessionkit::flash_attn_fwd") -> None:
    """Attach the backward above to the forward op (once the op's library is loaded)."""
    torch.library.register_autograd(op_name, backward, setup_context=setup_context)

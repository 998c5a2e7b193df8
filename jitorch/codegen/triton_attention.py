"""Fused (flash) attention for NVIDIA GPUs: four hand-written Triton kernels and the launches that
compute the `attention` and `attention_backward` primitives with them.

Why: attention written as ops, softmax(q k^T * scale) v, materializes the (B, H, L, S) scores and
passes over them several times (400 MB per layer for a GPT step of batch 8, 12 heads, T = 1024).
These kernels keep a block of scores in registers and never write them:

- `attention_forward`: one program per BLOCK_M queries of one (batch, head). It walks the keys
  BLOCK_N at a time with an online softmax (a running row maximum m and sum l; the accumulator is
  rescaled by exp(m_old - m_new) when the maximum grows), then writes out = acc / l and each row's
  log-sum-exp. With a causal mask (query i sees keys j <= i, as `tril` of an L x S matrix) the
  blocks wholly above the diagonal are skipped.
- `attention_backward_stats`: per query row, the log-sum-exp again (the forward's is not kept: a
  primitive has one output; recomputing costs one q k^T product, a seventh of the forward and
  backward products) and delta = rowsum(dO * O).
- `attention_backward_dkdv`: one program per BLOCK_N keys: walks the query blocks that see them,
  recomputing P^T = exp(k q^T * scale - lse) and accumulating dv += P^T dO and
  dk += (P^T * (v dO^T - delta)) q * scale.
- `attention_backward_dq`: one program per BLOCK_M queries: walks the keys they see, accumulating
  dq += (P * (dO v^T - delta)) k * scale. (Two kernels instead of atomic adds into dq: every
  output element is written once, by one program, in a fixed order, so results are reproducible.)

Numerics: scores are scaled by scale * log2(e) and exponentiated with exp2; the maxima, sums,
log-sum-exps and all accumulators are float32. float32 inputs multiply at the precision
`jitorch.backends.set_float32_matmul_precision` asks for: "highest" with `tl.dot(...,
input_precision="tf32x3")` (float32's accuracy from three TF32 tensor-core products, as PyTorch's
float32 attention kernels), "high" and "medium" in TF32 (as cuBLAS does for PyTorch). float16
and bfloat16 inputs multiply in their type with float32 accumulation; the probabilities (and
dS) are rounded to that type before their products, as in PyTorch's flash kernels.

Tails and masks: a head dim that is not a power of two (48, 96) takes the next power of two (at
least 16) as its block, the extra columns loaded as 0. Blocks inside the sequence and, causally,
wholly below the diagonal run an unmasked step; the others (the diagonal, a key or query tail)
a masked copy of the same step (the `MASKED` constant), which sets the scores it must not count
to -inf (or their probabilities to 0). Rows past the end of a tail block are read from the last
row rather than through a load mask: a masked load in the loop costs registers that the
`ptxas -v` reports showed spilling, and what those rows contribute is masked out anyway.

Scheduling: a 1-D grid of row blocks times (batch, head) pairs (a grid's y and z extents stop at
65535); causally the query blocks with the most keys first. Blocks per kernel, dtype and head
width are in `block_config`.

Layout: q, k, v, out, dO are (B, H, length, head dim) arrays of any strides but a unit stride along
the head dim (the caller copies otherwise); a batch or head stride of 0 (an expanded key) is fine.
The log-sum-exp and delta are float32 (B * H * L), in the log2 domain. The gradients are written
with the strides given (`attention_backward` gives views of its packed output), the output
heads-inside: (B, length, H, head dim) C-contiguous, viewed as (B, H, length, head dim), the layout
of the projections around attention. Offsets to a (batch, head) and a block are 64-bit; within a
block 32-bit.

This module holds the source text, plans launches (`forward_launches`, `backward_launches`:
kernel name, grid, arguments, constants) and runs the primitives over any array namespace with a
given launcher (`attention`, `attention_backward`); it imports Triton only in `define`. The cuda
backend (`jitorch.backends.cuda.attention`) runs them on CuPy arrays; tests run the very same
code on numpy arrays in Triton's CPU interpreter. `F.scaled_dot_product_attention` decides when
attention is this primitive (see there).
"""

from __future__ import annotations

import hashlib
import linecache
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from ..primitives import attention_gradients

SOURCE = '''\
import triton
import triton.language as tl


@triton.jit
def _block_rows(offs, row0, length, MASKED: tl.constexpr):
    # the rows of the block that starts at row `row0`, as offsets from it; in a masked block, those
    # past `length` read the last row instead. Valid memory without a load mask: a masked load in
    # the loop costs registers (spills), and what those rows contribute is masked out of the scores
    if MASKED:
        return tl.minimum(offs, length - 1 - row0)
    return offs


@triton.jit
def _scores(q, k_t, keys, k_len, offs_m, scale_log2, IS_CAUSAL: tl.constexpr, MASKED: tl.constexpr,
            DOT_PRECISION: tl.constexpr):
    # queries q [BLOCK_M, BLOCK_D] against keys `keys` (k_t: [BLOCK_D, BLOCK_N]), in the log2 domain;
    # masked: -inf at keys past the end and, causally, after the query
    s = tl.dot(q, k_t, input_precision=DOT_PRECISION) * scale_log2
    if MASKED:
        keep = keys[None, :] < k_len
        if IS_CAUSAL:
            keep = keep & (keys[None, :] <= offs_m[:, None])
        s = tl.where(keep, s, float("-inf"))
    return s


@triton.jit
def _key_ranges(start_m, k_len, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    # the keys that queries start_m .. start_m + BLOCK_M - 1 see: [0, unmasked) needs no mask (inside
    # the keys and, causally, at or before the block's first query); [unmasked, end) needs one
    if IS_CAUSAL:
        end = tl.minimum(k_len, start_m + BLOCK_M)
        unmasked = tl.minimum(k_len, start_m + 1) // BLOCK_N * BLOCK_N
    else:
        end = k_len
        unmasked = k_len // BLOCK_N * BLOCK_N
    return unmasked, end


@triton.jit
def _forward_step(acc, m_i, l_i, q, K, V, k_stride_s, v_stride_s, k_row0, k_len, offs_m, offs_n, offs_d, offs_dv,
                  scale_log2, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, IS_CAUSAL: tl.constexpr,
                  MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr, WITH_VALUES: tl.constexpr):
    # one block of keys into the online softmax: what was summed is rescaled when the maximum grows
    keys = k_row0 + offs_n
    rows = _block_rows(offs_n, k_row0, k_len, MASKED)
    k_ptrs = _rows_at(K, k_row0, k_stride_s) + rows[None, :] * k_stride_s + offs_d[:, None]  # k transposed
    k_t = tl.load(k_ptrs, mask=offs_d[:, None] < HEAD_DIM, other=0.0)
    s = _scores(q, k_t, keys, k_len, offs_m, scale_log2, IS_CAUSAL, MASKED, DOT_PRECISION)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)  # (first block: exp2(-inf) = 0; every row sees key 0 there, so m_new > -inf)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if WITH_VALUES:
        v_ptrs = _rows_at(V, k_row0, v_stride_s) + rows[:, None] * v_stride_s + offs_dv[None, :]
        v = tl.load(v_ptrs, mask=offs_dv[None, :] < HEAD_DIM_V, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _online_softmax(q, K, V, k_stride_s, v_stride_s, k_len, start_m, offs_m, offs_d, offs_dv, scale_log2,
                    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_DV: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    WITH_VALUES: tl.constexpr):
    # (acc, m, l) over every key the queries see; K and V point at this (batch, head)'s first key
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    unmasked, end = _key_ranges(start_m, k_len, BLOCK_M, BLOCK_N, IS_CAUSAL)
    for k_row0 in range(0, unmasked, BLOCK_N):
        acc, m_i, l_i = _forward_step(acc, m_i, l_i, q, K, V, k_stride_s, v_stride_s, k_row0, k_len, offs_m, offs_n,
                                      offs_d, offs_dv, scale_log2, HEAD_DIM, HEAD_DIM_V, IS_CAUSAL, False,
                                      DOT_PRECISION, WITH_VALUES)
    for k_row0 in range(unmasked, end, BLOCK_N):
        acc, m_i, l_i = _forward_step(acc, m_i, l_i, q, K, V, k_stride_s, v_stride_s, k_row0, k_len, offs_m, offs_n,
                                      offs_d, offs_dv, scale_log2, HEAD_DIM, HEAD_DIM_V, IS_CAUSAL, True,
                                      DOT_PRECISION, WITH_VALUES)
    return acc, m_i, l_i


@triton.jit
def _program_rows(length, BLOCK: tl.constexpr, LONGEST_FIRST: tl.constexpr):
    # (first row, batch * head) of this program: a 1-D grid of ceil(length / BLOCK) blocks per
    # (batch, head) (the grid's y and z extents stop at 65535); causally the blocks with the most
    # work first, so that fewer programs are left running alone at the end
    n_blocks = tl.cdiv(length, BLOCK)
    block = tl.program_id(0) % n_blocks
    if LONGEST_FIRST:
        block = n_blocks - 1 - block
    return block * BLOCK, tl.program_id(0) // n_blocks


@triton.jit
def _rows_at(base, row0, stride):
    # the address of row `row0` (a scalar) from `base`, in 64 bits; a block's offsets from it stay
    # 32-bit, and are computed afresh per block rather than kept in registers across the loop
    return base + tl.cast(row0, tl.int64) * stride  # (the interpreter gives a loop variable as an int)


@triton.jit
def _head_start(bh, n_heads, stride_b, stride_h):
    # the element offset of (batch, head) `bh`'s first row, in 64 bits
    return (bh // n_heads).to(tl.int64) * stride_b + (bh % n_heads).to(tl.int64) * stride_h


@triton.jit
def _block_start(bh, n_heads, row0, stride_b, stride_h, stride_l):
    # the element offset of row `row0` (a scalar tensor) of (batch, head) `bh`, in 64 bits: a tensor
    # may hold more than 2**31 elements (offsets within a block stay 32-bit)
    return _head_start(bh, n_heads, stride_b, stride_h) + row0.to(tl.int64) * stride_l


@triton.jit
def attention_forward(Q, K, V, Out, Lse,
                      q_stride_b, q_stride_h, q_stride_l, k_stride_b, k_stride_h, k_stride_s,
                      v_stride_b, v_stride_h, v_stride_s, o_stride_b, o_stride_h, o_stride_l,
                      n_heads, q_len, k_len, scale_log2,
                      HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, IS_CAUSAL: tl.constexpr,
                      DOT_PRECISION: tl.constexpr):
    # out = softmax(q k^T * scale) v for BLOCK_M queries of one (batch, head); Lse: their log2-sum-exp2
    start_m, bh = _program_rows(q_len, BLOCK_M, IS_CAUSAL)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    rows = tl.arange(0, BLOCK_M)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_ptrs = Q + _block_start(bh, n_heads, start_m, q_stride_b, q_stride_h, q_stride_l) + rows * q_stride_l \\
        + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < q_len) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    acc, m_i, l_i = _online_softmax(
        q, K + _head_start(bh, n_heads, k_stride_b, k_stride_h),
        V + _head_start(bh, n_heads, v_stride_b, v_stride_h), k_stride_s, v_stride_s, k_len, start_m, offs_m,
        offs_d, offs_dv, scale_log2, HEAD_DIM, HEAD_DIM_V, BLOCK_M, BLOCK_N, BLOCK_DV, IS_CAUSAL, DOT_PRECISION, True)
    out = acc / l_i[:, None]
    o_ptrs = Out + _block_start(bh, n_heads, start_m, o_stride_b, o_stride_h, o_stride_l) + rows * o_stride_l \\
        + offs_dv[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=(offs_m[:, None] < q_len) & (offs_dv[None, :] < HEAD_DIM_V))
    tl.store(Lse + bh.to(tl.int64) * q_len + offs_m, m_i + tl.log2(l_i), mask=offs_m < q_len)


@triton.jit
def attention_backward_stats(Q, K, Out, GradOut, Lse, Delta,
                             q_stride_b, q_stride_h, q_stride_l, k_stride_b, k_stride_h, k_stride_s,
                             o_stride_b, o_stride_h, o_stride_l, g_stride_b, g_stride_h, g_stride_l,
                             n_heads, q_len, k_len, scale_log2,
                             HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                             IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # per query row: the log2-sum-exp2 of its scores (the forward's, recomputed without the values)
    # and delta = rowsum(dO * O)
    start_m, bh = _program_rows(q_len, BLOCK_M, IS_CAUSAL)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    rows = tl.arange(0, BLOCK_M)[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    in_rows = offs_m[:, None] < q_len
    q_ptrs = Q + _block_start(bh, n_heads, start_m, q_stride_b, q_stride_h, q_stride_l) + rows * q_stride_l \\
        + offs_d[None, :]
    q = tl.load(q_ptrs, mask=in_rows & (offs_d[None, :] < HEAD_DIM), other=0.0)
    k_base = K + _head_start(bh, n_heads, k_stride_b, k_stride_h)
    _, m_i, l_i = _online_softmax(q, k_base, k_base, k_stride_s, 0, k_len, start_m, offs_m, offs_d, offs_dv,
                                  scale_log2, HEAD_DIM, HEAD_DIM_V, BLOCK_M, BLOCK_N, BLOCK_DV, IS_CAUSAL,
                                  DOT_PRECISION, False)
    tl.store(Lse + bh.to(tl.int64) * q_len + offs_m, m_i + tl.log2(l_i), mask=offs_m < q_len)
    columns = in_rows & (offs_dv[None, :] < HEAD_DIM_V)
    o_ptrs = Out + _block_start(bh, n_heads, start_m, o_stride_b, o_stride_h, o_stride_l) + rows * o_stride_l \\
        + offs_dv[None, :]
    g_ptrs = GradOut + _block_start(bh, n_heads, start_m, g_stride_b, g_stride_h, g_stride_l) + rows * g_stride_l \\
        + offs_dv[None, :]
    o = tl.load(o_ptrs, mask=columns, other=0.0).to(tl.float32)
    g = tl.load(g_ptrs, mask=columns, other=0.0).to(tl.float32)
    tl.store(Delta + bh.to(tl.int64) * q_len + offs_m, tl.sum(o * g, 1), mask=offs_m < q_len)


@triton.jit
def _dkdv_step(dk, dv, k, v, Q, GradOut, q_stride_l, g_stride_l, Lse, Delta, q_row0, q_len, offs_n, offs_m, offs_d,
               offs_dv, scale_log2, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, IS_CAUSAL: tl.constexpr,
               MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # one block of queries into the keys' dk and dv, computed transposed (keys along the rows)
    queries = q_row0 + offs_m
    rows = _block_rows(offs_m, q_row0, q_len, MASKED)
    q_ptrs = _rows_at(Q, q_row0, q_stride_l) + rows[:, None] * q_stride_l + offs_d[None, :]
    g_ptrs = _rows_at(GradOut, q_row0, g_stride_l) + rows[:, None] * g_stride_l + offs_dv[None, :]
    q = tl.load(q_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    g = tl.load(g_ptrs, mask=offs_dv[None, :] < HEAD_DIM_V, other=0.0)
    lse = tl.load(Lse + q_row0 + rows)
    delta = tl.load(Delta + q_row0 + rows)
    p_t = tl.exp2(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * scale_log2 - lse[None, :])
    if MASKED:  # queries past the end, and causally the queries before a key, take no part
        keep = queries[None, :] < q_len
        if IS_CAUSAL:
            keep = keep & (offs_n[:, None] <= queries[None, :])
        p_t = tl.where(keep, p_t, 0.0)
    dv += tl.dot(p_t.to(g.dtype), g, input_precision=DOT_PRECISION)
    dp_t = tl.dot(v, tl.trans(g), input_precision=DOT_PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def attention_backward_dkdv(Q, K, V, GradOut, Lse, Delta, GradK, GradV,
                            q_stride_b, q_stride_h, q_stride_l, k_stride_b, k_stride_h, k_stride_s,
                            v_stride_b, v_stride_h, v_stride_s, g_stride_b, g_stride_h, g_stride_l,
                            dk_stride_b, dk_stride_h, dk_stride_s, dv_stride_b, dv_stride_h, dv_stride_s,
                            n_heads, q_len, k_len, scale, scale_log2,
                            HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                            IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # dk and dv of BLOCK_N keys of one (batch, head), from every query block that sees them
    start_n, bh = _program_rows(k_len, BLOCK_N, False)  # (causally the first keys have the most work)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    keys = offs_n[:, None] < k_len
    block = tl.arange(0, BLOCK_N)[:, None]
    k_ptrs = K + _block_start(bh, n_heads, start_n, k_stride_b, k_stride_h, k_stride_s) + block * k_stride_s \\
        + offs_d[None, :]
    v_ptrs = V + _block_start(bh, n_heads, start_n, v_stride_b, v_stride_h, v_stride_s) + block * v_stride_s \\
        + offs_dv[None, :]
    k = tl.load(k_ptrs, mask=keys & (offs_d[None, :] < HEAD_DIM), other=0.0)
    v = tl.load(v_ptrs, mask=keys & (offs_dv[None, :] < HEAD_DIM_V), other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    Lse += bh.to(tl.int64) * q_len
    Delta += bh.to(tl.int64) * q_len
    # the query blocks that see these keys: all, or causally those from the block of query start_n on,
    # of which the ones before the first query at or after the last key need the causal mask; the
    # query tail needs a mask either way
    if IS_CAUSAL:
        first = start_n // BLOCK_M * BLOCK_M
        unmasked = tl.minimum(tl.cdiv(start_n + BLOCK_N - 1, BLOCK_M) * BLOCK_M, q_len // BLOCK_M * BLOCK_M)
        unmasked = tl.maximum(unmasked, first)
    else:
        first = start_n * 0  # (a scalar tensor, as in the causal case)
        unmasked = first
    full = tl.maximum(q_len // BLOCK_M * BLOCK_M, unmasked)
    Q += _head_start(bh, n_heads, q_stride_b, q_stride_h)
    GradOut += _head_start(bh, n_heads, g_stride_b, g_stride_h)
    for q_row0 in range(first, unmasked, BLOCK_M):
        dk, dv = _dkdv_step(dk, dv, k, v, Q, GradOut, q_stride_l, g_stride_l, Lse, Delta, q_row0, q_len, offs_n, offs_m,
                            offs_d, offs_dv, scale_log2, HEAD_DIM, HEAD_DIM_V, IS_CAUSAL, True, DOT_PRECISION)
    for q_row0 in range(unmasked, full, BLOCK_M):
        dk, dv = _dkdv_step(dk, dv, k, v, Q, GradOut, q_stride_l, g_stride_l, Lse, Delta, q_row0, q_len, offs_n, offs_m,
                            offs_d, offs_dv, scale_log2, HEAD_DIM, HEAD_DIM_V, IS_CAUSAL, False, DOT_PRECISION)
    for q_row0 in range(full, q_len, BLOCK_M):
        dk, dv = _dkdv_step(dk, dv, k, v, Q, GradOut, q_stride_l, g_stride_l, Lse, Delta, q_row0, q_len, offs_n, offs_m,
                            offs_d, offs_dv, scale_log2, HEAD_DIM, HEAD_DIM_V, IS_CAUSAL, True, DOT_PRECISION)
    dk_ptrs = GradK + _block_start(bh, n_heads, start_n, dk_stride_b, dk_stride_h, dk_stride_s) \\
        + block * dk_stride_s + offs_d[None, :]
    dv_ptrs = GradV + _block_start(bh, n_heads, start_n, dv_stride_b, dv_stride_h, dv_stride_s) \\
        + block * dv_stride_s + offs_dv[None, :]
    tl.store(dk_ptrs, (dk * scale).to(GradK.dtype.element_ty), mask=keys & (offs_d[None, :] < HEAD_DIM))
    tl.store(dv_ptrs, dv.to(GradV.dtype.element_ty), mask=keys & (offs_dv[None, :] < HEAD_DIM_V))


@triton.jit
def _dq_step(dq, q, g, lse, delta, K, V, k_stride_s, v_stride_s, k_row0, k_len, offs_m, offs_n, offs_d, offs_dv,
             scale_log2, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, IS_CAUSAL: tl.constexpr,
             MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # one block of keys into the queries' dq
    keys = k_row0 + offs_n
    rows = _block_rows(offs_n, k_row0, k_len, MASKED)
    k_ptrs = _rows_at(K, k_row0, k_stride_s) + rows[None, :] * k_stride_s + offs_d[:, None]  # k transposed
    v_ptrs = _rows_at(V, k_row0, v_stride_s) + rows[None, :] * v_stride_s + offs_dv[:, None]  # v transposed
    k_t = tl.load(k_ptrs, mask=offs_d[:, None] < HEAD_DIM, other=0.0)
    v_t = tl.load(v_ptrs, mask=offs_dv[:, None] < HEAD_DIM_V, other=0.0)
    p = tl.exp2(_scores(q, k_t, keys, k_len, offs_m, scale_log2, IS_CAUSAL, MASKED, DOT_PRECISION) - lse[:, None])
    ds = p * (tl.dot(g, v_t, input_precision=DOT_PRECISION) - delta[:, None])  # (masked: p = 0)
    dq += tl.dot(ds.to(k_t.dtype), tl.trans(k_t), input_precision=DOT_PRECISION)
    return dq


@triton.jit
def attention_backward_dq(Q, K, V, GradOut, Lse, Delta, GradQ,
                          q_stride_b, q_stride_h, q_stride_l, k_stride_b, k_stride_h, k_stride_s,
                          v_stride_b, v_stride_h, v_stride_s, g_stride_b, g_stride_h, g_stride_l,
                          dq_stride_b, dq_stride_h, dq_stride_l,
                          n_heads, q_len, k_len, scale, scale_log2,
                          HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                          IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # dq of BLOCK_M queries of one (batch, head), from every key block they see
    start_m, bh = _program_rows(q_len, BLOCK_M, IS_CAUSAL)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    rows = tl.arange(0, BLOCK_M)[:, None]
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    in_rows = offs_m < q_len
    q_ptrs = Q + _block_start(bh, n_heads, start_m, q_stride_b, q_stride_h, q_stride_l) + rows * q_stride_l \\
        + offs_d[None, :]
    g_ptrs = GradOut + _block_start(bh, n_heads, start_m, g_stride_b, g_stride_h, g_stride_l) + rows * g_stride_l \\
        + offs_dv[None, :]
    q = tl.load(q_ptrs, mask=in_rows[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    g = tl.load(g_ptrs, mask=in_rows[:, None] & (offs_dv[None, :] < HEAD_DIM_V), other=0.0)
    lse = tl.load(Lse + bh.to(tl.int64) * q_len + offs_m, mask=in_rows, other=0.0)
    delta = tl.load(Delta + bh.to(tl.int64) * q_len + offs_m, mask=in_rows, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    K += _head_start(bh, n_heads, k_stride_b, k_stride_h)
    V += _head_start(bh, n_heads, v_stride_b, v_stride_h)
    unmasked, end = _key_ranges(start_m, k_len, BLOCK_M, BLOCK_N, IS_CAUSAL)
    for k_row0 in range(0, unmasked, BLOCK_N):
        dq = _dq_step(dq, q, g, lse, delta, K, V, k_stride_s, v_stride_s, k_row0, k_len, offs_m, offs_n, offs_d,
                      offs_dv, scale_log2, HEAD_DIM, HEAD_DIM_V, IS_CAUSAL, False, DOT_PRECISION)
    for k_row0 in range(unmasked, end, BLOCK_N):
        dq = _dq_step(dq, q, g, lse, delta, K, V, k_stride_s, v_stride_s, k_row0, k_len, offs_m, offs_n, offs_d,
                      offs_dv, scale_log2, HEAD_DIM, HEAD_DIM_V, IS_CAUSAL, True, DOT_PRECISION)
    dq_ptrs = GradQ + _block_start(bh, n_heads, start_m, dq_stride_b, dq_stride_h, dq_stride_l) \\
        + rows * dq_stride_l + offs_d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(GradQ.dtype.element_ty), mask=in_rows[:, None] & (offs_d[None, :] < HEAD_DIM))
'''

_LOG2E = 1.4426950408889634
# Triton's name of each supported element type (a pointer argument's type is "*" + it)
TRITON_TYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
MAX_HEAD_DIM = 128  # larger heads would need smaller blocks than these kernels are tuned for


# ---------------------------------------------------------------------------------------------
# launches


class Operand(NamedTuple):
    """An array as the planner sees it: the caller's object (passed through to the kernel as an
    argument), its (B, H, length, head dim) shape and its strides in elements (the last one 1)."""

    array: object
    shape: tuple[int, int, int, int]
    strides: tuple[int, int, int, int]


@dataclass(frozen=True)
class BlockConfig:
    """Compile-time block sizes and the warps and pipeline stages per program."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def options(self) -> dict:
        """Options for `triton.compile` (and a launch): fused multiply-adds allowed (these kernels
        are compared with a tolerance, never bit for bit; and Triton 3.9 warns when it is unset)."""
        return {"num_warps": self.num_warps, "num_stages": self.num_stages, "enable_fp_fusion": True}


@dataclass
class Launch:
    """One kernel launch: `kernel` (a function of `SOURCE`) over `grid`, with `args` (the runtime
    arguments in order: the callers' arrays as given, the first `n_arrays`, then ints and floats)
    and the compile-time constants `constexprs`, compiled with `config.options()`."""

    kernel: str
    grid: tuple[int, int, int]
    args: tuple
    constexprs: dict[str, object]
    config: BlockConfig

    @property
    def n_arrays(self) -> int:
        return len(_POINTERS[self.kernel])


def block_dim(head_dim: int) -> int:
    """The block's extent along a head dim: the next power of two, at least 16 (`tl.dot`'s least)."""
    return max(16, 1 << max(head_dim - 1, 0).bit_length())


def dot_precision(dtype: str, float32_matmul_precision: str) -> str:
    """`tl.dot`'s input precision: "tf32x3" for float32 at "highest", else "tf32" (which float16
    and bfloat16 products ignore: they run in their type). tf32x3 splits each float32 operand into
    a TF32 high part and a TF32 remainder and sums three tensor-core products (the remainders'
    product, below float32's rounding, is left out): float32's accuracy at tensor-core speed, as
    PyTorch's own float32 attention does on sm_80 and later (its memory-efficient kernel multiplies
    with CUTLASS's OpMultiplyAddFastF32, the same three-product split)."""
    return "tf32x3" if dtype == "float32" and float32_matmul_precision == "highest" else "tf32"


# (BLOCK_M, BLOCK_N, warps, pipeline stages) by the kind of product ("half": float16 and bfloat16;
# "tf32" and "tf32x3": float32 at "high"/"medium" and at "highest"), the head width (up to 64, up to
# 128) and the kernel ("rows": the forward and the row statistics; "dkdv", whose BLOCK_N keys are a
# program's and BLOCK_M queries a step's; "dq"). Head dims up to 64 at "half" and "tf32": the
# fastest of the candidates `bench/attention.py --configs` timed on an H200 at the GPT-sized shape
# (8 x 12 heads x 1024, causal). The others: the largest blocks whose sm_90 code spills no
# registers, or a few dozen bytes ("ptxas -v" on Triton 3.9's PTX), not yet timed against others.
_BLOCKS = {
    ("half", 64): {"rows": (128, 64, 8, 3), "dkdv": (32, 64, 4, 3), "dq": (64, 32, 4, 3)},
    ("half", 128): {"rows": (128, 32, 8, 3), "dkdv": (32, 32, 8, 2), "dq": (64, 32, 8, 2)},
    ("tf32", 64): {"rows": (128, 64, 8, 3), "dkdv": (64, 128, 8, 2), "dq": (128, 32, 8, 2)},
    ("tf32", 128): {"rows": (128, 32, 8, 3), "dkdv": (32, 32, 8, 2), "dq": (32, 32, 4, 2)},
    # three products per tile hold more registers: smaller key blocks and one stage for dK, dV;
    # at head dims over 64 every configuration tried spills some, these the least
    ("tf32x3", 64): {"rows": (128, 32, 8, 3), "dkdv": (32, 32, 8, 1), "dq": (128, 32, 8, 2)},
    ("tf32x3", 128): {"rows": (128, 32, 8, 3), "dkdv": (16, 16, 4, 1), "dq": (16, 32, 4, 2)},
}
_KERNEL_GROUP = {"attention_forward": "rows", "attention_backward_stats": "rows", "attention_backward_dkdv": "dkdv",
                 "attention_backward_dq": "dq"}


def block_config(kernel: str, dtype: str, precision: str, head_dim: int, head_dim_v: int) -> BlockConfig:
    """The blocks `kernel` runs with for inputs of `dtype` at the float32 matmul `precision` and
    these head dims, on H100/H200-class GPUs (sm_90: 227 KiB of shared memory per program)."""
    kind = "half" if dtype != "float32" else dot_precision(dtype, precision)
    wide = 64 if max(block_dim(head_dim), block_dim(head_dim_v)) <= 64 else 128
    return BlockConfig(*_BLOCKS[kind, wide][_KERNEL_GROUP[kernel]])


def _check(q: Operand, k: Operand, v: Operand, dtype: str) -> None:
    if dtype not in TRITON_TYPE:
        raise TypeError(f"fused attention: dtype {dtype} is not supported (only {', '.join(TRITON_TYPE)})")
    for name, x in (("query", q), ("key", k), ("value", v)):
        if x.strides[3] != 1:
            raise ValueError(f"fused attention: {name} {x.shape} has strides {x.strides}: the head dim must be "
                             "contiguous (copy it first)")
    if max(q.shape[3], v.shape[3]) > MAX_HEAD_DIM:
        raise ValueError(f"fused attention: head dims {q.shape[3]} (query, key) and {v.shape[3]} (value) must be "
                         f"at most {MAX_HEAD_DIM}")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def forward_launches(q: Operand, k: Operand, v: Operand, out: Operand, lse: object, dtype: str, *,
                     is_causal: bool, scale: float, precision: str) -> list[Launch]:
    """The launch that writes `out` (B, H, L, Ev) and `lse` (B * H * L float32, log2 domain) for
    q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev) of `dtype` ("float32", "float16", "bfloat16"),
    at the float32 matmul `precision`. No launch for an empty output; an empty S is the caller's
    to answer (zeros)."""
    _check(q, k, v, dtype)
    n_batch, n_heads, q_len, _ = q.shape
    if q_len == 0 or n_batch * n_heads == 0:
        return []
    args = (q.array, k.array, v.array, out.array, lse, *q.strides[:3], *k.strides[:3], *v.strides[:3],
            *out.strides[:3], n_heads, q_len, k.shape[2], scale * _LOG2E)
    return [_launch("attention_forward", q_len, n_batch * n_heads, args, dtype, q, v, is_causal, precision)]


def backward_launches(q: Operand, k: Operand, v: Operand, out: Operand, grad_out: Operand, lse: object,
                      delta: object, dq: Operand, dk: Operand, dv: Operand, dtype: str, *, is_causal: bool,
                      scale: float, precision: str) -> list[Launch]:
    """The launches that write dq (B, H, L, E), dk (B, H, S, E) and dv (B, H, S, Ev) (any strides
    but a unit one along the head dim) for the output gradient `grad_out` of `out` =
    attention(q, k, v), using `lse` and `delta` (each B * H * L float32) as scratch: the row
    statistics, then dk and dv, then dq."""
    _check(q, k, v, dtype)
    n_batch, n_heads, q_len, _ = q.shape
    k_len = k.shape[2]
    if q_len == 0 or k_len == 0 or n_batch * n_heads == 0:
        return []
    bh = n_batch * n_heads
    strides = (*q.strides[:3], *k.strides[:3])
    sizes = (n_heads, q_len, k_len)
    stats = (q.array, k.array, out.array, grad_out.array, lse, delta, *strides, *out.strides[:3],
             *grad_out.strides[:3], *sizes, scale * _LOG2E)
    dkdv = (q.array, k.array, v.array, grad_out.array, lse, delta, dk.array, dv.array, *strides, *v.strides[:3],
            *grad_out.strides[:3], *dk.strides[:3], *dv.strides[:3], *sizes, scale, scale * _LOG2E)
    dq_args = (q.array, k.array, v.array, grad_out.array, lse, delta, dq.array, *strides, *v.strides[:3],
               *grad_out.strides[:3], *dq.strides[:3], *sizes, scale, scale * _LOG2E)
    return [_launch("attention_backward_stats", q_len, bh, stats, dtype, q, v, is_causal, precision),
            _launch("attention_backward_dkdv", k_len, bh, dkdv, dtype, q, v, is_causal, precision),
            _launch("attention_backward_dq", q_len, bh, dq_args, dtype, q, v, is_causal, precision)]


def _launch(kernel: str, length: int, n_heads: int, args: tuple, dtype: str, q: Operand, v: Operand,
            is_causal: bool, precision: str) -> Launch:
    """A launch of `kernel` over `length` rows (queries, or keys for dk and dv) of each of
    `n_heads` (batch, head) pairs: one program per block of rows (`_program_rows`)."""
    config = block_config(kernel, dtype, precision, q.shape[3], v.shape[3])
    block = config.block_n if kernel == "attention_backward_dkdv" else config.block_m
    constexprs = {"HEAD_DIM": q.shape[3], "HEAD_DIM_V": v.shape[3], "BLOCK_M": config.block_m,
                  "BLOCK_N": config.block_n, "BLOCK_D": block_dim(q.shape[3]), "BLOCK_DV": block_dim(v.shape[3]),
                  "IS_CAUSAL": bool(is_causal), "DOT_PRECISION": dot_precision(dtype, precision)}
    return Launch(kernel, (_cdiv(length, block) * n_heads, 1, 1), args, constexprs, config)


# ---------------------------------------------------------------------------------------------
# the primitives, over any array namespace


def attention(xp, run: Callable[[list[Launch]], None], q, k, v, *, is_causal: bool, scale: float,
              precision: str):
    """The `attention` primitive on arrays of the namespace `xp` (CuPy on the GPU; numpy in tests,
    which interpret the kernels): out (B, H, L, Ev) for q (B, H, L, E), k (B, H, S, E) and
    v (B, H, S, Ev), its launches queued by `run`, at the float32 matmul `precision`."""
    q, k, v = (_rows_contiguous(xp, x) for x in (q, k, v))
    n_batch, n_heads, q_len, _ = q.shape
    # heads-inside, (B, L, H, Ev) viewed as (B, H, L, Ev) (as PyTorch's flash attention): the
    # layout the output projection reads it in after its permute and reshape, which stay views
    out = xp.empty((n_batch, q_len, n_heads, v.shape[3]), q.dtype).swapaxes(1, 2)
    if k.shape[2] == 0:  # no keys: an empty weighted sum, as the composite gives
        out.fill(0)
        return out
    lse = xp.empty(n_batch * n_heads * q_len, xp.float32)
    run(forward_launches(_operand(q), _operand(k), _operand(v), _operand(out), lse, q.dtype.name,
                         is_causal=is_causal, scale=scale, precision=precision))
    return out


def attention_backward(xp, run: Callable[[list[Launch]], None], q, k, v, out, grad_out, *, is_causal: bool,
                       scale: float, precision: str):
    """The `attention_backward` primitive likewise: dq, dk, dv packed flat (heads-inside, as
    `primitives.attention_gradients` reads them), for the output gradient `grad_out` of
    `out` = attention(q, k, v)."""
    q, k, v, out, grad_out = (_rows_contiguous(xp, x) for x in (q, k, v, out, grad_out))
    packed = xp.empty(q.size + k.size + v.size, q.dtype)
    dq, dk, dv = attention_gradients(packed, q.shape, k.shape, v.shape)
    n_batch, n_heads, q_len, _ = q.shape
    if q_len == 0 or k.shape[2] == 0:  # no scores: every gradient is zero
        packed.fill(0)
        return packed
    lse = xp.empty(n_batch * n_heads * q_len, xp.float32)
    delta = xp.empty_like(lse)
    run(backward_launches(_operand(q), _operand(k), _operand(v), _operand(out), _operand(grad_out), lse, delta,
                          _operand(dq), _operand(dk), _operand(dv), q.dtype.name, is_causal=is_causal, scale=scale,
                          precision=precision))
    return packed


def _rows_contiguous(xp, x):
    """`x`, or a copy of it where its head dim is strided (the kernels read rows as vectors)."""
    return x if x.strides[-1] == x.itemsize or x.shape[-1] <= 1 else xp.ascontiguousarray(x)


def _operand(x) -> Operand:
    strides = tuple(s // x.itemsize for s in x.strides)
    if x.shape[-1] <= 1:
        strides = strides[:-1] + (1,)  # (a head dim of 1 has any stride; the kernels take 1)
    return Operand(x, x.shape, strides)


# ---------------------------------------------------------------------------------------------
# the functions, and their signatures for ahead-of-time compiles


_POINTERS = {
    "attention_forward": ("Q", "K", "V", "Out", "Lse"),
    "attention_backward_stats": ("Q", "K", "Out", "GradOut", "Lse", "Delta"),
    "attention_backward_dkdv": ("Q", "K", "V", "GradOut", "Lse", "Delta", "GradK", "GradV"),
    "attention_backward_dq": ("Q", "K", "V", "GradOut", "Lse", "Delta", "GradQ"),
}
_FLOAT32_POINTERS = frozenset({"Lse", "Delta"})


def signature(kernel: str, dtype: str, args: tuple) -> dict[str, str]:
    """Argument name -> type for `triton.compiler.ASTSource`, from a launch's `args` (ints as i32
    or i64 by their value, floats fp32, as Triton types them when it is called), constants last."""
    names = _argument_names(kernel)
    pointers = _POINTERS[kernel]
    types = {}
    for name, value in zip(names, args):
        if name in pointers:
            types[name] = "*fp32" if name in _FLOAT32_POINTERS else "*" + TRITON_TYPE[dtype]
        elif isinstance(value, float):
            types[name] = "fp32"
        else:
            types[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
    return types | {name: "constexpr" for name in names[len(args):]}


def _argument_names(kernel: str) -> list[str]:
    """The parameter names of `kernel` in `SOURCE`, in order (read from the text, so that they
    can't drift from it)."""
    header = SOURCE[SOURCE.index(f"def {kernel}("):]
    header = header[header.index("(") + 1:header.index("):")]
    return [part.split(":")[0].strip() for part in header.replace("\n", " ").split(",") if part.strip()]


_defined: dict[str, dict] = {}


def define(kernel: str):
    """The `@triton.jit` function `kernel` of `SOURCE`, defined in this process (registered with
    `linecache`, where Triton reads a function's source); under TRITON_INTERPRET=1, read when the
    functions are first defined here, an interpreted function. The cuda backend loads the same text
    through its kernel-source cache instead (`jitorch.backends.cuda.launch.load_kernel_function`)."""
    import os

    mode = os.environ.get("TRITON_INTERPRET", "0")
    namespace = _defined.get(mode)
    if namespace is None:
        digest = hashlib.sha1(SOURCE.encode()).hexdigest()[:16]
        filename = f"<jitorch triton attention {digest}>"
        linecache.cache[filename] = (len(SOURCE), None, SOURCE.splitlines(True), filename)
        namespace = {"__name__": f"jitorch_triton_attention_{digest}"}  # (Triton reads a helper's module name)
        exec(compile(SOURCE, filename, "exec"), namespace)
        _defined[mode] = namespace
    return namespace[kernel]


def scale_or_default(scale: float | None, head_dim: int) -> float:
    """PyTorch's default scale, 1 / sqrt(E), unless one is given."""
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)

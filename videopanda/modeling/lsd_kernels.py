"""LSD's window attention with its key and value projections folded into the query and the output (Triton).

LSD summarises each s x s window by one query (from the window's mean) attending over the window's s*s tokens, with
keys and values `layer_norm(x_p) @ Wk^T` and `layer_norm(x_p) @ Wv^T`. Projecting every token costs 2*C*C
multiply-adds per token: 275 GFLOP at 8 videos of the 7B STAB, the second-largest matmul of the whole encoder.
Because each query meets only s*s tokens, the projections can move to the query's side and the output's side:

    q_h . (Wk_h n_p)            == (Wk_h^T q_h) . n_p                   (one C-vector per window and head)
    sum_p a_hp (Wv_h n_p)       == Wv_h (sum_p a_hp n_p)                (one C-vector per window and head)

so a window costs 2*C*C multiply-adds on the tensor cores instead of 2*s*s*C*C, plus 2*heads*s*s*C on the CUDA
cores. The layer norm n_p = g * (x_p - mean_p) * rstd_p + b is never written either:
- its scale g is folded into the weights (Wk' = Wk diag(g), Wv' = Wv diag(g));
- its shift b adds q_h . Wk_h b to every score of a window and head, which the softmax cancels, and Wv b to every
  output, since the weights sum to one.
So `lsd_scores` takes, per window, the tokens' statistics and the scores rstd_p (u_h . x_p - mean_p sum(u_h)) with
u_h = Wk'_h^T q_h, and writes the softmax weights times rstd_p; `lsd_values` takes the weighted sum of the centred
tokens and its product with Wv'_h. Neither writes anything per token. The math is the reference's (docs/model.md);
the rounding differs: the reference rounds the normed tokens and the keys/values to bfloat16, these kernels round
only the weighted sum, before its tensor-core dot.

Imported only where used (it needs Triton). Like `kernels`, both are `torch.library.triton_op`s, and on CPU they run
under Triton's interpreter for the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kernels import _dot_args

# Fixed configurations (no autotuning inside a graph capture), chosen on an H100 (bench/speed_probe.py
# --lsd-fold-sweep): windows per program, channels per step, warps.
SCORES_BLOCK_M, SCORES_BLOCK_C, SCORES_WARPS = 64, 64, 8
VALUES_BLOCK_M, VALUES_BLOCK_C, VALUES_WARPS = 64, 64, 8


@triton.jit
def _window_rows(NW, HW, Wn, s_n, s_i, s_a, s_j, s_b, S: tl.constexpr, SP: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's windows and the offsets of their s*s tokens ([BLOCK_M, SP], padded positions masked):
    position (a, b) of window (n, i, j) at n * s_n + i * s_i + a * s_a + j * s_j + b * s_b."""
    win = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    pos = tl.arange(0, SP)
    base = (win // HW).to(tl.int64) * s_n + ((win % HW) // Wn) * s_i + (win % Wn) * s_j
    rows = base[:, None] + ((pos // S) * s_a + (pos % S) * s_b)[None, :]
    mask = (win < NW)[:, None] & (pos < S * S)[None, :]
    return win, pos, rows, mask


@triton.jit
def _lsd_scores_kernel(x_ptr, q_ptr, wk_ptr, w_ptr, mu_ptr, NW, HW, Wn, s_n, s_i, s_a, s_j, s_b, scale, eps,
                       C: tl.constexpr, H: tl.constexpr, HP: tl.constexpr, HD: tl.constexpr, HDP: tl.constexpr,
                       S: tl.constexpr, SP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                       PREC: tl.constexpr, ACC: tl.constexpr):
    """For BLOCK_M windows and every head: w[win, h, p] = softmax_p(scores)[h, p] * rstd_p and mu[win, p] = mean_p.
    A step of BLOCK_C channels loads the windows' tokens once and serves every head: u_h for those channels is one
    tensor-core dot (q_h [BLOCK_M, HD] @ Wk'_h [HD, BLOCK_C]), then its products with the s*s tokens are summed on
    the CUDA cores. The statistics combine each step's mean and squared deviations (Chan's formula), so a large mean
    does not cancel; u_h . x_p is taken from the tokens as they are (exact products, float32 sums) and the mean is
    taken out after it, as in `kernels._ln_scores_kernel`."""
    win, pos, rows, xmask = _window_rows(NW, HW, Wn, s_n, s_i, s_a, s_j, s_b, S, SP, BLOCK_M)
    wmask = win < NW
    heads = tl.arange(0, HP)
    d = tl.arange(0, HDP)
    dmask = d < HD
    dots = tl.zeros((BLOCK_M, HP, SP), ACC)  # u_h . x_p
    usum = tl.zeros((BLOCK_M, HP), ACC)  # sum of u_h's channels
    mean = tl.zeros((BLOCK_M, SP), ACC)
    m2 = tl.zeros((BLOCK_M, SP), ACC)
    q_rows = q_ptr + win.to(tl.int64)[:, None] * C
    for c0 in tl.range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        x = tl.load(x_ptr + rows[:, :, None] + cols[None, None, :], mask=xmask[:, :, None] & cmask[None, None, :],
                    other=0.0).to(ACC)  # [BLOCK_M, SP, BLOCK_C]
        count = tl.sum(cmask.to(ACC), 0)
        block_mean = tl.sum(x, 2) / count
        dev = tl.where(cmask[None, None, :], x - block_mean[:, :, None], 0.0)
        delta = block_mean - mean
        mean += delta * (count / (count + c0))
        m2 += tl.sum(dev * dev, 2) + delta * delta * (count * c0 / (count + c0))
        for h in tl.static_range(H):
            q = tl.load(q_rows + h * HD + d[None, :], mask=wmask[:, None] & dmask[None, :], other=0.0)
            wk = tl.load(wk_ptr + (h * HD + d)[:, None] * C + cols[None, :], mask=dmask[:, None] & cmask[None, :],
                         other=0.0)
            u = tl.dot(q, wk, input_precision=PREC, out_dtype=ACC)  # [BLOCK_M, BLOCK_C]
            dots += tl.where((heads == h)[None, :, None], tl.sum(u[:, None, :] * x, 2)[:, None, :], 0.0)
            usum += tl.where((heads == h)[None, :], tl.sum(u, 1)[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(m2 / C + eps)
    scores = (dots - mean[:, None, :] * usum[:, :, None]) * (rstd * scale)[:, None, :]
    scores = tl.where((pos < S * S)[None, None, :], scores, float("-inf"))
    e = tl.exp(scores - tl.max(scores, 2)[:, :, None])
    w = e / tl.sum(e, 2)[:, :, None] * rstd[:, None, :]
    SS: tl.constexpr = S * S
    dst = w_ptr + win.to(tl.int64)[:, None, None] * (H * SS) + heads[None, :, None] * SS + pos[None, None, :]
    tl.store(dst, w, mask=xmask[:, None, :] & (heads < H)[None, :, None])
    tl.store(mu_ptr + win.to(tl.int64)[:, None] * SS + pos[None, :], mean, mask=xmask)


@triton.jit
def _lsd_values_kernel(x_ptr, w_ptr, mu_ptr, wv_ptr, vb_ptr, out_ptr, NW, HW, Wn, s_n, s_i, s_a, s_j, s_b,
                       C: tl.constexpr, H: tl.constexpr, HD: tl.constexpr, HDP: tl.constexpr, S: tl.constexpr,
                       SP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, PREC: tl.constexpr,
                       ACC: tl.constexpr):
    """Head program_id(1) of BLOCK_M windows: out = (sum_p w_p (x_p - mean_p)) @ Wv'_h^T + vb_h. The weighted sum
    of a step's channels is rounded to the weights' dtype for the tensor-core dot; it is centred first, so the
    rounding is relative to the normed values, not to the raw tokens."""
    win, pos, rows, xmask = _window_rows(NW, HW, Wn, s_n, s_i, s_a, s_j, s_b, S, SP, BLOCK_M)
    h = tl.program_id(1)
    SS: tl.constexpr = S * S
    w = tl.load(w_ptr + win.to(tl.int64)[:, None] * (H * SS) + h * SS + pos[None, :], mask=xmask, other=0.0)
    mu = tl.load(mu_ptr + win.to(tl.int64)[:, None] * SS + pos[None, :], mask=xmask, other=0.0)
    d = tl.arange(0, HDP)
    dmask = d < HD
    acc = tl.zeros((BLOCK_M, HDP), ACC)
    for c0 in tl.range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        x = tl.load(x_ptr + rows[:, :, None] + cols[None, None, :], mask=xmask[:, :, None] & cmask[None, None, :],
                    other=0.0).to(ACC)
        m = tl.sum(w[:, :, None] * (x - mu[:, :, None]), 1)  # [BLOCK_M, BLOCK_C]
        wv = tl.load(wv_ptr + cols[:, None] * C + (h * HD + d)[None, :], mask=cmask[:, None] & dmask[None, :],
                     other=0.0)  # Wv'^T: [BLOCK_C, HDP]
        acc = tl.dot(m.to(wv.dtype), wv, acc, input_precision=PREC, out_dtype=ACC)
    out = acc + tl.load(vb_ptr + h * HD + d, mask=dmask, other=0.0).to(ACC)[None, :]
    tl.store(out_ptr + win.to(tl.int64)[:, None] * C + h * HD + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=(win < NW)[:, None] & dmask[None, :])


def _window_args(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """x [n, h, s, w, s, C] with a unit channel stride (a copy otherwise) -> (x, (NW, HW, Wn, s_n, s_i, s_a, s_j,
    s_b))."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    n, h, _, w = x.shape[:4]
    return x, (n * h * w, h * w, w, *x.stride()[:5])


def _sizes(x: torch.Tensor, num_heads: int) -> dict:
    C, s = x.shape[-1], x.shape[2]
    hd = C // num_heads
    return dict(C=C, HD=hd, HDP=max(16, triton.next_power_of_2(hd)), S=s, SP=triton.next_power_of_2(s * s),
                **_dot_args(x.dtype))


@torch.library.triton_op("videopanda::lsd_scores", mutates_args=())
def lsd_scores(x: torch.Tensor, q: torch.Tensor, wk: torch.Tensor, num_heads: int, scale: float,
               eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x: the windows [n, h, s, w, s, C] (any strides with a unit channel stride); q [n, h, w, C] (before the
    scale); wk = Wk diag(g) [C, C], the key projection with the layer norm's scale folded in. Returns (weights
    [n*h*w, heads, s*s], means [n*h*w, s*s]): the softmax over each window's positions of
    scale * q_h . k_p, times the position's 1/std, in float32 (float64 for float64 x)."""
    x, (NW, *strides) = _window_args(x)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = x.shape[2]
    w = torch.empty(NW, num_heads, s * s, dtype=acc, device=x.device)
    mu = torch.empty(NW, s * s, dtype=acc, device=x.device)
    torch.library.wrap_triton(_lsd_scores_kernel)[(triton.cdiv(NW, SCORES_BLOCK_M),)](
        x, q.contiguous(), wk.contiguous(), w, mu, NW, *strides, scale, eps, H=num_heads,
        HP=triton.next_power_of_2(num_heads), BLOCK_M=SCORES_BLOCK_M, BLOCK_C=SCORES_BLOCK_C, num_warps=SCORES_WARPS,
        **_sizes(x, num_heads))
    return w, mu


@torch.library.triton_op("videopanda::lsd_values", mutates_args=())
def lsd_values(x: torch.Tensor, weights: torch.Tensor, mean: torch.Tensor, wv_t: torch.Tensor,
               vb: torch.Tensor) -> torch.Tensor:
    """x: the windows as for `lsd_scores`; weights, mean: its outputs; wv_t = (Wv diag(g))^T [C, C]; vb = Wv b [C].
    Returns [n, h, w, C] in x's dtype: per head, the softmax-weighted sum of the window's values."""
    x, (NW, *strides) = _window_args(x)
    n, h, s, w, _, C = x.shape
    heads = weights.shape[1]
    out = torch.empty(n, h, w, C, dtype=x.dtype, device=x.device)
    torch.library.wrap_triton(_lsd_values_kernel)[(triton.cdiv(NW, VALUES_BLOCK_M), heads)](
        x, weights.contiguous(), mean.contiguous(), wv_t.contiguous(), vb.contiguous(), out, NW, *strides, H=heads,
        BLOCK_M=VALUES_BLOCK_M, BLOCK_C=VALUES_BLOCK_C, num_warps=VALUES_WARPS, **_sizes(x, heads))
    return out

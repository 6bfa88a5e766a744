"""Hand-written Triton kernels for the fused STAB's inference path.

Only what no library does well (docs/speed.md has the measurements):
- `dpe3d`, the dpe: a depthwise 3x3x3 convolution over channels-last [N, T, H, W, C] features. Inductor turns its 27
  shifted multiply-adds into one kernel that fetches every input element 27 times, and cuDNN's depthwise conv3d is
  slower still. Here a program owns a few rows of positions of one frame and a block of channels and loads each of
  the 27 shifted input blocks once; the blocks overlap, so most rows come from the SM's L1. The input comes padded
  with a zero border, so no load needs a bounds mask: the kernel was limited by its integer work per element and
  tap, not by memory. 0.23 ms at 8 videos of the 7B STAB (0.42 ms with bounds masks, inductor 1.75 ms, cuDNN 7.6 ms;
  H100). `dpe3d_residual` also writes dpe(x) + x from the same accumulator, the LSTE's output, sparing a pass.
- `patch_unfold`, the patch embedding's im2col: frames to rows of 3*14*14 pixels (zero-filled to an aligned width)
  in one pass, where inductor's permute and pad read the pixels at about half the memory's speed. `patch_unfold_at`
  reads the pixels at an address held in a device tensor, so a CUDA graph can take each call's pixels where they are.
- `lsd_attend`, LSD's attention inside each 2x2 window: scores, softmax and weighted sum in one pass over the keys
  and values (online softmax), where inductor made a score reduction and a weighted sum of them.
- `ln_pool`, the attention of GSTRA's and FSRA's constant query over layer-normed keys, without writing the normed
  keys: one pass takes each row's mean, 1/std and scores, a second the softmax-weighted sum of the centred rows
  (the layer norm's scale and shift are applied once, to the pooled result, since the weights sum to one).

All are `torch.library.triton_op`s: they run eagerly, and torch.compile / CUDA graphs see each as one kernel.
Without Triton (CPU-only installs) `available()` is False and the STAB keeps its other forms. On CPU the kernels run
under Triton's interpreter (`TRITON_INTERPRET=1`, set before Triton is imported), which is how the tests check them.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

# One fixed configuration (no autotuning: a first call inside a CUDA-graph capture must not benchmark). Chosen by
# bench/speed_probe.py on an H100 (bench/results/); it only affects speed.
BLOCK_H, BLOCK_C = 1, 128  # rows of positions and channels per program
NUM_WARPS = 4
# the patch unfold (`patch_unfold`): columns per step, warps
UNFOLD_BLOCK_K, UNFOLD_NUM_WARPS = 128, 4
# LSD's window attention (`lsd_attend`): windows per program (one head each), warps
LSD_BLOCK_N = 32
LSD_NUM_WARPS = 4
# GSTRA/FSRA pooling (`ln_pool`): rows per program and channels per step of the score pass; rows per step and
# channels per program of the pooling pass
POOL_SCORE_ROWS, POOL_BLOCK_K, POOL_SCORE_WARPS = 32, 128, 4
POOL_BLOCK_L, POOL_BLOCK_C, POOL_WARPS = 64, 128, 4
# programs the pooling pass aims for when it splits the rows of few sets: two waves of an H100's 132 SMs
POOL_PROGRAMS = 264


def available(x: torch.Tensor) -> bool:
    """Whether the kernels can run on this tensor's device."""
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _dpe_kernel(x_ptr, w_ptr, b_ptr, out_ptr, r_ptr, sum_ptr, T, s_wc, s_wt, H: tl.constexpr,
                    W: tl.constexpr, C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                    BLOCK_C: tl.constexpr, EVEN: tl.constexpr, RESIDUAL: tl.constexpr, ACC: tl.constexpr):
        """out[n, t, h, w, c] = b[c] + sum_{a,b,d} wt[c, 9a+3b+d] * xp[n, t+a-1, h+b, w+d, c], frames outside the
        chunk counted as zero. xp: [N, T, H+2, W+2, C], zero-padded by one row and column on each side of a frame;
        out: [N, T, H, W, C]; weight (c, tap) at c * s_wc + tap * s_wt. RESIDUAL: also sum = out + r (r and sum
        shaped as out), from the float32 accumulator.

        A program owns BLOCK_H rows of W positions of one frame and a block of channels, and loads each of the 27
        shifted input blocks once: the blocks overlap, so most rows come from the SM's L1. The padding and the
        compile-time frame size make every tap the centre block's addresses plus a constant, with no bounds mask
        (EVEN: the blocks tile H, W and C exactly), so the integer work per element and tap is gone; only the chunk's
        first and last frames take a branch."""
        blocks_h = (H + BLOCK_H - 1) // BLOCK_H
        frame = tl.program_id(0) // blocks_h  # (n, t)
        t = frame % T
        offs_h = (tl.program_id(0) % blocks_h) * BLOCK_H + tl.arange(0, BLOCK_H)
        offs_w = tl.arange(0, BLOCK_W)
        offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        PADDED: tl.constexpr = (H + 2) * (W + 2) * C  # one padded frame
        centre = x_ptr + frame.to(tl.int64) * PADDED + \
            ((offs_h[:, None, None] + 1) * (W + 2) + offs_w[None, :, None] + 1) * C + offs_c[None, None, :]
        cmask = offs_c < C
        m = (offs_h < H)[:, None, None] & (offs_w < W)[None, :, None] & cmask[None, None, :]
        acc = tl.zeros((BLOCK_H, BLOCK_W, BLOCK_C), ACC)
        if EVEN:
            acc += tl.load(b_ptr + offs_c).to(ACC)[None, None, :]
        else:
            acc += tl.load(b_ptr + offs_c, mask=cmask, other=0.0).to(ACC)[None, None, :]
        for a in tl.static_range(3):
            tt = t + a - 1
            if (tt >= 0) & (tt < T):
                for b in tl.static_range(3):
                    for d in tl.static_range(3):
                        src = centre + (a - 1) * PADDED + ((b - 1) * (W + 2) + d - 1) * C
                        taps = w_ptr + offs_c * s_wc + (a * 9 + b * 3 + d) * s_wt
                        if EVEN:
                            v = tl.load(src)
                            wt = tl.load(taps)
                        else:
                            v = tl.load(src, mask=m, other=0.0)
                            wt = tl.load(taps, mask=cmask, other=0.0)
                        acc += v.to(ACC) * wt.to(ACC)[None, None, :]
        offs = (frame.to(tl.int64) * H * W + offs_h[:, None, None] * W + offs_w[None, :, None]) * C + \
            offs_c[None, None, :]
        if EVEN:
            tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty))
            if RESIDUAL:
                tl.store(sum_ptr + offs, (acc + tl.load(r_ptr + offs).to(ACC)).to(sum_ptr.dtype.element_ty))
        else:
            tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=m)
            if RESIDUAL:
                r = tl.load(r_ptr + offs, mask=m, other=0.0).to(ACC)
                tl.store(sum_ptr + offs, (acc + r).to(sum_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _unfold_kernel(x_ptr, out_ptr, s_f, s_c, s_y, G, K: tl.constexpr, KP: tl.constexpr, P: tl.constexpr,
                       BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, PIX: tl.constexpr):
        """Patch row gh of one frame: out[(frame * G + gh) * G + gw, k] = x[frame, c, gh * P + i, gw * P + j] with
        k = (c * P + i) * P + j < K, and zeros for K <= k < KP. The lanes run along k, so reads come in runs of P
        pixels and the [G, KP] block written is contiguous. PIX: None, x_ptr points at the pixels; a dtype, x_ptr
        points at one int64 holding the address of the pixels, of that dtype (`patch_unfold_at`)."""
        if PIX is not None:
            x_ptr = tl.load(x_ptr).to(tl.pointer_type(PIX))
        frame = tl.program_id(0) // G
        gh = tl.program_id(0) % G
        gw = tl.arange(0, BLOCK_G)
        src = x_ptr + frame.to(tl.int64) * s_f + gh * P * s_y + gw[:, None] * P
        dst = out_ptr + (tl.program_id(0).to(tl.int64) * G + gw[:, None]) * KP
        for k0 in tl.static_range(0, KP, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            c, i, j = k // (P * P), (k // P) % P, k % P
            v = tl.load(src + c[None, :] * s_c + i[None, :] * s_y + j[None, :],
                        mask=(gw < G)[:, None] & (k < K)[None, :], other=0.0)
            tl.store(dst + k[None, :], v.to(out_ptr.dtype.element_ty), mask=(gw < G)[:, None] & (k < KP)[None, :])

    # pixel dtypes `patch_unfold_at` reads
    _TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
                  torch.float64: tl.float64}

    def _unfold(x: torch.Tensor, shape: tuple[int, ...], strides: tuple[int, ...], pix, patch: int, width: int,
                dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        BT, _, S, _ = shape
        G, K = S // patch, 3 * patch * patch
        out = torch.empty(BT * G * G, width, dtype=dtype, device=device)
        torch.library.wrap_triton(_unfold_kernel)[(BT * G,)](
            x, out, strides[0], strides[1], strides[2], G, K=K, KP=width, P=patch,
            BLOCK_G=triton.next_power_of_2(G), BLOCK_K=UNFOLD_BLOCK_K, PIX=pix, num_warps=UNFOLD_NUM_WARPS)
        return out

    @torch.library.triton_op("videopanda::patch_unfold", mutates_args=())
    def patch_unfold(frames: torch.Tensor, patch: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """[BT, >=3, S, S] frames (any strides with unit pixel stride) -> [BT * G * G, width] patches of the first
        three channels, G = S // patch, each row (channel, row, column) flattened as the patch embedding's weight,
        zero-filled up to `width` (>= 3 * patch**2: aligned rows for the matmul), cast to `dtype`. One pass: what
        inductor made of the permute and pad read the pixels at about half the memory's speed."""
        if frames.stride(-1) != 1:
            frames = frames.contiguous()
        return _unfold(frames, frames.shape, frames.stride(), None, patch, width, dtype, frames.device)

    @torch.library.triton_op("videopanda::patch_unfold_at", mutates_args=())
    def patch_unfold_at(address: torch.Tensor, shape: list[int], src_dtype: torch.dtype, patch: int, width: int,
                        dtype: torch.dtype) -> torch.Tensor:
        """`patch_unfold` of contiguous frames of `shape` and `src_dtype` that lie at the device address held in
        `address` (one int64 on the same device), read when the kernel runs. A CUDA graph that starts with it reads
        whatever pixels the address names at each replay, so `GraphedEncoder` sets the address instead of copying
        the caller's pixels into the graph (103 MB at 8 videos of the 7B STAB). The caller keeps the frames alive
        and unchanged until the kernel has run."""
        if src_dtype not in _TL_DTYPES:
            raise ValueError(f"patch_unfold_at reads float16, bfloat16, float32 or float64 pixels, not {src_dtype}")
        strides = [1] * len(shape)
        for d in range(len(shape) - 2, -1, -1):
            strides[d] = strides[d + 1] * shape[d + 1]
        return _unfold(address, tuple(shape), tuple(strides), _TL_DTYPES[src_dtype], patch, width, dtype,
                       address.device)

    @triton.jit
    def _lsd_attend_kernel(q_ptr, kv_ptr, out_ptr, NW, HW, Wn, s_n, s_i, s_a, s_j, s_b, C, HD, scale,
                           S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN: tl.constexpr,
                           ACC: tl.constexpr):
        """One head of BLOCK_N windows: scores scale * q . k_p over the S x S positions p, softmax, sum_p a_p v_p. The
        softmax is the online (running max) form, so each k_p and v_p tile is loaded once. q, out: [NW, C];
        kv row of position (a, b) of window (n, i, j) at n * s_n + i * s_i + a * s_a + j * s_j + b * s_b, keys in
        its first C channels and values in the next C. EVEN: the blocks tile the windows and the head exactly, so no
        load needs a mask."""
        win = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        wmask = win < NW
        col = tl.program_id(1) * HD + tl.arange(0, BLOCK_D)  # this head's channels
        m = wmask[:, None] & (tl.arange(0, BLOCK_D) < HD)[None, :]
        if EVEN:
            q = tl.load(q_ptr + win.to(tl.int64)[:, None] * C + col[None, :]).to(ACC)
        else:
            q = tl.load(q_ptr + win.to(tl.int64)[:, None] * C + col[None, :], mask=m, other=0.0).to(ACC)
        base = (win // HW).to(tl.int64) * s_n + ((win % HW) // Wn) * s_i + (win % Wn) * s_j
        run_max = tl.full((BLOCK_N,), float("-inf"), ACC)
        total = tl.zeros((BLOCK_N,), ACC)
        acc = tl.zeros((BLOCK_N, BLOCK_D), ACC)
        for a in tl.static_range(S):
            for b in tl.static_range(S):
                row = (base + a * s_a + b * s_b)[:, None]
                if EVEN:
                    k = tl.load(kv_ptr + row + col[None, :]).to(ACC)
                    v = tl.load(kv_ptr + row + C + col[None, :]).to(ACC)
                else:
                    k = tl.load(kv_ptr + row + col[None, :], mask=m, other=0.0).to(ACC)
                    v = tl.load(kv_ptr + row + C + col[None, :], mask=m, other=0.0).to(ACC)
                score = tl.sum(q * k, 1) * scale
                new_max = tl.maximum(run_max, score)
                keep = tl.exp(run_max - new_max)
                e = tl.exp(score - new_max)
                acc = acc * keep[:, None] + e[:, None] * v
                total = total * keep + e
                run_max = new_max
        out = acc / total[:, None]
        if EVEN:
            tl.store(out_ptr + win.to(tl.int64)[:, None] * C + col[None, :], out.to(out_ptr.dtype.element_ty))
        else:
            tl.store(out_ptr + win.to(tl.int64)[:, None] * C + col[None, :], out.to(out_ptr.dtype.element_ty),
                     mask=m)

    @torch.library.triton_op("videopanda::lsd_attend", mutates_args=())
    def lsd_attend(q: torch.Tensor, kv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
        """LSD's attention inside each window (`STAB._fast_lsd`, "triton"): q [n, h, w, C]; kv
        [n, h, s, w, s, 2C] (keys, then values; any strides with a unit channel stride). Returns [n, h, w, C]: per
        head, the softmax over the s*s window positions of scale * q . k, applied to v. Scores and softmax in float32
        (float64 for float64 input)."""
        n, h, s, w, _, C2 = kv.shape
        C = C2 // 2
        if kv.stride(-1) != 1:
            kv = kv.contiguous()
        q = q.contiguous()
        out = torch.empty_like(q)
        NW, HD = n * h * w, C // num_heads
        s_n, s_i, s_a, s_j, s_b = kv.stride()[:5]
        grid = (triton.cdiv(NW, LSD_BLOCK_N), num_heads)
        torch.library.wrap_triton(_lsd_attend_kernel)[grid](
            q, kv, out, NW, h * w, w, s_n, s_i, s_a, s_j, s_b, C, HD, scale, S=s, BLOCK_N=LSD_BLOCK_N,
            BLOCK_D=triton.next_power_of_2(HD), EVEN=NW % LSD_BLOCK_N == 0 and HD == triton.next_power_of_2(HD),
            num_warps=LSD_NUM_WARPS, ACC=tl.float64 if q.dtype == torch.float64 else tl.float32)
        return out

    @triton.jit
    def _ln_scores_kernel(x_ptr, u_ptr, s1_ptr, s0_ptr, scores_ptr, mu_ptr, rstd_ptr, R, eps, C: tl.constexpr,
                          H: tl.constexpr, HP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                          PREC: tl.constexpr, ACC: tl.constexpr):
        """For BLOCK_R rows of x [R, C]: mean, 1/std and the scores rstd * (x . u[:, h] - mean * s1[h]) + s0[h] of
        each head h, with s1 = the column sums of u. x . u is a tensor-core dot of the rows as they are (exact
        products, float32 sums), so the mean is taken out after it without a rounded intermediate; the statistics
        combine each block's mean and squared deviations (Chan's formula), so a large mean does not cancel."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        heads = tl.arange(0, HP)
        rmask, hmask = rows < R, heads < H
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * C
        acc = tl.zeros((BLOCK_R, HP), ACC)
        mean = tl.zeros((BLOCK_R,), ACC)
        m2 = tl.zeros((BLOCK_R,), ACC)
        for k0 in tl.static_range(0, C, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            cmask = cols < C
            x = tl.load(x_rows + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
            u = tl.load(u_ptr + cols[:, None] * H + heads[None, :], mask=cmask[:, None] & hmask[None, :], other=0.0)
            acc = tl.dot(x, u, acc, input_precision=PREC, out_dtype=ACC)
            count = tl.sum(cmask.to(ACC), 0)  # channels in this block
            xf = x.to(ACC)
            block_mean = tl.sum(xf, 1) / count
            dev = tl.where(cmask[None, :], xf - block_mean[:, None], 0.0)
            delta = block_mean - mean
            mean += delta * (count / (count + k0))
            m2 += tl.sum(dev * dev, 1) + delta * delta * (count * k0 / (count + k0))
        rstd = 1.0 / tl.sqrt(m2 / C + eps)
        s1 = tl.load(s1_ptr + heads, mask=hmask, other=0.0).to(ACC)
        s0 = tl.load(s0_ptr + heads, mask=hmask, other=0.0).to(ACC)
        scores = (acc - mean[:, None] * s1[None, :]) * rstd[:, None] + s0[None, :]
        tl.store(mu_ptr + rows, mean, mask=rmask)
        tl.store(rstd_ptr + rows, rstd, mask=rmask)
        tl.store(scores_ptr + rows.to(tl.int64)[:, None] * H + heads[None, :], scores,
                 mask=rmask[:, None] & hmask[None, :])

    @triton.jit
    def _ln_pool_kernel(x_ptr, w_ptr, mu_ptr, out_ptr, L, SPLITS, PER_SPLIT: tl.constexpr, C: tl.constexpr,
                        H: tl.constexpr, HP: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
                        PREC: tl.constexpr, ACC: tl.constexpr):
        """out[n, split, h, c] = sum_l w[n, l, h] * (x[n, l, c] - mu[n, l]) over this split's rows l of set n; a
        program owns one set, one block of channels and one split of the rows. The weights are rounded to x's dtype
        for a tensor-core dot with the rows as they are; sum_l w mu uses the same rounded weights, so taking it out
        afterwards is exact up to float32 sums."""
        n, split = tl.program_id(0), tl.program_id(2)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        heads = tl.arange(0, HP)
        cmask, hmask = cols < C, heads < H
        start = split * PER_SPLIT
        stop = tl.minimum(start + PER_SPLIT, L)
        acc = tl.zeros((HP, BLOCK_C), ACC)
        wmu = tl.zeros((HP,), ACC)
        for l0 in range(0, PER_SPLIT, BLOCK_L):
            ls = start + l0 + tl.arange(0, BLOCK_L)
            lmask = ls < stop
            row = n.to(tl.int64) * L + ls
            x = tl.load(x_ptr + row[:, None] * C + cols[None, :], mask=lmask[:, None] & cmask[None, :], other=0.0)
            w = tl.load(w_ptr + row[None, :] * H + heads[:, None], mask=hmask[:, None] & lmask[None, :],
                        other=0.0).to(x.dtype)  # [HP, BLOCK_L]
            acc = tl.dot(w, x, acc, input_precision=PREC, out_dtype=ACC)
            wmu += tl.sum(w.to(ACC) * tl.load(mu_ptr + row, mask=lmask, other=0.0).to(ACC)[None, :], 1)
        dst = out_ptr + ((n * SPLITS + split) * H + heads).to(tl.int64)[:, None] * C + cols[None, :]
        tl.store(dst, acc - wmu[:, None], mask=hmask[:, None] & cmask[None, :])

    def _dot_args(dtype: torch.dtype) -> dict:
        """Accumulator and dot precision for inputs of this dtype: float32 sums (float64 for float64), and exact
        float32 products for float32 inputs (no TF32)."""
        return dict(ACC=tl.float64 if dtype == torch.float64 else tl.float32,
                    PREC="ieee" if dtype in (torch.float32, torch.float64) else "tf32")

    @torch.library.triton_op("videopanda::ln_scores", mutates_args=())
    def ln_scores(x: torch.Tensor, u: torch.Tensor, s1: torch.Tensor, s0: torch.Tensor,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [R, C], u [C, H] (x's dtype), s1, s0 [H] -> (scores [R, H], mean [R], 1/std [R]), float32 (float64 for
        float64 x): the scores `layer_norm(x) @ u_ln` for u = weight[:, None] * u_ln, s1 = u.sum(0) and s0 = bias @
        u_ln (the layer norm's affine folded into the query)."""
        R, C = x.shape
        H = u.shape[1]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        x, u = x.contiguous(), u.contiguous()
        scores = torch.empty(R, H, dtype=acc, device=x.device)
        mean, rstd = torch.empty(R, dtype=acc, device=x.device), torch.empty(R, dtype=acc, device=x.device)
        torch.library.wrap_triton(_ln_scores_kernel)[(triton.cdiv(R, POOL_SCORE_ROWS),)](
            x, u, s1.contiguous(), s0.contiguous(), scores, mean, rstd, R, eps, C=C, H=H,
            HP=max(16, triton.next_power_of_2(H)), BLOCK_R=POOL_SCORE_ROWS, BLOCK_K=POOL_BLOCK_K,
            num_warps=POOL_SCORE_WARPS,
            **_dot_args(x.dtype))
        return scores, mean, rstd

    @torch.library.triton_op("videopanda::ln_pool_rows", mutates_args=())
    def ln_pool_rows(x: torch.Tensor, w: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """x [n, L, C], w [n, L, H], mean [n, L] -> [n, H, C]: sum_l w[n, l, h] * (x[n, l] - mean[n, l]), float32
        (float64 for float64 x). The rows are split over programs when n is too small to fill the GPU."""
        n, L, C = x.shape
        H = w.shape[2]
        x, w, mean = x.contiguous(), w.contiguous(), mean.contiguous()
        blocks_c = triton.cdiv(C, POOL_BLOCK_C)
        splits = max(1, min(triton.cdiv(L, 4 * POOL_BLOCK_L), triton.cdiv(POOL_PROGRAMS, n * blocks_c)))
        per_split = triton.cdiv(L, splits)
        out = torch.empty(n, splits, H, C, dtype=w.dtype, device=x.device)
        torch.library.wrap_triton(_ln_pool_kernel)[(n, blocks_c, splits)](
            x, w, mean, out, L, splits, PER_SPLIT=per_split, C=C, H=H, HP=max(16, triton.next_power_of_2(H)),
            BLOCK_L=POOL_BLOCK_L, BLOCK_C=POOL_BLOCK_C, num_warps=POOL_WARPS, **_dot_args(x.dtype))
        return out.sum(1)

    def _dpe3d(xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        xp = xp.contiguous()
        N, T, Hp, Wp, C = xp.shape
        H, W = Hp - 2, Wp - 2
        w = weight.reshape(C, 27)
        out = xp.new_empty(N, T, H, W, C)
        # without a residual, `out` stands in for its two pointers (never read or written then)
        total = out if residual is None else torch.empty_like(out)
        residual = out if residual is None else residual.contiguous()
        block_w = triton.next_power_of_2(W)
        grid = (N * T * triton.cdiv(H, BLOCK_H), triton.cdiv(C, BLOCK_C))
        torch.library.wrap_triton(_dpe_kernel)[grid](
            xp, w, bias.contiguous(), out, residual, total, T, w.stride(0), w.stride(1), H=H, W=W, C=C,
            BLOCK_H=BLOCK_H, BLOCK_W=block_w, BLOCK_C=BLOCK_C,
            EVEN=H % BLOCK_H == 0 and W == block_w and C % BLOCK_C == 0, RESIDUAL=total is not out,
            num_warps=NUM_WARPS, ACC=tl.float64 if xp.dtype == torch.float64 else tl.float32)
        return out, total

    @torch.library.triton_op("videopanda::dpe3d", mutates_args=())
    def dpe3d(xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Depthwise 3x3x3 conv, zero padding 1, channels-last, on a spatially pre-padded input: xp [N, T, H+2, W+2,
        C] (`F.pad(x, (0, 0, 1, 1, 1, 1))`; under torch.compile the padding fuses into the kernel that writes x) ->
        [N, T, H, W, C]. weight: [C, 1, 3, 3, 3], or any [C, 27] view (a tap-major buffer transposed, say); bias:
        [C]. Accumulates in float32 (float64 for float64 input), returns xp's dtype."""
        return _dpe3d(xp, weight, bias, None)[0]

    @torch.library.triton_op("videopanda::dpe3d_residual", mutates_args=())
    def dpe3d_residual(xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`dpe3d` that also returns its output plus `residual` (shaped as the output), summed in the accumulator's
        precision: the STAB's dense connection written by the kernel, so that later passes read one tensor, not
        two."""
        return _dpe3d(xp, weight, bias, residual)

else:

    _NO_TRITON = "videopanda's Triton kernels need the `triton` package (installed with CUDA builds of torch)"

    def lsd_attend(q: torch.Tensor, kv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
        raise RuntimeError(_NO_TRITON)

    def dpe3d(xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(_NO_TRITON)

    def patch_unfold(frames: torch.Tensor, patch: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        raise RuntimeError(_NO_TRITON)

    def patch_unfold_at(address: torch.Tensor, shape: list[int], src_dtype: torch.dtype, patch: int, width: int,
                        dtype: torch.dtype) -> torch.Tensor:
        raise RuntimeError(_NO_TRITON)

    def dpe3d_residual(xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError(_NO_TRITON)

    def ln_scores(x: torch.Tensor, u: torch.Tensor, s1: torch.Tensor, s0: torch.Tensor,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise RuntimeError(_NO_TRITON)

    def ln_pool_rows(x: torch.Tensor, w: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(_NO_TRITON)


def ln_pool(x: torch.Tensor, u: torch.Tensor, s1: torch.Tensor, s0: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor, eps: float) -> torch.Tensor:
    """softmax_l(layer_norm(x) @ u_ln)^T @ layer_norm(x) per set, without writing layer_norm(x): x [n, L, C] ->
    [n, H, C] in float32 (float64 for float64 x). u = weight[:, None] * u_ln in x's dtype, s1 = u.sum(0) and
    s0 = bias @ u_ln (the query folded with the norm's affine). GSTRA's and FSRA's constant-query attention
    (`STAB._fast_ln_pool`): since the softmax weights a_l sum to one,
    sum_l a_l layer_norm(x_l) = weight * sum_l a_l rstd_l (x_l - mean_l) + bias."""
    n, L, C = x.shape
    scores, mean, rstd = ln_scores(x.reshape(n * L, C), u, s1, s0, eps)
    w = scores.view(n, L, -1).softmax(1) * rstd.view(n, L, 1)
    return ln_pool_rows(x, w, mean.view(n, L)) * weight.to(w.dtype) + bias.to(w.dtype)

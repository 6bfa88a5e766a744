"""One GPU call: can a 7B decode step read its weights and KV cache faster than cuBLAS and SDPA do?

    python bench/decode_probe.py --out OUT/decode_probe.json

A batch-1 decode step of the 7B model is bound by memory: 13.5 GB of weights read by matrix-vector products (cuBLAS,
about 2.6 TB/s on an H100) and the static KV cache read by SDPA with a mask (cuDNN, 0.55 ms a step where reading the
cache takes 0.36 ms). This probe times, each as a CUDA graph of all 32 layers with distinct weights and caches (so
nothing stays in the 50 MB L2):

- gemv: the layer's four products (q|k|v 12288x4096, o 4096x4096, gate|up 22016x4096, down 4096x11008) with
  `F.linear` against Triton matrix-vector kernels by block size;
- attention: one query over a 2304-slot cache with a boolean mask (what transformers gives the decode step), SDPA
  against a split-KV Triton kernel (flash-decoding: splits of the keys in parallel, then a combine).

Reports GB/s and the largest difference from the cuBLAS / SDPA result. The package's matrix-vector kernel
(fast/decode_kernels.py, whose block sizes come from this probe) is timed beside them. The split-KV attention
kernel is not in the package: alone it beats SDPA, but inside the compiled decode step cuDNN's kernel does as well
(docs/speed.md, "Tried and not kept"). Result on an H100: bench/results/h100_decode_gemv.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from videopanda.fast import decode_kernels

RESULT: dict = {"rows": []}


@triton.jit
def gemv_kernel(x_ptr, w_ptr, y_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                STAGES: tl.constexpr):
    """y[n] = sum_k w[n, k] x[k] for BLOCK_N rows; K a multiple of BLOCK_K, N of BLOCK_N."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    w_row = w_ptr + rows.to(tl.int64)[:, None] * K
    for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        w = tl.load(w_row + (k0 + cols)[None, :])
        x = tl.load(x_ptr + k0 + cols)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    tl.store(y_ptr + rows, tl.sum(acc, 1).to(y_ptr.dtype.element_ty))


def gemv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, cfg: tuple[int, int, int, int]) -> torch.Tensor:
    bn, bk, warps, stages = cfg
    N, K = w.shape
    gemv_kernel[(N // bn,)](x, w, out, N, K=K, BLOCK_N=bn, BLOCK_K=bk, STAGES=stages, num_warps=warps)
    return out


@triton.jit
def split_attn_kernel(q_ptr, k_ptr, v_ptr, m_ptr, part_ptr, H, HKV, S, s_kb, s_kh, s_mb, scale,
                      D: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys [split * SPLIT, (split + 1) * SPLIT) of one (batch, head): running max, sum and weighted values."""
    bh, split = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    hk = h // (H // HKV)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + bh * D + d).to(tl.float32) * scale
    base = b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh
    m_i = tl.full([1], float("-inf"), tl.float32)
    l_i = tl.zeros([1], tl.float32)
    acc = tl.zeros([D], tl.float32)
    for n0 in tl.range(0, SPLIT, BLOCK_N):
        n = split * SPLIT + n0 + tl.arange(0, BLOCK_N)
        ok = (n < S) & (tl.load(m_ptr + b * s_mb + n, mask=n < S, other=0) != 0)
        k = tl.load(k_ptr + base + n[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
        s = tl.where(ok, tl.sum(k.to(tl.float32) * q[None, :], 1), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe)
        v = tl.load(v_ptr + base + n[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
        l_i = l_i * alpha + tl.sum(p, 0)
        m_i = m_new
    out = part_ptr + (bh * tl.num_programs(1) + split) * (D + 2)
    tl.store(out + d, acc)
    tl.store(out + D + tl.arange(0, 1), m_i)
    tl.store(out + D + 1 + tl.arange(0, 1), l_i)


@triton.jit
def combine_kernel(part_ptr, o_ptr, H, D: tl.constexpr, SPLITS: tl.constexpr):
    bh = tl.program_id(0)
    s = tl.arange(0, SPLITS)
    d = tl.arange(0, D)
    base = part_ptr + (bh * SPLITS + s) * (D + 2)
    m = tl.load(base + D)
    l_ = tl.load(base + D + 1)
    acc = tl.load(base[:, None] + d[None, :])
    mx = tl.max(m, 0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp(m - mx))
    out = tl.sum(w[:, None] * acc, 0) / tl.sum(w * l_, 0)
    tl.store(o_ptr + bh * D + d, out.to(o_ptr.dtype.element_ty))  # [B, 1, H, D] == [B*H, D] for one query


def split_attention(q, k, v, mask, scale, cfg, part, out):
    splits, block_n, warps = cfg
    B, H, _, D = q.shape
    S = k.shape[2]
    split = triton.cdiv(S, splits)
    split = triton.cdiv(split, block_n) * block_n
    split_attn_kernel[(B * H, splits)](q, k, v, mask, part, H, k.shape[1], S, k.stride(0), k.stride(1),
                                       mask.stride(0), scale, D=D, SPLIT=split, BLOCK_N=block_n, num_warps=warps)
    combine_kernel[(B * H,)](part, out, H, D=D, SPLITS=splits, num_warps=4)
    return out


def graph_ms(fn, repeats: int = 20) -> float:
    """Median time of one replay of `fn` captured as a CUDA graph."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    times = []
    for _ in range(repeats + 3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times = sorted(times[3:])
    return times[len(times) // 2]


def add(row: dict, out: str) -> None:
    RESULT["rows"].append(row)
    print(row, flush=True)
    Path(out).write_text(json.dumps(RESULT, indent=1))


GEMV_CONFIGS = [(bn, bk, w, st) for bn, bk in ((1, 1024), (2, 512), (2, 1024), (4, 256), (4, 512), (8, 256), (8, 128),
                                                (16, 128))
                for w, st in ((4, 3), (4, 2), (8, 3), (2, 4))]
ATTN_CONFIGS = [(s, bn, w) for s in (8, 16, 32) for bn in (32, 64, 128) for w in (4, 8)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--cache", type=int, default=2304)
    p.add_argument("--valid", type=int, default=2250)
    p.add_argument("--sections", default="gemv,attention", help="gemv, attention")
    args = p.parse_args()
    RESULT.update(command=" ".join(sys.argv), device=torch.cuda.get_device_name(), torch=torch.__version__,
                  triton=triton.__version__)
    dev, dt = torch.device("cuda"), torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    L = args.layers
    t0 = time.time()

    if "gemv" in args.sections:
        shapes = [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)]
        weights = [[torch.randn(n, k, device=dev, dtype=dt, generator=g) / 64 for n, k in shapes] for _ in range(L)]
        xs = [torch.randn(1, k, device=dev, dtype=dt, generator=g) for _, k in shapes]
        outs = [torch.empty(1, n, device=dev, dtype=dt) for n, _ in shapes]
        nbytes = sum(n * k * 2 for n, k in shapes) * L

        def cublas():
            for layer in weights:
                for x, w, o in zip(xs, layer, outs):
                    torch.matmul(x, w.t(), out=o)

        ms = graph_ms(cublas)
        ref = [F.linear(x, w).float() for x, w in zip(xs, weights[0])]
        add({"what": "gemv", "impl": "cublas", "ms": round(ms, 4), "GB/s": round(nbytes / ms / 1e6)}, args.out)
        per_shape = {}
        for i, (n, k) in enumerate(shapes):  # each shape alone (all layers), to pick a config per shape
            def one(i=i):
                for layer in weights:
                    torch.matmul(xs[i], layer[i].t(), out=outs[i])
            per_shape[(n, k)] = {"cublas": graph_ms(one)}
        best = {}
        for cfg in GEMV_CONFIGS:
            for i, (n, k) in enumerate(shapes):
                if n % cfg[0] or k % cfg[1]:
                    continue

                def tri(i=i, cfg=cfg):
                    for layer in weights:
                        gemv(xs[i], layer[i], outs[i], cfg)
                try:
                    ms = graph_ms(tri)
                    diff = (gemv(xs[i], weights[0][i], outs[i], cfg).float() - ref[i]).abs().max().item()
                except Exception as err:  # a config that does not compile
                    add({"what": "gemv", "shape": [n, k], "cfg": cfg, "error": str(err)[:200]}, args.out)
                    continue
                per_shape[(n, k)][cfg] = ms
                if ms < best.get((n, k), (1e9,))[0]:
                    best[(n, k)] = (ms, cfg, diff)
        for (n, k), times in per_shape.items():
            b_ms, cfg, diff = best[(n, k)]
            nb = n * k * 2 * L
            add({"what": "gemv shape", "shape": [n, k], "cublas_ms": round(times["cublas"], 4),
                 "cublas_GB/s": round(nb / times["cublas"] / 1e6), "triton_ms": round(b_ms, 4),
                 "triton_GB/s": round(nb / b_ms / 1e6), "best_cfg": cfg, "max_diff": diff,
                 "all": {str(c): round(t, 4) for c, t in times.items() if c != "cublas"}}, args.out)

        def triton_all():
            for layer in weights:
                for x, w, o, s in zip(xs, layer, outs, shapes):
                    gemv(x, w, o, best[s][1])

        ms = graph_ms(triton_all)
        add({"what": "gemv", "impl": "triton best per shape", "ms": round(ms, 4), "GB/s": round(nbytes / ms / 1e6)},
            args.out)

        def package():
            for layer in weights:
                for x, w in zip(xs, layer):
                    decode_kernels.gemv(x[0], w, None)

        ms = graph_ms(package)
        add({"what": "gemv", "impl": "package decode_kernels.gemv", "ms": round(ms, 4),
             "GB/s": round(nbytes / ms / 1e6)}, args.out)
        del weights
        torch.cuda.empty_cache()

    if "attention" in args.sections:
        H, D, S = 32, 128, args.cache
        ks = [torch.randn(1, H, S, D, device=dev, dtype=dt, generator=g) for _ in range(L)]
        vs = [torch.randn(1, H, S, D, device=dev, dtype=dt, generator=g) for _ in range(L)]
        q = torch.randn(1, H, 1, D, device=dev, dtype=dt, generator=g)
        mask = (torch.arange(S, device=dev) < args.valid).view(1, 1, 1, S)
        scale = 1 / math.sqrt(D)
        nbytes = 2 * H * S * D * 2 * L
        ref = F.scaled_dot_product_attention(q, ks[0], vs[0], attn_mask=mask, scale=scale).transpose(1, 2).float()
        outs = []

        def sdpa():
            outs.clear()
            for k, v in zip(ks, vs):
                outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale))

        ms = graph_ms(sdpa)
        add({"what": "attention", "impl": "sdpa bool mask", "ms": round(ms, 4), "GB/s": round(nbytes / ms / 1e6),
             "read_fraction": args.valid / S}, args.out)
        out = torch.empty(1, 1, H, D, device=dev, dtype=dt)
        best = None
        for cfg in ATTN_CONFIGS:
            part = torch.empty(H, cfg[0], D + 2, device=dev, dtype=torch.float32)
            mask2 = mask.view(1, S)
            try:
                diff = (split_attention(q, ks[0], vs[0], mask2, scale, cfg, part, out).float() - ref).abs().max()
                ms = graph_ms(lambda: [split_attention(q, k, v, mask2, scale, cfg, part, out)
                                       for k, v in zip(ks, vs)])
            except Exception as err:
                add({"what": "attention", "cfg": cfg, "error": str(err)[:200]}, args.out)
                continue
            add({"what": "attention", "impl": "triton split-kv", "cfg": cfg, "ms": round(ms, 4),
                 "GB/s": round(nbytes / ms / 1e6), "max_diff": diff.item()}, args.out)
            if best is None or ms < best[0]:
                best = (ms, cfg)
        RESULT["attention_best"] = best
    RESULT["seconds"] = round(time.time() - t0, 1)
    Path(args.out).write_text(json.dumps(RESULT, indent=1))


if __name__ == "__main__":
    main()

"""One GPU call that times the STAB + projector (and the 7B decode and eval steps) kernel by kernel, in candidate forms.

    python bench/speed_probe.py --out OUT/probe.json [--sections stab,decode,eval]

- stab: the 7B-config STAB + projector (random weights, 8 frames at 448 px, bf16) in the forms of `--stab-variants`
  (see VARIANTS): fused eager (`--eager`), compiled (inductor default, max-autotune), compiled and replayed as a
  hand-captured CUDA graph, and the package's `fast.graphs.GraphedEncoder` (`graphed-encoder`); some variants
  swap in a form the package does not use (e.g. `folded-graph`: LSD's key/value projections folded into the query),
  for comparison. `--table`: the kernel table of each compiled form at 8 videos. `--address`: GraphedEncoder's whole
  call against its replay, and the kernel table of its 8-video replay (the measured side of bench/floor_probe.py).
- dpe (run by stab, first unless `--skip-dpe`): the dpe alone in every form and the Triton kernel's block sizes (the
  best are then used). `--dpe-sweep`, `--lsd-sweep` and `--pool-sweep` time the block sizes of the dpe, LSD window
  attention (kernels.lsd_attend) and GSTRA/FSRA pooling (kernels.ln_pool) kernels; each sweep's best is used by the
  compiled forms that follow.
- decode: the 7B-shaped model's 64-token answer with the compiled lean loop, with and without fused q/k/v and
  gate/up projections and compiled pointwise ops (`fast/llm.py`), and its time to first token.
- eval: one batch of 32 7B answers (8 new tokens): the visual encode, the prefill and whole `generate` calls per
  decoding mode, with and without compiled pointwise ops, and the prefill's kernel table.
Writes JSON after every section, so a cut-off run still returns what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from videopanda import bench as B
from videopanda.fast import FastOptions, FusedSTAB, kernels
from videopanda.fast.graphs import _own_cublas_workspace

RESULT: dict = {}


def save(path: str) -> None:
    Path(path).write_text(json.dumps(RESULT, indent=1))


def cuda_ms(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Median CUDA-event time of `fn` (the bench's own clock)."""
    return B.Clock(torch.device("cuda"), warmup, repeats).time(fn)["median_ms"]


def kernel_table(fn, rows: int = 30) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in events)
    return [{"kernel": e.key[:140], "ms": round(e.self_device_time_total / 1000, 4), "calls": e.count,
             "share": round(e.self_device_time_total / total, 4)} for e in events[:rows]] + \
        [{"kernel": "TOTAL", "ms": round(total / 1000, 4)}]


def folded_lsd(self: FusedSTAB, crop: torch.Tensor) -> torch.Tensor:
    """LSD with the key projection folded into the query and the value projection applied after pooling:
    scores_p = q_h . Wk_h n_p = (Wk_h^T q_h) . n_p, and sum_p a_p Wv_h n_p = Wv_h (sum_p a_p n_p), n = LN(x)."""
    la, heads, s = self.stab.local_attention, self.num_heads, self.conv_stride
    n, h, w, C = crop.shape[0], crop.shape[1] // s, crop.shape[2] // s, crop.shape[3]
    windows = crop.reshape(n, h, s, w, s, C)
    pooled = windows.mean((2, 4))
    hd = C // heads
    ln, wkv = la.kv[0], la.kv[1].weight  # [2C, C]
    q = (la.q(pooled) * la.scale).reshape(-1, heads, hd)  # [N, heads, hd]
    u = torch.einsum("nhd,hdc->nhc", q, wkv[:C].view(heads, hd, C))  # [N, heads, C]
    x = ln(windows).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, C)  # [N, 4, C]
    scores = torch.bmm(u, x.transpose(1, 2))  # [N, heads, 4]
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    attn = scores.softmax(-1).to(x.dtype)
    m = torch.bmm(attn, x)  # [N, heads, C]
    out = torch.einsum("nhc,hdc->nhd", m, wkv[C:].view(heads, hd, C)).reshape(n, h, w, C)
    return pooled + la.proj(out)


def capture(fn, example: torch.Tensor):
    """fn captured as a CUDA graph on a static copy of `example`, warmed up on a side stream first, as GraphedEncoder
    captures (its docstring): (replay, output), replayed once."""
    static = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with _own_cublas_workspace(), torch.cuda.graph(graph):
        out = fn(static)
    graph.replay()
    torch.cuda.synchronize()
    return graph.replay, out


def loop_ms(fn, calls: int = 20, repeats: int = 5) -> float:
    """Median over `repeats` of the CUDA-event time of `calls` back-to-back calls, per call: for kernels long
    enough that queued launches keep the GPU busy, the host's launch cost drops out."""
    times = []
    for _ in range(repeats + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return round(sorted(times[1:])[repeats // 2], 4)


def address_rows(rows: list[dict]) -> None:
    """Host time per call of what GraphedEncoder does before a replay: copying 1 / 8 videos of pixels into the
    graph's input, or setting the address tensor."""
    for b in (1, 8):
        px = torch.randn(b, 8, 4, 448, 448, device="cuda", dtype=torch.bfloat16)
        static, address = px.clone(), torch.zeros(1, dtype=torch.int64, device="cuda")
        for name, fn in (("copy", lambda: static.copy_(px)), ("fill address", lambda: address.fill_(px.data_ptr()))):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                fn()
            host = (time.perf_counter() - t0) / 200
            torch.cuda.synchronize()
            rows.append({"impl": f"graph input: {name}", "batch": b, "host_us": round(host * 1e6, 1),
                         "ms": cuda_ms(fn)})
            print(rows[-1], flush=True)


def graph_overhead_rows(stab: FusedSTAB, projector, inputs: dict, rows: list[dict]) -> None:
    """Where GraphedEncoder's time goes beyond its graph: per batch, CUDA-event medians of a whole call and of its
    graph's replay alone (address set beforehand), and host microseconds per call of the call, the replay and
    the address fill, each over 200 calls queued without waiting."""
    from videopanda.fast import GraphedEncoder

    torch._dynamo.reset()
    enc = GraphedEncoder(stab, projector)
    for b in (1, 8):
        px, boxes = inputs[b], [(0, 0, 32, 32)] * (8 * b)
        enc(px, boxes)
        captured = list(enc.graphs.values())[-1]  # the one just used
        row = {"impl": "graphed-encoder overhead", "batch": b, "call_ms": cuda_ms(lambda: enc(px, boxes)),
               "replay_ms": cuda_ms(captured.graph.replay)}
        for name, fn in (("call", lambda: enc(px, boxes)), ("replay", captured.graph.replay),
                         ("fill", lambda: captured.input.fill_(px.data_ptr()))):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                fn()
            row[f"{name}_host_us"] = round((time.perf_counter() - t0) / 200 * 1e6, 1)
            torch.cuda.synchronize()
        if b == 8:
            RESULT["stab"].setdefault("tables", {})["graphed-encoder replay"] = kernel_table(captured.graph.replay)
        rows.append(row)
        print(row, flush=True)


def section_stab(args) -> None:
    dtype, device = torch.bfloat16, torch.device("cuda")
    rows: list[dict] = []
    out = {"rows": rows}
    RESULT["stab"] = out
    stab, projector = B._visual_encoder("videopanda-7b", 4096, device, dtype)
    stab = FusedSTAB(stab)
    inputs = {b: B.pixel_values(B.synthetic_videos(b, 8, 448, seed=b), "videopanda-7b").to(device, dtype)
              for b in (1, 8, 32)}
    boxes = {b: "full" for b in inputs}

    def plain(b, crop=None):
        return lambda: projector(stab(inputs[b], crop_boxes=crop).tokens)

    with torch.inference_mode():
        stab.options = FastOptions(dpe="conv", lsd="plain")  # the reference output: cuDNN's conv, keys and values
        ref = {b: plain(b)() for b in (1, 8)}
        stab.options = FastOptions()
        for b in (1, 8, 32) if args.eager else ():
            rows.append({"impl": "fused-eager", "batch": b, "ms": cuda_ms(plain(b))})
            rows.append({"impl": "fused-eager-boxes", "batch": b, "ms": cuda_ms(plain(b, boxes[b]))})
        save(args.out)
        orig_lsd = FusedSTAB._lsd
        FusedSTAB._lsd = folded_lsd
        for b in (1, 8) if args.eager else ():
            diff = (plain(b, "full")() - ref[b]).abs().max().item()
            rows.append({"impl": "folded-lsd-eager", "batch": b, "ms": cuda_ms(plain(b, "full")), "max_diff": diff})
        FusedSTAB._lsd = orig_lsd
        save(args.out)

        def compiled(mode, lsd, graphs, name):
            FusedSTAB._lsd = lsd
            torch._dynamo.reset()
            # "chunkproj<k>": the projector over k row blocks (its GELU intermediate per block ~L2-sized), the
            # blocks' outputs concatenated (inductor can let each matmul write its slice of the result)
            k = int(name.partition("chunkproj")[2].partition("-")[0] or 1)

            def project(tokens):
                if k == 1:
                    return projector(tokens)
                return torch.cat([projector(part) for part in tokens.chunk(k)])

            fn = torch.compile(lambda px: project(stab(px, crop_boxes="full").tokens), mode=mode, dynamic=False)
            for b in args.stab_batches:
                t0 = time.perf_counter()
                y = fn(inputs[b])
                torch.cuda.synchronize()
                first = time.perf_counter() - t0
                if mode == "reduce-overhead":  # the first calls record; later ones replay the CUDA graph
                    for _ in range(3):
                        y = fn(inputs[b])
                    y = y.clone()
                call = lambda b=b: fn(inputs[b])  # noqa: E731
                if graphs:
                    call, y = capture(fn, inputs[b])
                diff = (y - ref[b]).abs().max().item() if b in ref else None
                rows.append({"impl": f"compiled-{name}", "batch": b, "ms": cuda_ms(call), "first_s": round(first, 1),
                             "max_diff": diff})
                print(rows[-1], flush=True)
                if b == 8 and args.table:  # the compiled function's kernels (inside a graph they are the same)
                    out.setdefault("tables", {})[rows[-1]["impl"]] = kernel_table(lambda: fn(inputs[b]))
                save(args.out)
            FusedSTAB._lsd = orig_lsd

        if not args.skip_dpe:
            # first, so that the compiled forms below use the best block sizes
            kernels.BLOCK_H, kernels.BLOCK_C, kernels.NUM_WARPS = dpe_rows(stab, rows)
            save(args.out)
        if args.dpe_sweep:
            kernels.BLOCK_H, kernels.BLOCK_C, kernels.NUM_WARPS = dpe_sweep(stab, rows, DPE_SWEEP)
            save(args.out)
        if args.gelu_epilogue:
            gelu_rows(projector, rows)
            save(args.out)
        if args.lsd_sweep:
            kernels.LSD_BLOCK_N, kernels.LSD_NUM_WARPS = lsd_rows(stab, rows)
            save(args.out)
        if args.pool_sweep:
            pool_sweep(stab, rows)
            save(args.out)
        if args.address:
            address_rows(rows)
            graph_overhead_rows(stab, projector, inputs, rows)
            save(args.out)
        for variant in args.stab_variants.split(","):
            if variant.startswith("graphed-encoder"):  # fast.graphs.GraphedEncoder, as the package ships it
                from videopanda.fast import GraphedEncoder

                torch._dynamo.reset()
                # "-copy": the pixels copied into the graph's input (by_address=False); "-nogelu": the projector's
                # first layer without the fused GELU GEMM
                from videopanda.fast import gemm_kernels

                package_rows = gemm_kernels.GELU_MIN_ROWS
                if variant.endswith("-nogelu"):
                    gemm_kernels.GELU_MIN_ROWS = 1 << 40
                enc = GraphedEncoder(stab, projector, by_address=not variant.endswith("-copy"))
                for b in (1, 8, 32):
                    t0 = time.perf_counter()
                    y = enc(inputs[b], [(0, 0, 32, 32)] * (8 * b)).clone()
                    first = time.perf_counter() - t0
                    diff = (y - ref[b]).abs().max().item() if b in ref else None
                    rows.append({"impl": variant, "batch": b, "first_s": round(first, 1), "max_diff": diff,
                                 "ms": cuda_ms(lambda b=b: enc(inputs[b], [(0, 0, 32, 32)] * (8 * b)))})
                    print(rows[-1], flush=True)
                    save(args.out)
                del enc
                gemm_kernels.GELU_MIN_ROWS = package_rows
                continue
            variant, _, blocks = variant.partition("@")
            mode, lsd, graphs, dpe = VARIANTS[variant.removesuffix("-cdt")]
            package_dpe, package_fast_dpe = kernels.dpe3d, FusedSTAB._dpe
            package_blocks = kernels.BLOCK_H, kernels.BLOCK_C, kernels.NUM_WARPS
            if dpe in ("nodense", "taps"):
                FusedSTAB._dpe, dpe = DPE_FORMS[dpe], "triton"
            if blocks:  # "@HxCxWARPS": the dpe kernel's rows, channels and warps per program
                kernels.BLOCK_H, kernels.BLOCK_C, kernels.NUM_WARPS = (int(v) for v in blocks.split("x"))
            stab.options = FastOptions(dpe=dpe, unfold="torch" if variant.startswith("torchunfold") else "auto",
                                       pool="plain" if variant.startswith("plainpool") else "auto",
                                       lsd="triton" if lsd == "triton" else "plain")
            # "-cdt": inductor tunes each Triton kernel's block sizes by coordinate descent while compiling
            # "realizemean": small reductions (LSD's 2x2 window mean) kept as reductions, so that the mean is
            # written once instead of recomputed from the crop by each pass that reads it
            tuning = torch._inductor.config.patch(coordinate_descent_tuning=variant.endswith("-cdt"),
                                                  **{"triton.enable_persistent_tma_matmul": mode is not None},
                                                  **({"unroll_reductions_threshold": 1}
                                                     if variant.startswith("realizemean") else {}))
            try:
                with tuning:
                    compiled(mode, folded_lsd if lsd == "folded" else orig_lsd, graphs,
                             variant + (f"@{blocks}" if blocks else ""))
            except Exception as err:  # keep the other variants
                rows.append({"impl": variant, "error": f"{type(err).__name__}: {err}"[:400]})
                save(args.out)
            kernels.dpe3d, FusedSTAB._dpe = package_dpe, package_fast_dpe
            kernels.BLOCK_H, kernels.BLOCK_C, kernels.NUM_WARPS = package_blocks
        stab.options = FastOptions()
        save(args.out)


def lsd_rows(stab: FusedSTAB, rows: list[dict]) -> tuple[int, int]:
    """LSD's window attention (kernels.lsd_attend) alone at the batch-8 shape: block sizes, the difference from the
    same math in float32 torch ops, and inductor's form (the score reduction and weighted sum of
    `FastOptions.lsd="plain"`, compiled). Returns the best (windows per program, warps)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    C, heads = stab.dim, stab.num_heads
    kv = torch.randn(64, 16, 2, 16, 2, 2 * C, device="cuda", dtype=torch.bfloat16, generator=g)
    q = torch.randn(64, 16, 16, C, device="cuda", dtype=torch.bfloat16, generator=g) / 8
    k, v = kv.float().view(64, 16, 2, 16, 2, 2, heads, -1).unbind(5)
    scores = (q.float().view(64, 16, 1, 16, 1, heads, -1) * k).sum(-1)  # [n, h, s, w, s, heads]
    attn = (scores - scores.amax((2, 4), keepdim=True)).exp()
    attn = attn / attn.sum((2, 4), keepdim=True)
    want = (attn[..., None] * v).sum((2, 4)).flatten(3)

    def inductor(q, kv):
        k, v = kv.view(64, 16, 2, 16, 2, 2, heads, -1).unbind(5)
        scores = (q.view(64, 16, 1, 16, 1, heads, -1) * k).sum(-1).float()
        e = (scores - scores.amax((2, 4), keepdim=True)).exp()
        return ((e / e.sum((2, 4), keepdim=True)).to(v.dtype)[..., None] * v).sum((2, 4)).flatten(3)

    fn = torch.compile(inductor, dynamic=False)
    rows.append({"impl": "lsd inductor", "max_diff": (fn(q, kv).float() - want).abs().max().item(),
                 "ms": cuda_ms(lambda: fn(q, kv), repeats=10)})
    print(rows[-1], flush=True)
    return kernel_sweep(rows, "lsd_attend", {"block_n": "LSD_BLOCK_N", "warps": "LSD_NUM_WARPS"}, LSD_SWEEP,
                        lambda: kernels.lsd_attend(q, kv, heads, 1.0), want)


LSD_SWEEP = [(32, 4), (16, 4), (64, 4), (64, 8), (16, 2), (32, 2), (128, 8), (8, 1), (8, 2)]


def dpe_rows(stab: FusedSTAB, rows: list[dict]) -> tuple[int, ...]:
    """The dpe alone at the batch-8 shape, channels-last [n, t, G, G, C]: every form and the Triton kernel's block
    sizes (the best is returned); max_diff against cuDNN's conv in float32."""
    x, want = dpe_case(stab)
    for label, impl, comp in (("dpe shift compiled", "shift", True), ("dpe conv eager", "conv", False),
                              ("dpe triton eager", "triton", False), ("dpe triton compiled", "triton", True)):
        stab.options = FastOptions(dpe=impl)
        fn = torch.compile(stab._dpe, dynamic=False) if comp else stab._dpe
        diff = (fn(x, x)[0].float() - want).abs().max().item()
        rows.append({"impl": label, "batch": 8, "ms": cuda_ms(lambda fn=fn: fn(x, x)), "max_diff": diff})
        print(rows[-1], flush=True)
    stab.options = FastOptions()
    return dpe_sweep(stab, rows, [(1, c, w) for c in (32, 64, 128) for w in (2, 4)])


def dpe_case(stab: FusedSTAB) -> tuple[torch.Tensor, torch.Tensor]:
    """The dpe's batch-8 input, channels-last [n, t, G, G, C], and cuDNN's conv of it in float32."""
    x = torch.randn(16, 4, 32, 32, stab.dim, device="cuda", dtype=torch.bfloat16)
    want = torch.nn.functional.conv3d(x.float().permute(0, 4, 1, 2, 3), stab._fold_dpe_w.float(),
                                      stab.stab.dpe.bias.float(), padding=1, groups=stab.dim).permute(0, 2, 3, 4, 1)
    return x, want


def dpe_sweep(stab: FusedSTAB, rows: list[dict], configs: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The Triton dpe kernel's (rows, channels, warps) per program at the batch-8 shape."""
    x, want = dpe_case(stab)
    xp = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1))
    return kernel_sweep(rows, "dpe triton", {"block_h": "BLOCK_H", "block_c": "BLOCK_C", "warps": "NUM_WARPS"},
                        configs, lambda: kernels.dpe3d(xp, stab._fold_dpe_w, stab.stab.dpe.bias), want)


def gelu_rows(projector: torch.nn.Module, rows: list[dict]) -> None:
    """The projector's first layer and its exact GELU at the batch-8 shape: compiled (cuBLAS, then inductor's GELU
    pass) against cuBLASLt's GELU epilogue (`torch._addmm_activation`, which is the tanh approximation)."""
    lin = projector[0]
    x = torch.randn(17472, lin.in_features, device="cuda", dtype=torch.bfloat16)
    exact = torch.compile(lambda x: torch.nn.functional.gelu(lin(x)), dynamic=False)
    want = exact(x).float()
    rows.append({"impl": "projector l1 + exact gelu (compiled)", "ms": cuda_ms(lambda: exact(x))})
    fused = lambda: torch._addmm_activation(lin.bias, x, lin.weight.t(), use_gelu=True)  # noqa: E731
    rows.append({"impl": "projector l1 + gelu epilogue (tanh)", "ms": cuda_ms(fused),
                 "max_diff": (fused().float() - want).abs().max().item()})
    print(rows[-2:], flush=True)


def kernel_sweep(rows: list[dict], impl: str, knobs: dict[str, str], configs: list[tuple[int, ...]], fn,
                 want: torch.Tensor, module=kernels) -> tuple[int, ...]:
    """Times `fn` under each configuration of the `module` constants (videopanda's `kernels` unless said) named by
    `knobs` (row key -> constant), with max_diff against `want`; one row each, saved as it goes. Leaves the module's
    defaults in place and returns the fastest configuration (the defaults if none ran)."""
    default = tuple(getattr(module, name) for name in knobs.values())
    found = []
    for config in configs:
        for name, value in zip(knobs.values(), config):
            setattr(module, name, value)
        row = {"impl": impl, **dict(zip(knobs, config))}
        try:
            row["max_diff"] = (fn().float() - want).abs().max().item()
            # back-to-back calls: the kernels here run longer than a launch, so host launch work drops out, as in
            # the CUDA graph (one synchronised call each lets host launch work dominate)
            row["ms"] = loop_ms(fn)
            found.append((row["ms"], config))
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {err}"[:300]
        rows.append(row)
        print(row, flush=True)
        save(RESULT["out"])
    for name, value in zip(knobs.values(), default):
        setattr(module, name, value)
    return min(found)[1] if found else default


def pool_sweep(stab: FusedSTAB, rows: list[dict]) -> None:
    """kernels.ln_pool's two passes by block size on GSTRA's shape at 8 videos (16 chunks of 4096 keys); the best
    of each are then used."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(16, 4096, stab.dim, device="cuda", generator=g).to(torch.bfloat16)
    ln, u, s1, s0 = stab.stab.dec.ln_3, stab._fold_gstra_gu, stab._fold_gstra_s1, stab._fold_gstra_s0
    want = kernels.ln_pool(x, u, s1, s0, ln.weight, ln.bias, ln.eps).float()
    scores = lambda: kernels.ln_scores(x.view(-1, stab.dim), u, s1, s0, ln.eps)[0]  # noqa: E731
    best = kernel_sweep(rows, "ln_scores", {"rows": "POOL_SCORE_ROWS", "block_k": "POOL_BLOCK_K",
                                            "warps": "POOL_SCORE_WARPS"}, POOL_SCORE_SWEEP, scores, scores().float())
    kernels.POOL_SCORE_ROWS, kernels.POOL_BLOCK_K, kernels.POOL_SCORE_WARPS = best
    _, mean, rstd = kernels.ln_scores(x.view(-1, stab.dim), u, s1, s0, ln.eps)
    w = torch.rand(16, 4096, stab.num_heads, device="cuda", generator=g) / 4096
    pool = lambda: kernels.ln_pool_rows(x, w, mean.view(16, 4096))  # noqa: E731
    best = kernel_sweep(rows, "ln_pool_rows", {"block_l": "POOL_BLOCK_L", "block_c": "POOL_BLOCK_C",
                                               "warps": "POOL_WARPS"}, POOL_SWEEP, pool, pool().float())
    kernels.POOL_BLOCK_L, kernels.POOL_BLOCK_C, kernels.POOL_WARPS = best
    got = kernels.ln_pool(x, u, s1, s0, ln.weight, ln.bias, ln.eps).float()
    config = [getattr(kernels, name) for name in ("POOL_SCORE_ROWS", "POOL_BLOCK_K", "POOL_SCORE_WARPS",
                                                  "POOL_BLOCK_L", "POOL_BLOCK_C", "POOL_WARPS")]
    rows.append({"impl": "ln_pool best", "config": config,
                 "max_diff_vs_first": (got - want).abs().max().item(),
                 "ms": cuda_ms(lambda: kernels.ln_pool(x, u, s1, s0, ln.weight, ln.bias, ln.eps))})


POOL_SCORE_SWEEP = [(32, 128, 4), (64, 128, 4), (64, 128, 8), (16, 256, 4), (32, 256, 4), (64, 64, 4), (128, 64, 8),
                    (32, 64, 2)]
POOL_SWEEP = [(64, 128, 4), (128, 128, 4), (64, 64, 4), (32, 128, 4), (128, 64, 4), (64, 256, 8), (128, 128, 8)]


DPE_SWEEP = [(1, 128, 4), (1, 64, 4), (1, 128, 8), (2, 64, 4), (2, 128, 4), (1, 64, 2), (1, 32, 2), (2, 32, 4),
             (4, 32, 4)]


VARIANTS = {  # name -> (torch.compile mode, LSD form, manual CUDA graph replay, dpe form)
    "default": (None, "plain", False, "shift"),
    "default-graph": (None, "plain", True, "shift"),
    "folded-graph": (None, "folded", True, "shift"),
    "conv-graph": (None, "plain", True, "conv"),
    "conv": (None, "plain", False, "conv"),
    "autotune-graph": ("max-autotune-no-cudagraphs", "plain", True, "shift"),
    "triton": (None, "plain", False, "triton"),
    "triton-graph": (None, "plain", True, "triton"),
    "triton-ro": ("reduce-overhead", "plain", False, "triton"),
    "triton-lsd-graph": (None, "triton", True, "triton"),  # LSD window attention as a Triton kernel (the default)
    # max-autotune: inductor's Triton GEMM templates (persistent TMA ones included) against cuBLAS, per shape, with
    # the element-wise ops around them fused in where a template wins
    "autotune-lsd-graph": ("max-autotune-no-cudagraphs", "triton", True, "triton"),
    # the dpe kernel without writing the dense connection (the passes after it add x + chunk themselves)
    "nodense-lsd-graph": (None, "triton", True, "nodense"),
    "taps-lsd-graph": (None, "triton", True, "taps"),  # the dpe kernel reading tap-major [27, C] weights
    # the package's default with inductor's permute + pad for the patch unfold (FastOptions.unfold="torch")
    "torchunfold-lsd-graph": (None, "triton", True, "triton"),
    # GSTRA's and FSRA's pooling as layer norm + two matmuls (FastOptions.pool="plain") instead of kernels.ln_pool
    "plainpool-lsd-graph": (None, "triton", True, "triton"),
    # the projector over 2 / 3 / 4 row blocks (see `compiled`)
    **{f"chunkproj{k}-lsd-graph": (None, "triton", True, "triton") for k in (2, 3, 4)},
    # the package's default compiled with inductor's unroll_reductions_threshold = 1
    "realizemean-lsd-graph": (None, "triton", True, "triton"),
    "shift-ro": ("reduce-overhead", "plain", False, "shift"),
}


def _dpe_nodense(self: FusedSTAB, x: torch.Tensor, residual: torch.Tensor):
    out = kernels.dpe3d(torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1)), self._fold_dpe_w, self.stab.stab.dpe.bias)
    return out, out + residual


def _dpe_taps(self: FusedSTAB, x: torch.Tensor, residual: torch.Tensor):
    if getattr(self, "_probe_taps", None) is None:  # tap-major [27, C], passed as its [C, 27] transpose
        self._probe_taps = self._fold_dpe_w.view(-1, 27).t().contiguous()
    return kernels.dpe3d_residual(torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1)), self._probe_taps.t(),
                                  self.stab.stab.dpe.bias, residual)


DPE_FORMS = {"nodense": _dpe_nodense, "taps": _dpe_taps}


def section_decode(args) -> None:
    """The 7B-shaped 64-token answer (compiled lean loop), unfused / fused projections / + compiled pointwise ops;
    `ttft_ms` is the same call with one new token (pixel_values on the device: STAB, prefill, first token)."""
    from videopanda.fast import compile_pointwise, fuse_projections

    device, dtype = torch.device("cuda"), torch.bfloat16
    out = RESULT.setdefault("decode", {"rows": []})
    engine, processor, _ = B.build_model("7b-random", device, dtype, fuse_llm=False)  # "plain" first
    model = engine.model
    inputs = dict(processor(videos=B.synthetic_videos(1, 8, 448, seed=100), text=processor.build_prompt(B.QUESTION)))
    x = {"input_ids": inputs["input_ids"].to(device), "pixel_values": inputs["pixel_values"].to(device, dtype)}

    def answer(n=64):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        y = engine.generate(x, max_new_tokens=n, min_new_tokens=n, decoding="compiled", pad_token_id=0)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1000, y

    with torch.inference_mode():
        for label in args.decode_variants.split(","):
            if label in ("fused-projections", "fused-pointwise"):
                out.setdefault("fused_blocks", fuse_projections(model.language_model))
            if label == "fused-pointwise":
                out["pointwise_modules"] = compile_pointwise(model.language_model)
            first, y0 = answer()
            times = sorted(answer()[0] for _ in range(5))
            answer(1)
            ttft = sorted(answer(1)[0] for _ in range(5))
            out["rows"].append({"impl": label, "e2e_ms": round(times[2], 1), "min_ms": round(times[0], 1),
                                "ttft_ms": round(ttft[2], 1), "first_s": round(first / 1000, 1),
                                "prompt": x["input_ids"].shape[1]})
            out.setdefault("tokens", []).append(y0[0, -64:].tolist())
            print(out["rows"][-1], flush=True)
            save(args.out)
        out["same_tokens"] = all(t == out["tokens"][0] for t in out["tokens"])
        del out["tokens"]
    save(args.out)


def section_eval(args) -> None:
    """One batch of 32 7B answers (8 new tokens, left padding, as `videopanda eval`): the whole `generate` call
    per decoding mode, with and without compiled pointwise ops; prefill alone; the prefill's kernel table."""
    from videopanda.eval import videoqa
    from videopanda.fast import compile_pointwise

    device, dtype = torch.device("cuda"), torch.bfloat16
    out = RESULT.setdefault("eval", {"rows": []})
    engine, processor, _ = B.build_model("7b-random", device, dtype)
    model = engine.model
    pool = [processor.preprocess(v) for v in B.synthetic_videos(8, 8, 448, seed=200)]
    b, k = args.eval_batch, 8
    items = [videoqa.QAItem(i, f"v{i % 8}", f"{B.QUESTION} {'and more ' * (i % 4)}".strip(), "") for i in range(b)]
    visuals = [videoqa._Visual(pixel_values=pool[i % 8]) for i in range(b)]
    batch = videoqa._collate(processor, items, visuals, dtype, True)
    length = batch.inputs["input_ids"].shape[1]
    x = {k_: v.to(device) for k_, v in batch.inputs.items()}
    x["pixel_values"] = x["pixel_values"].to(dtype)
    out["prompt"] = length
    with torch.inference_mode():
        out["rows"].append({"what": "visual encode", "batch": b, "ms": cuda_ms(
            lambda: engine.encode(x["pixel_values"]), repeats=5)})
        for pointwise in [v == "pointwise" for v in args.eval_variants.split(",")]:
            free_static_cache(engine)
            if pointwise:
                out["pointwise_modules"] = compile_pointwise(model.language_model)
            tag = " +pointwise" if pointwise else ""
            model(**x, logits_to_keep=1)  # compiles the pointwise graphs for this shape
            out["rows"].append({"what": "prefill" + tag, "batch": b, "ms": cuda_ms(
                lambda: model(**x, logits_to_keep=1), repeats=3, warmup=1)})
            print(out["rows"][-1], flush=True)
            save(args.out)
            if args.table:
                out["table_prefill" + tag] = kernel_table(lambda: model(**x, logits_to_keep=1), rows=25)
            for mode in args.eval_modes.split(","):
                def run(mode=mode):
                    return videoqa._generate(engine, processor, batch.inputs, k, mode, min_new_tokens=k)
                run()
                torch.cuda.synchronize()
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    run()
                    torch.cuda.synchronize()
                    times.append((time.perf_counter() - t0) * 1e3)
                ms = round(sorted(times)[1], 1)
                out["rows"].append({"what": f"answer_batch {mode}{tag}", "batch": b, "ms": ms,
                                    "answers_per_s": round(b / ms * 1e3, 2)})
                print(out["rows"][-1], flush=True)
                save(args.out)
        out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--sections", default="stab,decode,eval")
    p.add_argument("--table", action="store_true", help="kernel tables of the compiled STAB")
    p.add_argument("--eager", action="store_true", help="also time the eager forms")
    p.add_argument("--stab-variants", default="triton,triton-graph,triton-ro,default-graph",
                   help=f"compiled STAB forms, from {','.join(VARIANTS)},graphed-encoder; a suffix -cdt compiles "
                        "with inductor's coordinate-descent tuning, a suffix @HxCxW sets the dpe kernel's rows, "
                        "channels and warps per program")
    p.add_argument("--stab-batches", default="1,8,32", type=lambda v: [int(b) for b in v.split(",")],
                   help="videos per call of the compiled forms (each compiles anew)")
    p.add_argument("--skip-dpe", action="store_true", help="skip the dpe forms and block-size sweep")
    p.add_argument("--dpe-sweep", action="store_true", help="time the dpe kernel's rows/channels/warps per program "
                   "(the best are used)")
    p.add_argument("--gelu-epilogue", action="store_true", help="time the projector's first layer with cuBLASLt's "
                   "GELU epilogue against cuBLAS + inductor's exact GELU")
    p.add_argument("--pool-sweep", action="store_true", help="time kernels.ln_pool's two passes by block size "
                   "(the best are used)")
    p.add_argument("--address", action="store_true", help="host time of GraphedEncoder's input copy against setting "
                   "the pixels' address")
    p.add_argument("--lsd-sweep", action="store_true", help="time kernels.lsd_attend's block sizes (the best are used)")
    p.add_argument("--decode-variants", default="fused-projections,fused-pointwise",
                   help="plain, fused-projections, fused-pointwise (in this order; fusing is not undone)")
    p.add_argument("--eval-modes", default="dynamic,compiled", help="decoding modes of the eval batch")
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--eval-variants", default="plain,pointwise", help="plain and/or pointwise (compiled pointwise ops)")
    args = p.parse_args()
    unknown = [n for n in args.sections.split(",") if f"section_{n}" not in globals()]
    unknown += [v for v in args.stab_variants.split(",")
                if v.partition("@")[0].removesuffix("-cdt") not in VARIANTS and
                not v.startswith("graphed-encoder")]
    if unknown:
        p.error(f"unknown section or STAB variant: {', '.join(unknown)}")
    RESULT.update(device=torch.cuda.get_device_name(), torch=torch.__version__, out=args.out,
                  command="python bench/speed_probe.py " + " ".join(sys.argv[1:]))
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        try:
            globals()[f"section_{name}"](args)
        except Exception as err:
            RESULT.setdefault("errors", []).append(f"{name}: {type(err).__name__}: {err}"[:600])
        RESULT.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        save(args.out)
        free_gpu()


def free_static_cache(engine) -> None:
    """Drop the engine's static KV cache and the compiled steps holding it (37 GB at batch 32)."""
    import gc

    engine.clear_caches()
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


def free_gpu() -> None:
    """Drop what a section left on the GPU (compiled decode steps and their CUDA-graph pools hold the model; each
    section's engine, and with it its compiled step, is gone once the section returns)."""
    import gc

    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""One GPU call: the floor of the fused 7B STAB + projector at N videos, as this design splits it into kernels.

    python bench/floor_probe.py --videos 8 --out OUT/floor.json [--cutlass-dir DIR]

Why: a target such as 8 videos in <= 2.5 ms (`--target-ms`) is only reachable if it is above what the parts would
take if each ran at the best speed this GPU shows for it. This measures that floor:

- every matrix product of the fused encode (`FusedSTAB.forward` + the projector), alone, as one cuBLAS call
  (`F.linear`, bfloat16), each timed as its share of a CUDA graph of 10 calls;
- the copy and read bandwidth of the GPU (a 512 MB `copy_` and a `sum`), and with it the time the memory-bound
  passes between the products would take if each moved only the bytes it must (listed by `passes`, each with why);
- optionally (`--cutlass-dir`, in a subprocess with a time limit), inductor's CUTLASS backend on the LSTE's second
  product: with its residual through epilogue fusion (EVT; `--cutlass-modes residual`), the one fused-epilogue
  product whose epilogue EVT can express (the projector's exact GELU needs erf, which inductor's EVT code generation
  does not emit), or alone (`plain`), to tell a backend that fails from an epilogue that does.

The sums are a floor for this split: a faster encode needs fewer passes (more fusions into the products), and our
fused-epilogue products are Triton GEMMs, which run at 55-65% of cuBLAS's rate on the H100 (bench/gemm_probe.py).
The result on an H100 and how it reads: bench/results/h100_floor.json, docs/speed.md ("Known limits").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemm_probe import graph_ms  # noqa: E402

C, INNER, D, PATCH_K, GRID, FRAMES_PER_VIDEO = 1024, 688, 4096, 592, 32, 8


def shapes(videos: int) -> dict:
    """Row counts of the fused encode for square 448-pixel videos of 8 frames (the bench's input)."""
    frames = videos * FRAMES_PER_VIDEO
    tokens = frames * GRID * GRID  # patch tokens, 32 x 32 a frame
    windows = tokens // 4  # LSD windows (2 x 2), = LSD tokens
    llm = frames * (1 + (GRID // 2) * (GRID // 2 + 1))  # 273 a frame
    return dict(frames=frames, tokens=tokens, windows=windows, llm=llm)


def gemms(s: dict) -> list[tuple[str, int, int, int, bool]]:
    """(name, M, K, N, bias) of every product of the fused encode (K of the patches padded to 592, the LSTE's inner
    width 682 to 688, as `STAB._fold` stores them)."""
    return [
        ("patch_embedding", s["tokens"], PATCH_K, C, False),
        ("lste_first (patches @ (W1 Wp)^T)", s["tokens"], PATCH_K, INNER, False),
        ("lste_second (+ residual in the package)", s["tokens"], INNER, C, True),
        ("lsd_kv", s["tokens"], C, 2 * C, False),
        ("lsd_q", s["windows"], C, C, False),
        ("lsd_proj", s["windows"], C, C, True),
        ("projector_1 (+ GELU in the package)", s["llm"], C, D, True),
        ("projector_2", s["llm"], D, D, True),
    ]


def passes(s: dict, pixel_bytes: int = 2) -> list[tuple[str, float, str]]:
    """(name, bytes, why) of the memory-bound work between the products, at the fewest bytes each must move in this
    split. bfloat16 activations; GSTRA and FSRA pool their keys in two reads (scores, then the weighted sum)."""
    T, W, L, fr = s["tokens"], s["windows"], s["llm"], s["frames"]
    tc, ti, wc = 2 * T * C, 2 * T * INNER, 2 * W * C
    return [
        ("unfold", fr * 3 * (GRID * 14) ** 2 * pixel_bytes + 2 * T * PATCH_K, "read RGB, write the patch rows"),
        ("lste_taps", 2 * ti, "read the first product, write the temporal taps' sum"),
        ("lste_residual", tc, "the second product's epilogue reads the patch embeddings"),
        ("dpe", 4 * tc, "read its input and the dense connection's residual, write x2 and x2 + residual"),
        ("gstra_pool", 2 * tc, "read x2 twice: scores with the folded query, then the weighted sum"),
        ("lsd_pool_mean", tc + wc, "read the frame features, write the 2x2 window means"),
        ("lsd_q_norm", 2 * wc, "the window means' layer norm before the query product: read, write"),
        ("lsd_kv_norm", 2 * tc, "the keys' layer norm: read, write"),
        ("lsd_attend", 2 * tc + 2 * wc, "read K and V, read q, write the attended values"),
        ("lsd_residual", 3 * wc, "window mean + projected values"),
        ("fsra_pool", 2 * wc, "read the LSD tokens twice"),
        ("assemble", wc + 2 * L * C, "read the LSD tokens, write the LLM-ordered rows (CLS and split rows)"),
    ]


def linear_ms(M: int, K: int, N: int, bias: bool, g: torch.Generator, gelu: bool = False) -> float:
    """One cuBLAS product [M, K] @ [K, N] (+ bias), bfloat16, as its share of a graph of 10 calls; `gelu`: the input
    is GELU of normal numbers (as the projector's second layer gets) instead of normal numbers."""
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
    x = F.gelu(x) if gelu else x
    w = (torch.randn(N, K, device="cuda", generator=g) / K**0.5).to(torch.bfloat16)
    b = torch.zeros(N, device="cuda", dtype=torch.bfloat16) if bias else None
    return graph_ms(lambda: F.linear(x, w, b))


def bandwidth() -> dict:
    """Copy (read + write) and read-only bandwidth over 512 MB, in TB/s of bytes moved."""
    n = 256 * 2**20  # bfloat16 elements: 512 MB
    a = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    b = torch.empty_like(a)
    copy = graph_ms(lambda: b.copy_(a))
    read = graph_ms(lambda: a.sum(dtype=torch.float32))
    return {"copy_ms": round(copy, 4), "copy_tb_s": round(2 * 2 * n / copy / 1e9, 3),
            "read_ms": round(read, 4), "read_tb_s": round(2 * n / read / 1e9, 3)}


CUTLASS_SNIPPET = textwrap.dedent("""
    import json, sys, time, torch, torch.nn.functional as F
    import torch._inductor.config as cfg
    sys.path.insert(0, sys.argv[2])
    from gemm_probe import graph_ms
    cfg.max_autotune = True
    cfg.max_autotune_gemm_backends = "CUTLASS"
    ns = getattr(cfg, "cutlass", cfg.cuda)  # torch 2.11 reads config.cutlass.*, older ones config.cuda.*
    ns.cutlass_dir = sys.argv[1]
    ns.cutlass_max_profiling_configs = 6
    plain = sys.argv[6] == "plain"  # the product alone, no epilogue fusion: does the backend work at all?
    ns.cutlass_epilogue_fusion_enabled = not plain
    ns.cutlass_tma_only = True  # SM90's TMA kernels (a first run without this picked cp.async ones, which failed too)
    try:
        from torch._inductor.codegen.cuda import cutlass_utils
    except ImportError:
        from torch._inductor.codegen.cutlass import utils as cutlass_utils
    print("try_import_cutlass:", cutlass_utils.try_import_cutlass(), file=sys.stderr, flush=True)
    M, K, N = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
    w = (torch.randn(N, K, device="cuda", generator=g) / K ** 0.5).to(torch.bfloat16)
    b = torch.randn(N, device="cuda", dtype=torch.bfloat16, generator=g) * 0.1
    x = torch.randn(M, N, device="cuda", dtype=torch.bfloat16, generator=g)
    fn = torch.compile((lambda: F.linear(z, w)) if plain else (lambda: x + F.linear(z, w, b)))
    t0 = time.time()
    got = fn()
    compile_s = time.time() - t0
    ref = F.linear(z.float(), w.float()) if plain else x.float() + F.linear(z.float(), w.float(), b.float())
    ms = graph_ms(fn)
    print(json.dumps({"ms": round(ms, 4), "tflops": round(2 * M * N * K / ms / 1e9, 1),
                      "compile_s": round(compile_s, 1),
                      "max_abs_err_vs_fp32": (got.float() - ref).abs().max().item()}))
""")


def cutlass_gemm(cutlass_dir: str, M: int, K: int, N: int, timeout: int, mode: str) -> dict:
    """Inductor's CUTLASS backend on `x + z @ w.T + b` (mode "residual", EVT epilogue) or `z @ w.T` ("plain"), in a
    subprocess: its nvcc builds are slow and a failure must not lose the floors measured before it."""
    env = {**os.environ, "TORCHINDUCTOR_CUTLASS_DIR": cutlass_dir}
    cmd = [sys.executable, "-c", CUTLASS_SNIPPET, cutlass_dir, str(Path(__file__).resolve().parent), str(M), str(K),
           str(N), mode]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode == 0 and lines:
        return {**json.loads(lines[-1]), "wall_s": round(time.time() - t0, 1)}
    return {"error": f"exit {p.returncode}", "stderr_head": p.stderr[:4000], "stderr_tail": p.stderr[-1500:],
            "wall_s": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--target-ms", type=float, default=2.5, help="the target to compare with, for the summary")
    ap.add_argument("--rounds", type=int, default=3, help="timings of every product; the fastest counts")
    ap.add_argument("--cutlass-dir", help="a CUTLASS tree (include/, tools/, python/) for inductor's CUTLASS backend")
    ap.add_argument("--cutlass-timeout", type=int, default=300)
    ap.add_argument("--cutlass-modes", default="residual", help="residual (EVT epilogue), plain (no epilogue)")
    args = ap.parse_args(argv)
    if args.videos < 1 or args.rounds < 1:
        ap.error(f"--videos and --rounds must be at least 1, got {args.videos} and {args.rounds}")
    bad = set(args.cutlass_modes.split(",")) - {"residual", "plain"}
    if bad:
        ap.error(f"--cutlass-modes takes residual and/or plain, not {', '.join(sorted(bad))}")
    if args.cutlass_dir and not Path(args.cutlass_dir, "include", "cutlass").is_dir():
        ap.error(f"--cutlass-dir {args.cutlass_dir} is not a CUTLASS tree (no include/cutlass in it)")
    if not torch.cuda.is_available():
        sys.exit("floor_probe times CUDA kernels: run it on a GPU")
    s = shapes(args.videos)
    result: dict = {"command": " ".join([sys.executable, *sys.argv]), "device": torch.cuda.get_device_name(),
                    "torch": torch.__version__, "cuda": torch.version.cuda, "videos": args.videos, "shapes": s}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps(result, indent=1))

    g = torch.Generator(device="cuda").manual_seed(0)
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # rounds over all shapes: clock and power drift shows as spread, not as one shape
        for name, M, K, N, bias in gemms(s):
            times.setdefault(name, []).append(linear_ms(M, K, N, bias, g))
    # the largest product on GELU outputs, its input in the model: does the data (the power it draws) change its speed?
    *_, (_, M, K, N, _) = gemms(s)
    result["projector_2_on_gelu_outputs_ms"] = round(min(linear_ms(M, K, N, True, g, gelu=True) for _ in range(3)), 4)
    rows = []
    for name, M, K, N, bias in gemms(s):
        ms = min(times[name])
        rows.append({"gemm": name, "M": M, "K": K, "N": N, "bias": bias, "gflop": round(2 * M * K * N / 1e9, 1),
                     "ms": round(ms, 4), "tflops": round(2 * M * K * N / ms / 1e9, 1),
                     "ms_rounds": [round(t, 4) for t in times[name]]})
        print(json.dumps(rows[-1]), flush=True)
    result["gemms"] = rows
    bw = bandwidth()
    result["bandwidth"] = bw
    tb_s = bw["copy_tb_s"]
    result["passes"] = [{"pass": n, "mb": round(b / 1e6, 1), "floor_ms": round(b / tb_s / 1e9, 4), "why": why}
                        for n, b, why in passes(s)]
    gemm_ms = sum(r["ms"] for r in rows)
    pass_ms = sum(p["floor_ms"] for p in result["passes"])
    pass_bytes = sum(b for _, b, _ in passes(s))
    read_ms = pass_bytes / bw["read_tb_s"] / 1e9  # every pass as fast as a pure read: no pass gets there
    result["summary"] = {"gemm_cublas_ms": round(gemm_ms, 3),
                         "gemm_tflop": round(sum(r["gflop"] for r in rows) / 1e3, 3),
                         "passes_mb": round(pass_bytes / 1e6, 1), "passes_at_copy_bandwidth_ms": round(pass_ms, 3),
                         "passes_at_read_bandwidth_ms": round(read_ms, 3), "floor_ms": round(gemm_ms + pass_ms, 3),
                         "floor_ms_at_read_bandwidth": round(gemm_ms + read_ms, 3), "target_ms": args.target_ms}
    print(json.dumps(result["summary"]), flush=True)
    save()
    if args.cutlass_dir:
        for mode in args.cutlass_modes.split(","):
            result[f"cutlass_{mode}"] = cutlass_gemm(args.cutlass_dir, s["tokens"], INNER, C, args.cutlass_timeout,
                                                     mode)
            print(json.dumps(result[f"cutlass_{mode}"])[:3000], flush=True)
            save()
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()

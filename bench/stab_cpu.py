"""STAB + projector latency: the straightforward STAB vs `videopanda.fast.FusedSTAB`, eager and (optionally)
torch.compile'd.

Named for where it was written (a CPU-only machine); `--device cuda` is the mode the targets are about.

One square, all-valid video of `--frames` frames per batch element, random weights (timing does not depend on them).
Modes:
  unfused           the straightforward STAB (training / parity path), eager
  fused             FusedSTAB, eager; crop boxes read from the mask (one small early device->host copy)
  fused_boxes       FusedSTAB, eager; crop_boxes="full" given (no host sync at all)
  compiled          fused + torch.compile(mode=--compile-mode, dynamic=False) of STAB+projector; boxes read from the
                    mask (three graphs: box read, patch/temporal, frame tokens)
  compiled_boxes    the same with crop_boxes="full": one graph (CUDA graphs with mode reduce-overhead)
Each time is the median of --repeats calls after --warmup calls; CUDA times come from CUDA events around each call.
`max_abs_diff` compares each mode's projected tokens with the unfused ones on the same input. Writes JSON.

    python bench/stab_cpu.py --out /tmp/stab_cpu.json                       # CPU, float32, batch 1, both configs
    python bench/stab_cpu.py --device cuda --dtype bfloat16 --compile --out /tmp/stab_h100.json   # batch 1, 8, 32
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from videopanda.configuration import VideoPandaConfig, variant_config
from videopanda.fast import FusedSTAB
from videopanda.modeling.stab import STAB

LLM_WIDTH = {"videopanda-7b": 4096, "videopanda-default": 576}  # Vicuna-7B, SmolLM2-135M


def build(variant: str, device: torch.device, dtype: torch.dtype) -> tuple[STAB, nn.Module, VideoPandaConfig]:
    config = variant_config(variant)
    torch.manual_seed(0)
    stab = STAB.from_config(config).eval()
    with torch.no_grad():  # wake the zero-initialised branches; BN statistics away from identity
        for p in stab.parameters():
            p.add_(0.02 * torch.randn_like(p))
        bn = stab.lmhra1.pos_embed[0] if stab.lmhra1 is not None else None
        if bn is not None:
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 2)
    D = LLM_WIDTH[variant]
    projector = nn.Sequential(nn.Linear(config.stab_hidden_size, D), nn.GELU(), nn.Linear(D, D)).eval()
    return stab.to(device, dtype), projector.to(device, dtype), config


def video_batch(config: VideoPandaConfig, batch: int, frames: int, device: torch.device) -> torch.Tensor:
    S = config.image_size
    px = torch.randn(batch, frames, 4, S, S, generator=torch.Generator().manual_seed(1))
    px[:, :, 3] = 1  # every pixel valid: the square 448x448 case of the targets
    return px.to(device)


def time_once(fn: Callable[[], torch.Tensor], device: torch.device, step: Callable[[], None]) -> float:
    """Milliseconds of one call: CUDA events on CUDA (the device time of the call, launches included), wall time on
    CPU."""
    step()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def time_modes(encoders: dict[str, Callable[[], torch.Tensor]], device: torch.device, warmup: int, repeats: int,
               step: Callable[[], None]) -> dict[str, list[float]]:
    """Milliseconds per call for each mode. On CUDA each mode is timed in its own block (after its warm-up); on CPU
    the modes take turns call by call, so that the load of a shared machine hits them alike."""
    times: dict[str, list[float]] = {mode: [] for mode in encoders}
    if device.type == "cuda":
        for mode, fn in encoders.items():
            for _ in range(warmup):
                step()
                fn()
            torch.cuda.synchronize()
            times[mode] = [time_once(fn, device, step) for _ in range(repeats)]
        return times
    for _ in range(warmup):
        for fn in encoders.values():
            fn()
    for _ in range(repeats):
        for mode, fn in encoders.items():
            times[mode].append(time_once(fn, device, step))
    return times


def run_variant(variant: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict]:
    stab, projector, config = build(variant, device, dtype)
    if args.stab_only:
        projector = nn.Identity()
    fused = FusedSTAB(copy.deepcopy(stab))
    return [row for batch in args.batch_sizes
            for row in run_batch(variant, stab, fused, projector, config, batch, args, device)]


def run_batch(variant: str, stab: STAB, fused: FusedSTAB, projector: nn.Module, config: VideoPandaConfig, batch: int,
              args: argparse.Namespace, device: torch.device) -> list[dict]:
    px = video_batch(config, batch, args.frames, device)
    encoders: dict[str, Callable[[], torch.Tensor]] = {
        "unfused": lambda: projector(stab(px).tokens),
        "fused": lambda: projector(fused(px).tokens),
        "fused_boxes": lambda: projector(fused(px, crop_boxes="full").tokens),
    }
    if args.compile:
        torch._dynamo.reset()
        compiled = torch.compile(lambda x: projector(fused(x).tokens), mode=args.compile_mode, dynamic=False)
        compiled_boxes = torch.compile(lambda x: projector(fused(x, crop_boxes="full").tokens),
                                       mode=args.compile_mode, dynamic=False)
        encoders["compiled"] = lambda: compiled(px)
        encoders["compiled_boxes"] = lambda: compiled_boxes(px)
    step = torch.compiler.cudagraph_mark_step_begin if args.compile and device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        want = encoders["unfused"]().float()
        checks = {}
        for mode, fn in encoders.items():
            step()
            t0 = time.perf_counter()
            got = fn().float()  # first call: compilation for the compiled modes
            checks[mode] = (time.perf_counter() - t0, (got - want).abs().max().item(), got.shape[0])
            del got
        times = time_modes(encoders, device, args.warmup, args.repeats, step)
    rows = []
    for mode, (first_s, diff, tokens) in checks.items():
        median = statistics.median(times[mode])
        rows.append(dict(variant=variant, batch=batch, frames=args.frames, image_size=config.image_size,
                         stab_width=config.stab_hidden_size, llm_width=None if args.stab_only else LLM_WIDTH[variant],
                         mode=mode,
                         median_ms=median, min_ms=min(times[mode]), per_video_ms=median / batch,
                         first_call_s=first_s, repeats=len(times[mode]), times_ms=times[mode], tokens=tokens,
                         max_abs_diff=diff, ref_abs_mean=want.abs().mean().item()))
        print(f"{variant:>18} B={batch:<3} {mode:>15}: {median:9.3f} ms (min {min(times[mode]):.3f}, "
              f"{median / batch:.3f} ms/video)  max|diff| {diff:.2e}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--variants", nargs="+", default=["videopanda-default", "videopanda-7b"],
                        choices=sorted(LLM_WIDTH))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 on CPU, 1 8 32 on CUDA")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None, help="default: 3 on CPU, 50 on CUDA")
    parser.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 10 on CUDA")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd fused modes")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode; default reduce-overhead (CUDA graphs) on CUDA, default on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--stab-only", action="store_true", help="time the STAB without the projector")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.batch_sizes = args.batch_sizes or ([1, 8, 32] if cuda else [1])
    args.repeats = args.repeats or (50 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    args.compile_mode = args.compile_mode or ("reduce-overhead" if cuda else None)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = [row for variant in args.variants for row in run_variant(variant, args, device, dtype)]
    machine = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                   cpus=torch.get_num_threads(),
                   device=torch.cuda.get_device_name() if cuda else platform.processor() or "cpu")
    what = "STAB" if args.stab_only else "STAB + projector"
    result = dict(what=f"{what} latency, square all-valid videos, random weights", dtype=args.dtype,
                  device=args.device, compile_mode=args.compile_mode if args.compile else None,
                  results=rows, machine=machine, command="python " + " ".join(sys.argv))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

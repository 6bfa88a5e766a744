"""Where the time of a compiled 7B-shaped answer goes: GPU kernels of the Engine's lean greedy loop (torch.profiler).

Usage (GPU): python bench/profile_decode.py [--llm 7b-random] [--new-tokens 64] [--decoding compiled]
Prints the kernels sorted by total GPU time and the wall time of the profiled answer.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch._inductor.config

from videopanda import bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llm", default="7b-random", choices=bench.LLMS)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--decoding", default="compiled")
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--coordinate-descent", action="store_true",
                   help="torch._inductor.config.coordinate_descent_tuning = True (as gpt-fast)")
    p.add_argument("--no-cudnn-sdp", action="store_true",
                   help="torch.backends.cuda.enable_cudnn_sdp(False): SDPA picks another backend (decode attention)")
    args = p.parse_args()
    if args.no_cudnn_sdp:
        torch.backends.cuda.enable_cudnn_sdp(False)
    if args.coordinate_descent:
        torch._inductor.config.coordinate_descent_tuning = True
    device = torch.device("cuda")
    engine, processor, _ = bench.build_model(args.llm, device, torch.bfloat16)
    inputs = dict(processor(videos=bench.synthetic_videos(1, 8, 448, seed=100),
                            text=processor.build_prompt(bench.QUESTION)))
    x = {k: v.to(device) for k, v in inputs.items()}
    x["pixel_values"] = x["pixel_values"].to(torch.bfloat16)
    n = args.new_tokens

    def answer() -> torch.Tensor:
        return engine.generate(x, max_new_tokens=n, min_new_tokens=n, decoding=args.decoding)

    for _ in range(3):
        answer()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    answer()
    torch.cuda.synchronize()
    print(f"answer: {(time.perf_counter() - t0) * 1000:.1f} ms for {n} tokens ({args.decoding})")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as prof:
        answer()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=90))


if __name__ == "__main__":
    main()

"""Does the Engine give the plain model's greedy tokens? And where it does not, is it a near-tie?

The reference is the plain model: the faithful STAB and the unfused LLM, through transformers' `generate` (dynamic
cache). It answers first, for every batch size, before the `Engine` is built (on CUDA the engine fuses the LLM's
projections in place). Then the engine answers the same prompts in each decoding mode: the fused STAB, the fused LLM
on CUDA, and for a single greedy request in "static"/"compiled" its own decode loop. Each row gives the first
differing (video, position) and there the gap between the reference's two best logits: a gap below the dtype's
resolution means rounding in other kernels picked the other token, not a bug (docs/speed.md). With --float32-truth,
each row also says where the plain model and the engine first leave the plain model's float32 answer: in bfloat16,
how far rounding alone moves an answer.

Usage: python bench/greedy_agreement.py [--llm 7b-random,default-random] [--device auto] [--dtype auto]
           [--new-tokens 64] [--modes dynamic,static,compiled] [--batch-sizes 1,2] [--float32-truth]
           [--out FILE.json]
"default" is the bundled model's real weights; the others are random weights of that shape (`videopanda bench`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from typing import Any

import torch

from videopanda import bench
from videopanda.engine import Engine

QUESTIONS = ("What happens in the video?", "Describe the video.", "What colour is the object?", "What moves?")
FRAME_SIZE = {"7b": 448, "default": 224}


def reference(model: Any, processor: Any, videos: list, batch: int, new_tokens: int, device: torch.device,
              dtype: torch.dtype) -> tuple[dict, int, Any]:
    """(device inputs, prompt length, transformers' greedy output with logits) of the plain model."""
    prompts = [processor.build_prompt(q) for q in QUESTIONS[:batch]]
    inputs = processor(videos=videos[:batch], text=prompts if batch > 1 else prompts[0])
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=processor.tokenizer.pad_token_id or 0, return_dict_in_generate=True,
                             output_logits=True)
    return inputs, inputs["input_ids"].shape[1], out


def first_difference(a: torch.Tensor, b: torch.Tensor) -> list[int] | None:
    """[row, position] of the first token where `a` and `b` differ, or None when they are equal."""
    differ = (a.cpu() != b.cpu()).nonzero()
    return [int(i) for i in differ[0]] if differ.numel() else None


def compare(got: torch.Tensor, ref: Any, n_prompt: int) -> dict[str, Any]:
    """Same tokens, or the first difference with the reference's top-2 logit gap there."""
    want, new = ref.sequences[:, n_prompt:].cpu(), got[:, n_prompt:].cpu()
    first = first_difference(new, want)
    if first is None:
        return {"identical": True}
    video, pos = first
    top = ref.logits[pos][video].float().topk(2)
    return {"identical": False, "first_difference": [video, pos], "differing_tokens": int((new != want).sum()),
            "ref_top2": [round(v, 4) for v in top.values.tolist()],
            "gap": round(float(top.values[0] - top.values[1]), 5), "ref_token": int(want[video, pos]),
            "got_token": int(new[video, pos]), "got_is_ref_second": int(new[video, pos]) == int(top.indices[1])}


def float32_truth(llm: str, device: torch.device, videos: list, batches: list[int], new_tokens: int
                  ) -> dict[int, torch.Tensor]:
    """The plain model's new tokens in float32, per batch size: how far bfloat16 itself moves the answer."""
    plain, processor, _ = bench.build_model(llm, device, torch.float32, fuse_llm=False)
    truth = {}
    for b in batches:
        _, n_prompt, out = reference(plain.model, processor, videos, b, new_tokens, device, torch.float32)
        truth[b] = out.sequences[:, n_prompt:].cpu()
    del plain
    return truth


def run_llm(llm: str, device: torch.device, dtype: torch.dtype, args: argparse.Namespace) -> list[dict]:
    plain, processor, stab = bench.build_model(llm, device, dtype, fuse_llm=False)
    model = plain.model
    batches = [int(b) for b in args.batch_sizes.split(",")]
    videos = bench.synthetic_videos(max(batches), 8, FRAME_SIZE.get(stab, 112), seed=100)
    refs = {b: reference(model, processor, videos, b, args.new_tokens, device, dtype) for b in batches}
    truth = float32_truth(llm, device, videos, batches, args.new_tokens) if args.float32_truth else None
    engine = Engine(model, processor)
    rows = []
    for batch, (inputs, n_prompt, ref) in refs.items():
        for mode in args.modes.split(","):
            start = time.perf_counter()
            got = engine.generate(inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                  decoding=mode, pad_token_id=processor.tokenizer.pad_token_id or 0)
            row = {"llm": llm, "batch": batch, "decoding": mode, **compare(got, ref, n_prompt),
                   "seconds": round(time.perf_counter() - start, 2)}
            if truth is not None:  # first (video, position) where each differs from the float32 plain model
                row["plain_vs_float32"] = first_difference(ref.sequences[:, n_prompt:], truth[batch])
                row["engine_vs_float32"] = first_difference(got[:, n_prompt:], truth[batch])
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llm", default="7b-random,default-random", help=f"comma-separated, from {','.join(bench.LLMS)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--modes", default="dynamic,static,compiled")
    p.add_argument("--batch-sizes", default="1,2")
    p.add_argument("--float32-truth", action="store_true",
                   help="also answer with the plain model in float32 and give where each side first leaves it")
    p.add_argument("--out", help="JSON file to write")
    args = p.parse_args()
    unknown = set(args.llm.split(",")) - set(bench.LLMS)
    if unknown:
        p.error(f"unknown --llm {', '.join(sorted(unknown))}; choose from {', '.join(bench.LLMS)}")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else \
        torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = [row for llm in args.llm.split(",") for row in run_llm(llm, device, dtype, args)]
    report = {"command": shlex.join(["python", "bench/greedy_agreement.py", *sys.argv[1:]]),
              **bench.environment(device), "dtype": str(dtype).removeprefix("torch."), "rows": rows,
              "all_identical": all(r["identical"] for r in rows)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

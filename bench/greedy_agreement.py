"""Do the decoding modes give the same greedy tokens in bfloat16 on a GPU, and where they differ, is it a near-tie?

Runs one 7B-shaped (random weights) answer per mode and compares each with transformers' dynamic-cache `generate`:
the first differing position, and there the gap between the two best logits of the reference (a gap below bfloat16's
resolution means the kernels' rounding, not a bug, picked the other token).

Usage (GPU): python bench/greedy_agreement.py [--llm 7b-random] [--new-tokens 64] [--modes static,compiled]
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import StoppingCriteriaList

from videopanda import bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llm", default="7b-random", choices=bench.LLMS)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--modes", default="static,compiled")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    engine, processor, _ = bench.build_model(args.llm, device, dtype)
    inputs = dict(processor(videos=bench.synthetic_videos(1, 8, 448, seed=100),
                            text=processor.build_prompt(bench.QUESTION)))
    x = {k: v.to(device) for k, v in inputs.items()}
    x["pixel_values"] = x["pixel_values"].to(dtype)
    n, n_prompt = args.new_tokens, x["input_ids"].shape[1]
    with torch.inference_mode():
        # the reference: the plain model (plain STAB, transformers' dynamic cache)
        ref = engine.model.generate(**x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                    return_dict_in_generate=True, output_logits=True)
        want = ref.sequences[0, n_prompt:]
        report = {}
        runs = {f"{m} (lean loop)": lambda m=m: engine.generate(inputs, max_new_tokens=n, min_new_tokens=n,
                                                                 decoding=m)
                for m in args.modes.split(",")}
        for m in args.modes.split(","):
            def hf(m: str = m) -> torch.Tensor:  # stopping criteria (none here) take transformers' loop
                return engine.generate(inputs, max_new_tokens=n, min_new_tokens=n, decoding=m,
                                       stopping_criteria=StoppingCriteriaList())
            runs[f"{m} (transformers generate)"] = hf
        for name, run in runs.items():
            got = run()[0, n_prompt:]
            differ = (got != want).nonzero()
            first = int(differ[0]) if differ.numel() else None
            row = {"same": first is None, "first_difference": first}
            if first is not None:
                top = ref.logits[first][0].float().topk(2)
                row.update(ref_top2=[round(v, 4) for v in top.values.tolist()],
                           gap=round(float(top.values[0] - top.values[1]), 5), ref_token=int(want[first]),
                           got_token=int(got[first]), got_is_ref_second=int(got[first]) == int(top.indices[1]))
            report[name] = row
            print(name, json.dumps(row))


if __name__ == "__main__":
    main()

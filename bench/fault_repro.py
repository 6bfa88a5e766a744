"""Session 7: which compiled STAB form, run earlier in the same process, makes the 7B compiled answer fail with
"CUDA error: unspecified launch failure" (bench/device_fault_bisect.sh found the bench's compiled STAB rows do).

    python bench/fault_repro.py --before ours-graph [--reset-trees] --out OUT/case.json      (GPU)

--before: what runs first on the 7B STAB + projector (batch 1 and 8, a few calls each, then dropped and the cache
emptied, as the bench's stab section does): `ours-graph` (torch.compile mode "reduce-overhead": cudagraph trees),
`graphed-encoder` (modeling.graphs.GraphedEncoder), `module-compile` (nn.Module.compile, default mode) or `none`.
--reset-trees: reset inductor's cudagraph trees after it; --keep-before, --no-empty-cache, --dynamo-reset, --capture:
see --help. Then five 64-token compiled answers of the 7B-shaped model, each synchronised; the JSON says which call
failed, if one did. Session 7's runs (bench/results/h100_fault_7.json) came before the fix in GraphedEncoder._capture:
their default capture is today's `--capture unfixed`. A capture on a fresh stream of its own (warm-up and capture on
one side stream) was tried there too, from an earlier version of this script, and failed the same way.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback

import torch

from videopanda import bench as B

KEEP: list = []  # --keep-before: what ran first stays alive


def _chain(stab, projector):
    """The compiled modules as one call (a closure outside `before`, whose names it deletes)."""
    return lambda px: projector(stab(px).tokens)


def before(kind: str, device: torch.device, dtype: torch.dtype, *, keep: bool, empty_cache: bool) -> None:
    stab, projector = B._visual_encoder("videopanda-7b", 4096, device, dtype)
    stab.fuse()
    inputs = {b: B.pixel_values(B.synthetic_videos(b, 8, 448, seed=b), "videopanda-7b").to(device, dtype)
              for b in (1, 8)}
    with torch.inference_mode():
        if kind == "ours-graph":
            fn = B._graphed(stab, projector, inputs)
        elif kind == "graphed-encoder":
            fn = B._graphed_manual(stab, projector, inputs)
        elif kind == "module-compile":
            stab.compile(dynamic=False)
            projector.compile(dynamic=False)
            fn = _chain(stab, projector)
        else:
            return
        for px in inputs.values():
            for _ in range(5):
                fn(px)
        torch.cuda.synchronize()
    if keep:
        KEEP.extend([fn, stab, projector, inputs])
    del fn, stab, projector, inputs
    if empty_cache:
        B._free(device)
    else:
        import gc

        gc.collect()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default="none", choices=["none", "ours-graph", "graphed-encoder", "module-compile"])
    p.add_argument("--reset-trees", action="store_true")
    p.add_argument("--keep-before", action="store_true", help="keep what ran first alive")
    p.add_argument("--no-empty-cache", action="store_true", help="gc only after it, no torch.cuda.empty_cache()")
    p.add_argument("--capture", default="package", choices=["package", "unfixed"],
                   help="GraphedEncoder's capture as the package has it (cuBLAS workspaces cleared around it), or "
                        "without that")
    p.add_argument("--dynamo-reset", action="store_true", help="torch._dynamo.reset() after it")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    result = {**vars(args), "calls": []}
    if args.capture == "unfixed":  # GraphedEncoder's capture as before session 7's fix
        import contextlib

        from videopanda.modeling import graphs

        graphs._own_cublas_workspace = contextlib.nullcontext
    before(args.before, device, dtype, keep=args.keep_before, empty_cache=not args.no_empty_cache)
    if args.dynamo_reset:
        torch._dynamo.reset()
    if args.reset_trees:
        from torch._inductor import cudagraph_trees

        cudagraph_trees.reset_cudagraph_trees()
    model, processor, _ = B.build_model("7b-random", device, dtype)
    inputs = dict(processor(videos=B.synthetic_videos(1, 8, 448, seed=100), text=processor.build_prompt(B.QUESTION)))
    n_prompt = inputs["input_ids"].shape[1]
    for i in range(5):
        t0 = time.perf_counter()
        try:
            B._generate_once(model, processor, inputs, n_prompt, 64, "compiled", device)
            torch.cuda.synchronize()
            result["calls"].append({"call": i, "ms": round((time.perf_counter() - t0) * 1000, 1)})
        except Exception as err:
            result["calls"].append({"call": i, "error": f"{type(err).__name__}: {err}"[:200],
                                    "traceback": traceback.format_exc(limit=-4)})
            break
    print(json.dumps({k: v for k, v in result.items()}, indent=1)[:1500])
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

"""Per-family accuracy of a model on held-out synthetic video-QA items rendered in memory (no video files).

The clips never touch a video file, so it runs where PyAV is missing, e.g. on a GPU machine right after training the
default model. Answers are compared after normalisation (lowercase, no punctuation, no articles); captions are scored
by token F1.

    python bench/eval_synth_stream.py --model videopanda-default --seed 999 --n 700 --out eval.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

from videopanda.data.synth_stream import SynthQAStream
from videopanda.engine import Engine
from videopanda.eval.metrics import exact_match, token_f1


@torch.inference_mode()
def evaluate(engine: Engine, processor, seed: int, n: int, batch_size: int, wide: bool = False) -> dict:
    stream = SynthQAStream(processor, seed=seed, noise=0.0, wide=wide)
    per_family: dict[str, list[float]] = defaultdict(list)
    examples = []
    start = time.perf_counter()
    for lo in range(0, n, batch_size):
        items = [stream.example(i) for i in range(lo, min(n, lo + batch_size))]
        inputs = processor(videos=[f for f, _ in items], text=[q["question"] for _, q in items])
        out = engine.generate(dict(inputs), max_new_tokens=48)
        preds = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:])
        for (_, q), pred in zip(items, preds):
            score = token_f1(pred, q["answer"]) if q["family"] == "caption" else \
                float(exact_match(pred, q["answer"]))
            per_family[q["family"]].append(score)
            if len(examples) < 40:
                examples.append({**q, "pred": pred})
    qa = [s for fam, scores in per_family.items() if fam != "caption" for s in scores]
    return {"overall_accuracy_without_caption": sum(qa) / max(len(qa), 1),
            "per_family": {f: {"n": len(s), "score": sum(s) / len(s)} for f, s in sorted(per_family.items())},
            "caption_metric": "token F1", "n": n, "seed": seed, "wide": wide, "seconds": time.perf_counter() - start,
            "examples": examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="videopanda-default")
    parser.add_argument("--seed", type=int, default=999, help="stream seed (training used another)")
    parser.add_argument("--n", type=int, default=700)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--wide", action="store_true", help="the wide stream (synth:SEED:wide): varied clip length, "
                        "frame rate, frame shape, object size, travel and outline")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    engine = Engine.load(args.model, device=args.device)
    result = evaluate(engine, engine.processor, args.seed, args.n, args.batch_size, args.wide)
    flags = [f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
             for k, v in vars(args).items() if v is not False]
    result["command"] = "python bench/eval_synth_stream.py " + " ".join(flags)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))


if __name__ == "__main__":
    main()

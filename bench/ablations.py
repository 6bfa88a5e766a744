"""STAB ablations at small scale (issue: full STAB vs without GSTRA / LSTE / FSRA, and average pooling for LSD).

Every variant gets the same budget and the same data: the default model's recipe (SmolLM2-135M-Instruct + LoRA r32,
STAB and projector from scratch, `synth:1`) at a small scale (112 px canvas: 21 tokens per frame), the same number
of optimizer steps, then the held-out per-family accuracy of `bench/eval_synth_stream.py` (stream seed 999).
The variants train concurrently on one GPU (each its own `videopanda train` process).

    python bench/ablations.py --out /tmp/ablations --steps 400 --batch-size 32

Writes OUT/ablations.json and OUT/ablations.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS: dict[str, dict[str, object]] = {
    "full": {},
    "no_gstra": {"stab_use_gstra": False},
    "no_lste": {"stab_use_lste": False},
    "no_fsra": {"stab_use_fsra": False},
    "avgpool": {"stab_downsample": "avgpool"},
}
FAMILIES = ("count", "shape", "colour", "appearance", "order", "direction")


def build(folder: Path, overrides: dict[str, object], image_size: int) -> int:
    """A SmolLM2 + small-STAB model folder with random visual weights; returns the STAB parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from videopanda.configuration import variant_config
    from videopanda.modeling.videopanda import VideoPandaForCausalLM
    from videopanda.processing import VideoPandaProcessor
    from videopanda.weights import default_video_token_id, smollm2_dir

    llm = AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32)
    fields = {"image_size": image_size, "teacher_image_size": image_size // 2, **overrides}
    config = variant_config("videopanda-default", text_config=llm.config.to_dict(),
                            video_token_index=default_video_token_id(), **fields)
    torch.manual_seed(0)
    model = VideoPandaForCausalLM(config, language_model=llm)
    model.save_pretrained(folder)
    VideoPandaProcessor(AutoTokenizer.from_pretrained(smollm2_dir()), config).save_pretrained(folder)
    return sum(p.numel() for p in model.video_tower.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-minutes", type=float, default=6.0)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--workers", type=int, default=2, help="data workers per variant")
    parser.add_argument("--eval-n", type=int, default=600)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    names = args.variants.split(",")
    if unknown := [n for n in names if n not in VARIANTS]:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = {}
    for name in names:
        params[name] = build(out / name / "init", VARIANTS[name], args.image_size)
    procs = {}
    start = time.time()
    for name in names:
        cmd = [sys.executable, "-m", "videopanda", "train", "--model", str(out / name / "init"), "--data", "synth:1",
               "--out", str(out / name / "run"), "--steps", str(args.steps), "--max-minutes", str(args.max_minutes),
               "--batch-size", str(args.batch_size), "--lora-r", "32", "--lora-alpha", "64", "--lr", "3e-4",
               "--visual-lr", "1e-3", "--warmup-ratio", "0.05", "--num-workers", str(args.workers),
               "--save-every", "100000", "--log-every", "25", "--no-tensorboard"]
        log = (out / f"{name}.log").open("w")
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    codes = {name: p.wait() for name, p in procs.items()}
    train_s = time.time() - start
    results = {}
    for name in names:
        summary_path = out / name / "run" / "summary.json"
        if codes[name] != 0 or not summary_path.is_file():
            results[name] = {"error": f"training exited with {codes[name]}; see {name}.log"}
            continue
        summary = json.loads(summary_path.read_text())
        eval_path = out / name / "eval.json"
        subprocess.run([sys.executable, "bench/eval_synth_stream.py", "--model", str(out / name / "run" / "final"),
                        "--seed", "999", "--n", str(args.eval_n), "--batch-size", "50", "--out", str(eval_path)],
                       check=True, stdout=subprocess.DEVNULL)
        ev = json.loads(eval_path.read_text())
        results[name] = {"stab_params": params[name], "steps": summary["steps"], "final_loss": summary["final_loss"],
                         "overall": ev["overall_accuracy_without_caption"],
                         "per_family": {f: v["score"] for f, v in ev["per_family"].items()}}
    report = {"command": "python bench/ablations.py " + " ".join(sys.argv[1:]), "train_seconds": train_s,
              "setup": {"llm": "SmolLM2-135M-Instruct + LoRA r32", "data": "synth:1", "eval": "stream seed 999",
                        "image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps},
              "results": results}
    (out / "ablations.json").write_text(json.dumps(report, indent=2))
    lines = ["| variant | STAB params | steps | final loss | overall | " + " | ".join(FAMILIES) + " | caption F1 |",
             "|---" * (len(FAMILIES) + 6) + "|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} |")
            continue
        fam = " | ".join(f"{100 * r['per_family'].get(f, float('nan')):.1f}" for f in FAMILIES)
        lines.append(f"| {name} | {r['stab_params'] / 1e6:.2f}M | {r['steps']} | {r['final_loss']:.3f} | "
                     f"{100 * r['overall']:.1f} | {fam} | {r['per_family'].get('caption', float('nan')):.2f} |")
    (out / "ablations.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Multi-GPU finetune benchmark: one GPU vs `torchrun --fsdp` on N GPUs, at the same global batch.

It builds a LLaMA-shaped Video-Panda with random weights (`--size 1b`: hidden 2048, 16 layers, 16 heads, MLP 8192,
LLaMA's 32,000-row vocabulary, about 1.2B parameters in the LLM, plus the paper's STAB, that of the "videopanda-7b"
variant: width 1024, 448 px, 8 frames; `--size tiny`: the "videopanda-tiny" variant with the same vocabulary), trains
the finetune stage for `--steps` on the synthetic stream (`synth:SEED`) twice:

  * one process on one GPU, micro-batch `global / N` with `--grad-accum N`;
  * `torchrun --nproc_per_node N ... --fsdp`, micro-batch `global / N` per GPU;

and writes `OUT/multi_gpu_finetune.json`: both loss curves and their largest relative difference, tokens/s per GPU
(median over the steps after the first 20%), peak memory per GPU, wall time, and a reload check: the FSDP run's final
folder loads in one process on one device, holds every weight, is finite, is close to the one-GPU run's weights, and
its held-out loss (stream seed 999) sits next to the one-GPU run's and below the untrained model's.

The LLM's text comes through a byte-level tokenizer built here (no tokenizer download; the LLM keeps 32,000
embedding rows, as LLaMA, so the head costs what it costs there) and the paper's prompt format (`videopanda_v1`).
STAB dropout is 0 by default so that the curves differ only by numerics and by the STAB's BatchNorm statistics,
which each process takes over its own micro-batch (docs/training.md).

    python bench/multi_gpu_finetune.py --out "$OUT"                 # 2 GPUs, the 1B model, 50 steps, global 8
    python bench/multi_gpu_finetune.py --gpus 4 --global-batch 16 --out "$OUT"
    python bench/multi_gpu_finetune.py --cpu-smoke --out /tmp/mg    # this script's check on CPU: tiny, gloo, 5 steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout, installed or not
VOCAB = 32000  # LLaMA / Vicuna; the byte tokenizer uses the first 260 rows, the placeholder id is 32000
LLAMA = dict(vocab_size=VOCAB, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
# --size: (named variant, LLM fields that replace the variant's). "1b" is the paper's STAB ("videopanda-7b") around a
# narrower LLaMA; "tiny" is the test model ("videopanda-tiny"), with LLaMA's vocabulary as the 1b.
SIZES = {
    "1b": ("videopanda-7b", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                 num_attention_heads=16, num_key_value_heads=16)),
    "tiny": ("videopanda-tiny", {}),
}


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte) and <s>, </s>, <pad>, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    for special in ("<unk>", "<s>", "</s>", "<pad>"):
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def build_model(size: str, folder: Path, dropout: float) -> dict[str, int]:
    """Save a random-weight VideoPandaForCausalLM folder (model + tokenizer); returns parameter counts."""
    from videopanda import VideoPandaForCausalLM, VideoPandaProcessor
    from videopanda.configuration import variant_config

    variant, shape = SIZES[size]
    config = variant_config(variant, text_config={**shape, **LLAMA}, video_token_index=VOCAB, dropout=dropout,
                            prompt_format="videopanda_v1")
    torch.manual_seed(0)
    model = VideoPandaForCausalLM(config)
    counts = {"total": sum(p.numel() for p in model.parameters()),
              "llm": sum(p.numel() for p in model.language_model.parameters())}
    counts["stab_and_projector"] = counts["total"] - counts["llm"]
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    VideoPandaProcessor.from_pretrained(folder)  # the folder is complete
    return counts


def train(args: argparse.Namespace, model: Path, out: Path, nproc: int, fsdp: bool) -> dict:
    """One training run as the user would launch it; returns its curve, speed, memory and wall time."""
    micro = args.global_batch // args.gpus
    argv = ["train", "--stage", "finetune", "--data", f"synth:{args.seed}", "--model", str(model), "--out", str(out),
            "--steps", str(args.steps), "--batch-size", str(micro), "--grad-accum", str(args.gpus // nproc),
            "--lr", str(args.lr), "--visual-lr", str(args.lr), "--warmup-ratio", "0.1", "--log-every", "1",
            "--save-every", str(args.steps), "--num-workers", str(args.num_workers), "--no-tensorboard"]
    argv += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    argv += ["--fsdp"] if fsdp else []
    launch = [sys.executable, "-m", "videopanda"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m",
        "videopanda"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if nproc == 1 and not args.cpu_smoke:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    if args.cpu_smoke:
        env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (out.parent / f"{out.name}.log").open("w") as log:
        done = subprocess.run([*launch, *argv], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode:
        tail = (out.parent / f"{out.name}.log").read_text()[-3000:]
        raise SystemExit(f"training run {out.name} failed ({done.returncode}):\n{tail}")
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    steady = records[len(records) // 5:] or records
    return {"command": " ".join([*launch, *argv]), "processes": nproc, "fsdp": fsdp, "micro_batch": micro,
            "grad_accum": args.gpus // nproc, "loss": [r["loss"] for r in records],
            # the log's tokens_per_s counts rank 0's tokens times the process count, per second
            "tokens_per_s_per_gpu": statistics.median(r["tokens_per_s"] for r in steady) / nproc,
            "peak_memory_gib_per_gpu": summary.get("peak_memory_gib"), "wall_s": round(wall, 1),
            "final": summary["final"]}


def reload_check(initial: Path, one: Path, sharded: Path, device: torch.device, n: int = 8) -> dict:
    """Load each final folder in this one process, on one device: complete, finite, close, and its held-out loss."""
    from videopanda import VideoPandaForCausalLM, VideoPandaProcessor
    from videopanda.data.dataset import collate
    from videopanda.data.synth_stream import SynthQAStream

    processor = VideoPandaProcessor.from_pretrained(sharded)
    stream = SynthQAStream(processor, seed=999)
    batch = collate([stream[i] for i in range(n)], pad_id=processor.tokenizer.pad_token_id)
    inputs = {k: batch[k].to(device) for k in ("input_ids", "labels", "attention_mask", "pixel_values")}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    result, states = {}, {}
    for name, folder in (("initial", initial), ("one_gpu", one), ("fsdp", sharded)):
        model = VideoPandaForCausalLM.from_pretrained(folder).to(device).eval()
        state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
        with torch.no_grad(), autocast:
            loss = float(model(**inputs).loss)
        result[name] = {"heldout_loss": loss, "all_finite": all(bool(v.isfinite().all()) for v in state.values())}
        states[name] = state
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    a, b = states["one_gpu"], states["fsdp"]
    result["same_keys_as_initial"] = set(b) == set(states["initial"]) == set(a)
    # parameters only: BatchNorm running statistics are per process (the FSDP folder holds rank 0's)
    weights = [k for k in a if "running_" not in k and "num_batches_tracked" not in k]
    rel = {k: float((b[k] - a[k]).norm() / a[k].norm().clamp(min=1e-12)) for k in weights}
    worst = max(rel, key=rel.get)
    result["max_relative_weight_difference"] = {"key": worst, "value": rel[worst]}
    moved = {k: float((a[k] - states["initial"][k]).norm() / states["initial"][k].norm().clamp(min=1e-12))
             for k in weights}
    result["median_relative_weight_change_by_training"] = statistics.median(moved.values())
    result["ok"] = (result["same_keys_as_initial"] and result["fsdp"]["all_finite"]
                    and result["fsdp"]["heldout_loss"] < result["initial"]["heldout_loss"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", str(REPO / "bench/results/multi_gpu_finetune")))
    parser.add_argument("--work", default="/tmp/videopanda_multi_gpu", help="model folder and run outputs")
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--dropout", type=float, default=0.0, help="STAB dropout of the random model")
    parser.add_argument("--seed", type=int, default=1, help="synthetic stream seed")
    parser.add_argument("--num-workers", type=int, default=6, help="DataLoader workers per process")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="check this script on CPU: --size tiny, 5 steps, global batch 4, gloo, no workers")
    args = parser.parse_args()
    if args.cpu_smoke:
        args.size, args.steps, args.global_batch, args.num_workers = "tiny", 5, 4, 0
    if args.global_batch % args.gpus:
        parser.error(f"--global-batch {args.global_batch} is not a multiple of --gpus {args.gpus}")
    if not args.cpu_smoke and torch.cuda.device_count() < args.gpus:
        parser.error(f"{args.gpus} GPUs asked for, {torch.cuda.device_count()} visible (--cpu-smoke for a CPU check)")
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = work / f"model-{args.size}"
    params = build_model(args.size, model, args.dropout)
    print(f"model: {params}", flush=True)
    one = train(args, model, work / "one_gpu", 1, fsdp=False)
    print(f"1 process: {one['wall_s']} s, {one['tokens_per_s_per_gpu']:.0f} tokens/s", flush=True)
    sharded = train(args, model, work / f"fsdp_{args.gpus}", args.gpus, fsdp=True)
    print(f"{args.gpus} processes (FSDP): {sharded['wall_s']} s, {sharded['tokens_per_s_per_gpu']:.0f} tokens/s/GPU",
          flush=True)
    curve_a, curve_b = torch.tensor(one["loss"]), torch.tensor(sharded["loss"])
    device = torch.device("cpu" if args.cpu_smoke else "cuda:0")
    report = {
        "argv": sys.argv, "torch": torch.__version__,
        "device": "cpu (gloo)" if args.cpu_smoke else [torch.cuda.get_device_name(i) for i in range(args.gpus)],
        "size": args.size, "parameters": params, "steps": args.steps, "global_batch": args.global_batch,
        "runs": {"one_gpu": one, f"fsdp_{args.gpus}_gpus": sharded},
        "loss_max_relative_difference": float(((curve_b - curve_a).abs() / curve_a.abs()).max()),
        "throughput_scaling": sharded["tokens_per_s_per_gpu"] * args.gpus / one["tokens_per_s_per_gpu"],
        "reload_on_one_device": reload_check(model, Path(one["final"]), Path(sharded["final"]), device),
    }
    name = "multi_gpu_finetune_cpu_smoke.json" if args.cpu_smoke else "multi_gpu_finetune.json"
    (out / name).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("loss_max_relative_difference", "throughput_scaling",
                                             "reload_on_one_device")}, indent=2))
    return 0 if report["reload_on_one_device"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

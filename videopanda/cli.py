"""The `videopanda` command. `COMMANDS` is its table: each row gives a sub-command's words, its function (whose
docstring is the help), its flags and its examples; `build_parser` makes the parser from the rows.

Bad input (a missing or broken video, a bad model folder, a question that does not fit) prints one line starting
with "error:" on stderr and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .eval import commands as eval_commands  # light: torch is imported when a command runs
from .flags import (
    Command,
    UserError,
    add_dataclass_flags,
    add_device_flags,
    add_model_source_flags,
    add_speed_flags,
    check_generation,
    run,
)
from .flags import build_parser as _build_parser
from .serve import commands as serve_commands  # light: fastapi, uvicorn and gradio are imported when a command runs

EPILOG = """examples:
  videopanda ask clip.mp4 "What is the man doing?"
  videopanda ask clip.mp4 "..." --model ./Video-Panda-7B/videopanda_fitu --device cuda --dtype bfloat16
  videopanda ask clip.mp4 "How many objects are there?" --json
  videopanda ask clip.mp4 "..." --model jh-yi/Video-Panda-7B --device cuda   # the released 7B, from the hub
  videopanda chat clip.mp4
  videopanda convert jh-yi/Video-Panda-7B ./videopanda-7b   # our layout: Auto classes, push_to_hub
  videopanda data synth --out data/synth --n 2000 --seed 0
  videopanda serve --media-dir ~/videos          # OpenAI-compatible API on http://127.0.0.1:8000/v1
  videopanda demo                                # chat about a video in the browser, http://127.0.0.1:7860
  videopanda bench --device cpu --out bench/results/cpu.json   # speed and memory, see docs/speed.md
"""


def _video_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ask and chat: which model, how to sample and how long, where to run, how fast."""
    add_model_source_flags(p)
    p.add_argument("--frames", type=int, default=None, help="frames sampled per video (default: the model's, 8)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, as the paper (default: %(default)s)")
    add_device_flags(p)
    add_speed_flags(p, "static KV cache + compiled (CUDA-graph) decoding and compiled element-wise ops: the first "
                       "answer pays a one-time compilation (~1-2 min for a 7B), later ones are 4-6x faster (GPU; see "
                       "docs/speed.md)")


def ask_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="video file (mp4, mkv, webm, avi, mov, gif) or image (jpg, png, ...)")
    p.add_argument("question")
    _video_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (answer and stats), no streaming")


def chat_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="video file or image")
    _video_flags(p)


def _read(args: argparse.Namespace):
    """Check the arguments and decode the video before loading any model, so bad input fails in a second."""
    from .video import load_visual

    check_generation(frames=args.frames, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     dtype=args.dtype)
    from .runtime import resolve_device

    resolve_device(args.device)
    return load_visual(args.video, args.frames or 8)


def _load(args: argparse.Namespace):
    from .engine import Engine
    from .weights import resolve_model

    source = resolve_model(args.model, subfolder=args.subfolder, revision=args.revision)  # downloads, with progress
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # transformers' "loading weights" bars
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, quantization=args.load_in, source=source,
                         decoding=_decoding(args))
    if args.frames is not None:
        engine.processor.config.num_frames = args.frames
    if source.kind == "default":
        print("note: the bundled default model was trained on synthetic clips of moving shapes only; for real footage "
              "use the released 7B (--model jh-yi/Video-Panda-7B)", file=sys.stderr)
    if not engine.visual_weights_trained:
        print("note: the default model's visual weights (STAB + projector) are untrained in this version, so its "
              "answers do not depend on the video yet", file=sys.stderr)
    return engine


SOURCE_FIELDS = ("name", "kind", "folder", "repo_id", "subfolder", "revision")


def _decoding(args: argparse.Namespace) -> str:
    return "compiled" if getattr(args, "compile", False) else "auto"


def cmd_ask(args: argparse.Namespace) -> int:
    """Answer one question about a video (or an image); streams the answer unless --json."""
    frames = _read(args)
    from transformers import TextStreamer

    from .video import is_image_path

    engine = _load(args)
    processor = engine.processor
    streamer = None if args.json else TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = engine.answer(frames, args.question, image=is_image_path(args.video),
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, streamer=streamer)
    if args.json:
        print(json.dumps({"answer": result.text, "question": args.question, "video": str(args.video),
                          "model": str(args.model), "frames": processor.config.num_frames,
                          "visual_tokens": result.visual_tokens, "prompt_tokens": result.prompt_tokens,
                          "new_tokens": result.new_tokens, "seconds": round(result.seconds, 3),
                          "visual_weights_trained": engine.visual_weights_trained,
                          "source": {k: v for k, v in engine.loading_report.items() if k in SOURCE_FIELDS}}))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Multi-turn chat about one video: type a question, get an answer; /reset clears the history, /exit quits."""
    frames = _read(args)
    from transformers import TextStreamer

    from .engine import ContextLengthError
    from .video import is_image_path

    engine = _load(args)
    processor = engine.processor
    history: list[tuple[str, str]] = []
    interactive = sys.stdin.isatty()
    print(f"chatting about {args.video}; /reset clears the history, /exit or Ctrl-D quits", file=sys.stderr)
    while True:
        if interactive:
            print(">>> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return 0
        question = line.strip()
        if not question:
            continue
        if question == "/reset":
            history.clear()
            continue
        streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        try:
            result = engine.answer(frames, question, history, image=is_image_path(args.video),
                                   max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                   streamer=streamer)
        except ContextLengthError as err:
            print(f"error: {err}; /reset starts over", file=sys.stderr)
            continue
        history.append((question, result.text))


def cmd_convert(args: argparse.Namespace) -> int:
    """Write a checkpoint (official folder, hub id, ours or the bundled default) as one of our folders: safetensors,
    our config.json and the processor's files, loadable with from_pretrained and the Auto classes."""
    import torch

    from .modeling.videopanda import VideoPandaForCausalLM
    from .processing import VideoPandaProcessor
    from .runtime import resolve_dtype
    from .weights import resolve_model, verify_saved

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} exists and is not empty; pass --overwrite to replace what it holds")
    source = resolve_model(args.model, subfolder=args.subfolder, revision=args.revision)
    dtype = "auto" if args.dtype == "auto" else resolve_dtype(args.dtype, torch.device("cpu"))
    model = VideoPandaForCausalLM.from_pretrained(source, dtype=dtype)
    processor = VideoPandaProcessor.from_pretrained(source.folder or source.name)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    checked = verify_saved(out, model)  # reread tensor by tensor: the folder holds exactly these weights
    print(json.dumps({"source": model.loading_report, "out": str(out), "tensors": checked,
                      "dtype": str(model.dtype).removeprefix("torch.")}, indent=2))
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    """Render a synthetic video-QA data set (train/val/test splits and an MSVD-QA-style test set)."""
    from .data.synth import generate

    summary = generate(args.out, args.n, args.seed, num_frames=args.frames, size=args.size, fps=args.fps,
                       workers=args.workers)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a stage (prealign, pretrain, finetune) on LLaVA-format video QA data; torchrun for many processes."""
    from .train.args import TrainArgs
    from .train.recipe import train

    fields = {f: getattr(args, f) for f in TrainArgs.__dataclass_fields__}
    summary = train(TrainArgs(**fields))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Speed benchmarks: STAB vs a ViT-L/14 encoder, time to first token, decode speed, answer latency, eval
    answers/s and peak memory; writes one JSON (device, versions, command, every measurement)."""
    from .bench import run_from_args

    summary = run_from_args(args)
    if not args.quiet:
        print(json.dumps(summary, indent=2))
    return 0


def convert_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="official checkpoint folder, hub id (jh-yi/Video-Panda-7B), one of our folders or "
                                 "'videopanda-default'")
    p.add_argument("out", help="folder to write (refused if it exists and is not empty, unless --overwrite)")
    p.add_argument("--subfolder", default=None, help="folder inside the model folder or hub repo")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit of a hub id")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="dtype of the written weights (default: %(default)s, the checkpoint's own)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")


def train_flags(p: argparse.ArgumentParser) -> None:
    from .train.args import TrainArgs  # standard library only: --help stays instant

    add_dataclass_flags(p, TrainArgs)


def synth_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, required=True, help="number of clips")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (default: %(default)s)")
    p.add_argument("--size", type=int, default=128, help="frame side in pixels (default: %(default)s)")
    p.add_argument("--fps", type=int, default=8, help="frame rate (default: %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")


def bench_flags(p: argparse.ArgumentParser) -> None:
    from .bench import add_arguments

    add_arguments(p)


# The command table: every sub-command's place, function (its docstring is the help), flags and examples.
COMMANDS: tuple[Command, ...] = (
    Command(("ask",), cmd_ask, ask_flags,
            '  videopanda ask clip.mp4 "What is the man doing?"\n'
            '  videopanda ask clip.mp4 "How many objects are there?" --json\n'
            '  videopanda ask clip.mp4 "..." --model jh-yi/Video-Panda-7B --device cuda   # the released 7B\n'),
    Command(("chat",), cmd_chat, chat_flags, "  videopanda chat clip.mp4\n"),
    Command(("convert",), cmd_convert, convert_flags,
            "  videopanda convert jh-yi/Video-Panda-7B ./videopanda-7b-fitu\n"
            "  videopanda convert ./Video-Panda-7B/videopanda_prtr1 ./videopanda-7b-prtr1 --dtype bfloat16\n"),
    Command(("data", "synth"), cmd_data_synth, synth_flags,
            "  videopanda data synth --out data/synth --n 2000 --seed 0\n"),
    Command(("train",), cmd_train, train_flags,
            "  videopanda train --stage finetune --data data/synth/train.json --out runs/default --lora-r 32 "
            "--steps 2000\n"),
    *eval_commands.COMMANDS,
    *serve_commands.COMMANDS,
    Command(("bench",), cmd_bench, bench_flags,
            "  videopanda bench --device cpu --out bench/results/cpu_default.json\n"
            "  videopanda bench --device cuda --llm default-random,7b-random --compile \\\n"
            "      --out bench/results/h100.json\n"),
)
GROUPS = {"data": "data sets: synth", "eval": eval_commands.EVAL_HELP}


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(COMMANDS, prog="videopanda", description="Video-Panda: encoder-free video-language model.",
                         epilog=EPILOG, groups=GROUPS)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

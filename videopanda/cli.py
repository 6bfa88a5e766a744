"""The `videopanda` command. Sub-commands are registered in `COMMANDS`; each has its own --help.

Bad input (a missing or broken video, a bad model folder, a question that does not fit) prints one line starting
with "error:" on stderr and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .eval import commands as eval_commands  # light: torch is imported when a command runs
from .flags import UserError, add_model_source_flags, add_speed_flags, run
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


def _add_model_args(p: argparse.ArgumentParser) -> None:
    add_model_source_flags(p)
    p.add_argument("--frames", type=int, default=None, help="frames sampled per video (default: the model's, 8)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, as the paper (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
    p.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16 (default: %(default)s)")
    add_speed_flags(p, "static KV cache + compiled (CUDA-graph) decoding and compiled element-wise ops: the first "
                       "answer pays a one-time compilation (~1-2 min for a 7B), later ones are 4-6x faster (GPU; see "
                       "docs/speed.md)")


def _read(args: argparse.Namespace):
    """Check the arguments and decode the video before loading any model, so bad input fails in a second."""
    from .video import load_visual

    if args.frames is not None and not 1 <= args.frames <= 256:
        raise UserError(f"--frames must be between 1 and 256, got {args.frames}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 0 <= args.temperature <= 2:  # the server's range (OpenAI's)
        raise UserError(f"--temperature must be between 0 (greedy) and 2, got {args.temperature}")
    from .inference import resolve_device

    resolve_device(args.device)
    if args.dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
        raise UserError(f"--dtype must be auto, float32, bfloat16 or float16; got {args.dtype!r}")
    return load_visual(args.video, args.frames or 8)


def _load(args: argparse.Namespace):
    from . import inference
    from .weights import resolve_model

    source = resolve_model(args.model, subfolder=args.subfolder, revision=args.revision)  # downloads, with progress
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # transformers' "loading weights" bars
    model, processor = inference.load(args.model, device=args.device, dtype=args.dtype, quantization=args.load_in,
                                      source=source)
    if args.frames is not None:
        processor.config.num_frames = args.frames
    if source.kind == "default":
        print("note: the bundled default model was trained on synthetic clips of moving shapes only; for real footage "
              "use the released 7B (--model jh-yi/Video-Panda-7B)", file=sys.stderr)
    if not model.visual_weights_trained:
        print("note: the default model's visual weights (STAB + projector) are untrained in this version, so its "
              "answers do not depend on the video yet", file=sys.stderr)
    return model, processor


SOURCE_FIELDS = ("name", "kind", "folder", "repo_id", "subfolder", "revision")


def _decoding(args: argparse.Namespace) -> str:
    return "compiled" if getattr(args, "compile", False) else "auto"


def cmd_ask(args: argparse.Namespace) -> int:
    """Answer one question about a video (or an image); streams the answer unless --json."""
    frames = _read(args)
    from transformers import TextStreamer

    from . import inference
    from .video import is_image_path

    model, processor = _load(args)
    streamer = None if args.json else TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = inference.answer(model, processor, frames, args.question, image=is_image_path(args.video),
                              max_new_tokens=args.max_new_tokens, temperature=args.temperature, streamer=streamer,
                              decoding=_decoding(args))
    if args.json:
        print(json.dumps({"answer": result.text, "question": args.question, "video": str(args.video),
                          "model": str(args.model), "frames": processor.config.num_frames,
                          "visual_tokens": result.visual_tokens, "prompt_tokens": result.prompt_tokens,
                          "new_tokens": result.new_tokens, "seconds": round(result.seconds, 3),
                          "visual_weights_trained": model.visual_weights_trained,
                          "source": {k: v for k, v in model.loading_report.items() if k in SOURCE_FIELDS}}))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Multi-turn chat about one video: type a question, get an answer; /reset clears the history, /exit quits."""
    frames = _read(args)
    from transformers import TextStreamer

    from . import inference
    from .video import is_image_path

    model, processor = _load(args)
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
            result = inference.answer(model, processor, frames, question, history, image=is_image_path(args.video),
                                      max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                      streamer=streamer, decoding=_decoding(args))
        except inference.ContextLengthError as err:
            print(f"error: {err}; /reset starts over", file=sys.stderr)
            continue
        history.append((question, result.text))


def cmd_convert(args: argparse.Namespace) -> int:
    """Write a checkpoint (official folder, hub id, ours or the bundled default) as one of our folders: safetensors,
    our config.json and the processor's files, loadable with from_pretrained and the Auto classes."""
    import torch

    from . import inference
    from .modeling.videopanda import VideoPandaForCausalLM
    from .processing import VideoPandaProcessor
    from .weights import resolve_model, verify_saved

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} exists and is not empty; pass --overwrite to replace what it holds")
    source = resolve_model(args.model, subfolder=args.subfolder, revision=args.revision)
    dtype = "auto" if args.dtype == "auto" else inference.resolve_dtype(args.dtype, torch.device("cpu"))
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


def _dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --flag per dataclass field; the attribute docstrings become the help text."""
    import ast
    import dataclasses
    import inspect

    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {a.target.id: b.value.value for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        kind = str(f.type)
        help_text = docs.get(f.name, "") + ("" if required else " (default: %(default)s)")
        if kind == "bool" and f.default:  # on by default: --flag / --no-flag
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=True, help=help_text)
        elif kind == "bool":
            parser.add_argument(flag, action="store_true", help=help_text.replace(" (default: %(default)s)", ""))
        else:
            conv = int if kind == "int" else float if "float" in kind else str
            parser.add_argument(flag, dest=f.name, type=conv, default=default, required=required, help=help_text)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"ask": cmd_ask, "chat": cmd_chat,
                                                            "convert": cmd_convert,
                                                            "data synth": cmd_data_synth, "train": cmd_train,
                                                            "eval videoqa": eval_commands.cmd_videoqa,
                                                            "eval judge": eval_commands.cmd_judge,
                                                            "eval vcgbench": eval_commands.cmd_vcgbench,
                                                            "serve": serve_commands.cmd_serve,
                                                            "demo": serve_commands.cmd_demo, "bench": cmd_bench}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videopanda", description="Video-Panda: encoder-free video-language model.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ask = sub.add_parser("ask", help=cmd_ask.__doc__, description=cmd_ask.__doc__)
    ask.add_argument("video", help="video file (mp4, mkv, webm, avi, mov, gif) or image (jpg, png, ...)")
    ask.add_argument("question")
    _add_model_args(ask)
    ask.add_argument("--json", action="store_true", help="print one JSON object (answer and stats), no streaming")
    ask.set_defaults(func=cmd_ask)

    chat = sub.add_parser("chat", help=cmd_chat.__doc__, description=cmd_chat.__doc__)
    chat.add_argument("video", help="video file or image")
    _add_model_args(chat)
    chat.set_defaults(func=cmd_chat)

    convert = sub.add_parser("convert", help=cmd_convert.__doc__.split(":")[0], description=cmd_convert.__doc__,
                             epilog="examples:\n  videopanda convert jh-yi/Video-Panda-7B ./videopanda-7b-fitu\n"
                                    "  videopanda convert ./Video-Panda-7B/videopanda_prtr1 ./videopanda-7b-prtr1 "
                                    "--dtype bfloat16",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    convert.add_argument("model", help="official checkpoint folder, hub id (jh-yi/Video-Panda-7B), one of our folders "
                                       "or 'videopanda-default'")
    convert.add_argument("out", help="folder to write (refused if it exists and is not empty, unless --overwrite)")
    convert.add_argument("--subfolder", default=None, help="folder inside the model folder or hub repo")
    convert.add_argument("--revision", default=None, help="hub branch, tag or commit of a hub id")
    convert.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                         help="dtype of the written weights (default: %(default)s, the checkpoint's own)")
    convert.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    convert.set_defaults(func=cmd_convert)

    from .train.args import TrainArgs

    train = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__,
                           epilog="example: videopanda train --stage finetune --data data/synth/train.json "
                                  "--out runs/default --lora-r 32 --steps 2000")
    _dataclass_flags(train, TrainArgs)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluation: videoqa, judge, vcgbench")
    ev_sub = ev.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)
    eval_commands.register(ev_sub, videoqa=True)
    serve_commands.register(sub)

    from .bench import add_arguments as add_bench_args

    bench = sub.add_parser("bench", help=cmd_bench.__doc__.split(";")[0], description=cmd_bench.__doc__,
                           epilog="examples:\n  videopanda bench --device cpu --out bench/results/cpu_default.json\n"
                                  "  videopanda bench --device cuda --llm default-random,7b-random --compile "
                                  "--out bench/results/h100.json",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(bench)
    bench.set_defaults(func=cmd_bench)

    data = sub.add_parser("data", help="data sets: synth")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    synth = data_sub.add_parser("synth", help=cmd_data_synth.__doc__, description=cmd_data_synth.__doc__)
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--n", type=int, required=True, help="number of clips")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    synth.add_argument("--frames", type=int, default=16, help="frames per clip (default: %(default)s)")
    synth.add_argument("--size", type=int, default=128, help="frame side in pixels (default: %(default)s)")
    synth.add_argument("--fps", type=int, default=8, help="frame rate (default: %(default)s)")
    synth.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    synth.set_defaults(func=cmd_data_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

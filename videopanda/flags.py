"""What every sub-command shares: the command table's row type and the parser built from rows, the flag groups that
name a model and its speed options, one flag per dataclass field, the checks of generation settings, and how a command
runs (one `error:` line and exit status 2 for input the user can fix, no traceback). Below cli, eval and serve, so
that each can be run on its own (`python -m videopanda.eval.commands ...`) from the same rows.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
MAX_FRAMES = 256


class UserError(ValueError):
    """Raised for input the user can fix; printed as one line."""


# -- the command table -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One row of the command table: where it sits, what runs, which flags it takes.

    `path` is the words after `videopanda` ("eval", "videoqa"); `flags` adds the command's arguments to its parser;
    the help line is the first sentence of `run`'s docstring and the description the whole docstring."""

    path: tuple[str, ...]
    run: Callable[[argparse.Namespace], int]
    flags: Callable[[argparse.ArgumentParser], None]
    examples: str = ""

    @property
    def name(self) -> str:
        return " ".join(self.path)

    @property
    def description(self) -> str:
        return inspect.cleandoc(self.run.__doc__ or "")

    @property
    def help(self) -> str:
        return self.description.split("\n\n")[0].replace("\n", " ").split("; ")[0].split(": ")[0].rstrip(".")


def build_parser(commands: Sequence[Command], *, prog: str, description: str, epilog: str = "",
                 groups: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one sub-parser per row (nested for two-word paths; `groups` holds the help of the
    first word of those). `args.func` is the row's `run`."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and warnings")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    nested: dict[str, argparse._SubParsersAction] = {}
    for command in commands:
        where = top
        for depth, word in enumerate(command.path[:-1]):
            if word not in nested:
                group = top.add_parser(word, help=(groups or {}).get(word, ""))
                nested[word] = group.add_subparsers(dest=f"{word}_command", metavar=f"{word.upper()}_COMMAND",
                                                    required=True)
            where = nested[word]
        examples = f"examples:\n{command.examples}" if command.examples else None
        sub = where.add_parser(command.path[-1], help=command.help, description=command.description,
                               epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter)
        command.flags(sub)
        sub.set_defaults(func=command.run)
    return parser


# -- flag groups -------------------------------------------------------------------------------------------------------
def add_model_source_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--model, --subfolder and --revision: the bundled model, a checkpoint folder or a hub id."""
    p.add_argument("--model", default="videopanda-default",
                   help="'videopanda-default' (bundled, CPU-friendly), a folder saved by videopanda, an official "
                        "Video-Panda checkpoint folder, or a Hugging Face hub id of either, e.g. jh-yi/Video-Panda-7B "
                        "(default: %(default)s)")
    p.add_argument("--subfolder", default=None,
                   help="folder inside the --model folder or hub repo (jh-yi/Video-Panda-7B: videopanda_fitu, the "
                        "fine-tuned weights, unless videopanda_prtr1 is given)")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit of a hub id (default: main)")


def add_device_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup, device_help: str = "") -> None:
    """--device and --dtype."""
    p.add_argument("--device", default="auto",
                   help=device_help or "auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
    p.add_argument("--dtype", default="auto",
                   help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16 (default: %(default)s)")


def add_speed_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup, compile_help: str) -> None:
    """--load-in and --compile, shared by ask/chat and eval (each says what compiling costs it)."""
    p.add_argument("--load-in", choices=("8bit", "4bit"), default=None,
                   help="quantize the LLM with bitsandbytes while loading (checkpoint folders such as the 7B; the "
                        "STAB and projector stay 16-bit); needs pip install 'videopanda[quant]'")
    p.add_argument("--compile", action="store_true", help=compile_help)


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --kebab-case flag per dataclass field, typed by its annotation (`int | None` is an int); the attribute
    docstrings are the help texts. A field without a default is a required flag; a bool that defaults to True gets
    --flag/--no-flag, one that defaults to False is a switch."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {a.target.id: " ".join(b.value.value.split()) for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}
    types = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(cls):
        flag, text = "--" + f.name.replace("_", "-"), docs.get(f.name, "")
        base = str(f.type).replace(" | None", "")
        required = f.default is dataclasses.MISSING
        if base == "bool":
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, default=bool(f.default), help=text)
            continue
        shown = "" if required or f.default is None else " (default: %(default)s)"
        parser.add_argument(flag, dest=f.name, type=types[base], default=None if required else f.default,
                            required=required, metavar=f.name.upper(), help=text + shown)


def dataclass_from_args(cls: type, args: argparse.Namespace) -> object:
    """The dataclass `cls` from the parsed flags `add_dataclass_flags` added (its checks run in `__post_init__`)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


# -- checks ------------------------------------------------------------------------------------------------------------
def check_generation(*, frames: int | None = None, max_new_tokens: int | None = None,
                     temperature: float | None = None, dtype: str | None = None,
                     max_tokens_flag: str = "--max-new-tokens") -> None:
    """The generation settings every command shares, checked before anything loads: one UserError line each."""
    if frames is not None and not 1 <= frames <= MAX_FRAMES:
        raise UserError(f"--frames must be between 1 and {MAX_FRAMES}, got {frames}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UserError(f"{max_tokens_flag} must be >= 1, got {max_new_tokens}")
    if temperature is not None and not 0 <= temperature <= 2:  # the server's range (OpenAI's)
        raise UserError(f"--temperature must be between 0 (greedy) and 2, got {temperature}")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")


# -- running a command -------------------------------------------------------------------------------------------------
def _quiet() -> None:
    """Library chatter (log lines, deprecation notes) would bury the answer; -v brings it back. Download progress bars
    stay (a hub id may mean gigabytes), and so do our own warnings."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"videopanda(\.|$)")  # ours say why a fast path was turned off
    logging.getLogger().setLevel(logging.ERROR)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, quiet the libraries unless -v, run the chosen sub-command, and turn user errors into one line."""
    args = parser.parse_args(argv)
    if not args.verbose:
        _quiet()
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # UserError, VideoDecodeError, CheckpointError are ValueErrors; full disks
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

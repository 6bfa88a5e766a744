"""What every sub-command shares: the flags that name a model and its speed options, and how a command runs (one
`error:` line and exit status 2 for input the user can fix, no traceback). Below cli, eval and serve, so that each can
be run on its own (`python -m videopanda.eval.commands ...`) without importing the others.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence


class UserError(Exception):
    """Raised for input the user can fix; printed as one line."""


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


def add_speed_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup, compile_help: str) -> None:
    """--load-in and --compile, shared by ask/chat and eval (each says what compiling costs it)."""
    p.add_argument("--load-in", choices=("8bit", "4bit"), default=None,
                   help="quantize the LLM with bitsandbytes while loading (checkpoint folders such as the 7B; the "
                        "STAB and projector stay 16-bit); needs pip install 'videopanda[quant]'")
    p.add_argument("--compile", action="store_true", help=compile_help)


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
    except (UserError, ValueError, OSError) as err:  # VideoDecodeError, CheckpointError are ValueErrors; full disks
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

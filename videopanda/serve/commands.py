"""The `serve` and `demo` sub-commands: their rows of the command table (`COMMANDS`, read by cli.py).

`python -m videopanda.serve.commands serve ...` runs the same sub-commands on their own (tests and the load test use
it). Nothing here imports fastapi, uvicorn or gradio until a command runs, so `--help` works without them.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from ..flags import Command, add_dataclass_flags, build_parser, dataclass_from_args, run
from . import DemoArgs, ServeArgs

if TYPE_CHECKING:
    from ..weights import ModelSource

__all__ = ["COMMANDS", "cmd_demo", "cmd_serve", "main"]

SERVE_EXAMPLES = """  videopanda serve                                    # bundled model on http://127.0.0.1:8000/v1
  videopanda serve --media-dir ~/videos --api-key s3cret
  videopanda serve --model ./Video-Panda-7B/videopanda_fitu --device cuda --dtype bfloat16 --max-batch 8
  curl http://127.0.0.1:8000/v1/models

Ask about a video, sent as a data: URL (any OpenAI client works too; see docs/serving.md):
  printf '{"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url":
    "data:video/mp4;base64,%s"}}, {"type": "text", "text": "How many objects are there?"}]}]}' \\
    "$(base64 -w0 clip.mp4)" > request.json
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d @request.json

With --media-dir DIR a request may name a file in DIR instead: {"url": "clip.mp4"} or "file:///abs/DIR/clip.mp4".
"""

DEMO_EXAMPLES = """  videopanda demo                                     # open http://127.0.0.1:7860 in a browser
  videopanda demo --model ./Video-Panda-7B/videopanda_fitu --device cuda --port 7861
"""


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve an OpenAI-compatible chat completions API about videos (POST /v1/chat/completions)."""
    settings = dataclass_from_args(ServeArgs, args)
    run_server = _optional("api", "run_server", "serve")
    source = _resolve_model(settings)
    if settings.api_key is None and os.environ.get("VIDEOPANDA_API_KEY"):
        settings.api_key = os.environ["VIDEOPANDA_API_KEY"]
    run_server(settings, source)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A web page to upload a video and chat about it, with streamed answers (Gradio)."""
    settings = dataclass_from_args(DemoArgs, args)
    run_demo = _optional("demo", "run_demo", "demo")
    run_demo(settings, _resolve_model(settings))
    return 0


def serve_flags(parser: argparse.ArgumentParser) -> None:
    add_dataclass_flags(parser, ServeArgs)


def demo_flags(parser: argparse.ArgumentParser) -> None:
    add_dataclass_flags(parser, DemoArgs)


COMMANDS = (Command(("serve",), cmd_serve, serve_flags, SERVE_EXAMPLES),
            Command(("demo",), cmd_demo, demo_flags, DEMO_EXAMPLES))


def _resolve_model(settings: ServeArgs | DemoArgs) -> ModelSource:
    """The model name resolved once, before anything loads: a name that is no checkpoint folder and no hub id is
    refused in one line, and a hub id is downloaded here, with progress bars."""
    from ..weights import resolve_model

    return resolve_model(settings.model, subfolder=settings.subfolder, revision=settings.revision)


def _optional(module: str, name: str, command: str) -> Any:
    """`name` from the sibling `module`, or a one-line error naming the missing package and the extra to install."""
    import importlib

    try:
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)
    except ImportError as err:
        raise ValueError(f"videopanda {command} needs the package {err.name!r}: "
                         f"pip install 'videopanda[{command}]'") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m videopanda.serve.commands [-v] serve|demo ...` is `videopanda [-v] serve|demo ...`."""
    return run(build_parser(COMMANDS, prog="videopanda", description="serve: the API; demo: the web page"), argv)


if __name__ == "__main__":
    sys.exit(main())

"""The `serve` and `demo` sub-commands: `register(subparsers)` adds them to the `videopanda` command.

`python -m videopanda.serve.commands serve ...` runs the same sub-commands on their own (tests and the load test use
it). Nothing here imports fastapi, uvicorn or gradio until a command runs, so `--help` works without them.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import sys
from typing import Any

from ..flags import run
from . import DemoArgs, ServeArgs

__all__ = ["cmd_demo", "cmd_serve", "main", "register"]

SERVE_EPILOG = """examples:
  videopanda serve                                    # bundled model on http://127.0.0.1:8000/v1
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

DEMO_EPILOG = """examples:
  videopanda demo                                     # open http://127.0.0.1:7860 in a browser
  videopanda demo --model ./Video-Panda-7B/videopanda_fitu --device cuda --port 7861
"""


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve an OpenAI-compatible chat completions API about videos (POST /v1/chat/completions)."""
    settings = _settings(ServeArgs, args)
    run_server = _optional("api", "run_server", "serve")
    if settings.api_key is None and os.environ.get("VIDEOPANDA_API_KEY"):
        settings.api_key = os.environ["VIDEOPANDA_API_KEY"]
    run_server(settings)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A web page to upload a video and chat about it, with streamed answers (Gradio)."""
    settings = _settings(DemoArgs, args)
    _optional("demo", "run_demo", "demo")(settings)
    return 0


def register(subparsers: Any) -> None:
    """Add `serve` and `demo` to the sub-parsers of the `videopanda` command (the result of `add_subparsers`)."""
    serve = subparsers.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__,
                                  epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_flags(serve, ServeArgs)
    serve.set_defaults(func=cmd_serve)
    demo = subparsers.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__,
                                 epilog=DEMO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_flags(demo, DemoArgs)
    demo.set_defaults(func=cmd_demo)


def _optional(module: str, name: str, command: str) -> Any:
    """`name` from the sibling `module`, or a one-line error naming the missing package and the extra to install."""
    import importlib

    try:
        return getattr(importlib.import_module(f"{__package__}.{module}"), name)
    except ImportError as err:
        raise ValueError(f"videopanda {command} needs the package {err.name!r}: "
                         f"pip install 'videopanda[{command}]'") from None


def _settings(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --kebab-case flag per dataclass field, typed by its annotation (`int | None` is an int); the attribute
    docstrings are the help texts."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {a.target.id: " ".join(b.value.value.split()) for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}
    types = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(cls):
        base = str(f.type).replace(" | None", "")
        if base == "bool":  # an off-by-default switch
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action="store_true",
                                help=docs.get(f.name, ""))
            continue
        shown = "" if f.default is None else " (default: %(default)s)"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=types[base], default=f.default,
                            metavar=f.name.upper(), help=docs.get(f.name, "") + shown)


def main(argv: list[str] | None = None) -> int:
    """`python -m videopanda.serve.commands [-v] serve|demo ...` is `videopanda [-v] serve|demo ...`."""
    parser = argparse.ArgumentParser(prog="videopanda", description="serve: the API; demo: the web page")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and warnings")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())

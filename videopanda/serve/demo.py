"""`videopanda demo`: a Gradio page to upload a video, watch it, and chat about it with streamed answers.

The page runs the model in this process (no API server in between). One question is answered at a time: the send
button and the Enter key share one concurrency slot ("model"), so two visitors queue instead of sharing the CPU.
Each browser session keeps its own chat history and its decoded video; a new upload starts a new chat.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..video import VideoDecodeError, load_video
from . import DemoArgs

if TYPE_CHECKING:  # the page module stays light: the engine (torch, transformers) is loaded by run_demo
    from ..engine import Engine
    from ..weights import ModelSource

__all__ = ["build_demo", "run_demo"]

MIB = 1 << 20
TITLE = "Video-Panda"
INTRO = "Upload a video, then ask about it."
DEFAULT_MODEL_NOTE = ("The bundled default model was trained on synthetic clips of moving shapes only: try *How many "
                      "objects are there?*, *What color is the circle?* or *Which way does the square move?* For real "
                      "footage, start the demo with `--model jh-yi/Video-Panda-7B`.")
_UPLOAD_CACHE = (3600, 3600)  # Gradio deletes uploaded files older than an hour, checking every hour


def build_demo(engine: Engine, args: DemoArgs) -> Any:
    """The `gr.Blocks` page around a loaded model (`Engine.load`)."""
    import gradio as gr

    processor = engine.processor
    num_frames = args.frames or processor.config.num_frames

    def decode(path: str, cache: dict[str, Any]) -> Any:
        if cache.get("path") != path:
            try:
                frames = load_video(path, num_frames)
            except VideoDecodeError as err:
                raise gr.Error(f"this video cannot be read: {err.reason}") from None
            cache.clear()
            cache.update(path=path, frames=frames)
        return cache["frames"]

    def new_video(path: str | None) -> tuple[list, list, dict]:
        return [], [], {}

    def respond(path: str | None, question: str, chat: list[dict], history: list[tuple[str, str]],
                cache: dict[str, Any]) -> Iterator[tuple[str, list[dict], list[tuple[str, str]]]]:
        question = (question or "").strip()
        if not path:
            raise gr.Error("Upload a video first.")
        if not question:
            raise gr.Error("Type a question about the video.")
        frames = decode(path, cache)
        chat = [*chat, {"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        yield "", chat, history
        text = ""
        for text in _stream_answer(engine, frames, question, history, args.max_tokens):
            chat[-1] = {"role": "assistant", "content": text}
            yield "", chat, history
        yield "", chat, [*history, (question, text)]

    with gr.Blocks(title=TITLE, delete_cache=_UPLOAD_CACHE, analytics_enabled=False) as page:
        default = engine.loading_report.get("kind") == "default"
        gr.Markdown(f"# {TITLE}\n{INTRO} {DEFAULT_MODEL_NOTE if default else ''}")
        history = gr.State([])
        cache = gr.State({})
        with gr.Row():
            with gr.Column(scale=1):
                video = gr.Video(label="Video", sources=["upload"], elem_id="video", height=360)
            with gr.Column(scale=1):
                chat = gr.Chatbot(label="Chat", elem_id="chat", height=360, buttons=["copy", "copy_all"])
                question = gr.Textbox(placeholder="Ask a question about the video and press Enter", show_label=False,
                                      elem_id="question", max_length=2000)
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("New chat", elem_id="clear")
        video.change(new_video, [video], [chat, history, cache], queue=False)
        clear.click(lambda: ([], []), None, [chat, history], queue=False)
        for event in (send.click, question.submit):
            event(respond, [video, question, chat, history, cache], [question, chat, history],
                  concurrency_limit=1, concurrency_id="model")
    return page


def _stream_answer(engine: Engine, frames: Any, question: str, history: list[tuple[str, str]],
                   max_tokens: int) -> Iterator[str]:
    """The answer so far, after each new piece: generation runs in a thread and feeds a TextIteratorStreamer."""
    import gradio as gr
    from transformers import TextIteratorStreamer

    from ..engine import ContextLengthError

    streamer = TextIteratorStreamer(engine.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["answer"] = engine.answer(frames, question, [tuple(t) for t in history],
                                              max_new_tokens=max_tokens, streamer=streamer)
        except Exception as err:  # shown on the page; the streamer must still end, or the page would wait
            outcome["error"] = err
            streamer.end()

    thread = threading.Thread(target=work, name="videopanda-demo-answer", daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text.strip()
    thread.join()
    if "error" in outcome:
        err = outcome["error"]
        message = f"{err}; press 'New chat' to start over" if isinstance(err, ContextLengthError) else err
        raise gr.Error(f"no answer: {message}")
    yield outcome["answer"].text


def run_demo(args: DemoArgs, source: ModelSource | None = None) -> None:
    """Load the model, then serve the page until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo
    import gradio  # noqa: F401  (fail before the slow model load if the extra is missing)
    from transformers.utils import logging as hf_logging

    from ..engine import Engine

    hf_logging.disable_progress_bar()
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, subfolder=args.subfolder,
                         revision=args.revision, source=source)
    if args.frames is not None:
        engine.processor.config.num_frames = args.frames
    page = build_demo(engine, args)
    print(f"demo of {args.model} at http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    page.queue(max_size=16).launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False,
                                   show_error=True, quiet=True, max_file_size=int(args.max_upload_mb * MIB),
                                   footer_links=[])

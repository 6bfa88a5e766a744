"""Tests of `videopanda serve`.

Fast: the --help texts, settings that fail before any model loads, and the path and upload checks on their own.

Slow (the real server in a subprocess, with the real bundled default model): one server for the whole module
(loading the model takes ~10 s), started with every guard on: an API key, a media folder, a 0.25 MiB upload limit,
room for 2 waiting requests and batches of up to 4. It must answer the official `openai` client (plain, streamed,
multi-turn, image), read files only inside the media folder, refuse bad input with the right 4xx and a clear
message, answer 503 when full, free a request's slot when its client goes away (streamed or not), keep no uploaded
file, and still be alive at the end.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "videopanda" / "assets" / "sample.mp4"
MODEL = "videopanda-default"
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
COUNT = "How many objects are there?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url(data: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def ask(url: str, question: str = COUNT, kind: str = "video_url") -> list[dict]:
    return [{"role": "user", "content": [{"type": kind, kind: {"url": url}}, {"type": "text", "text": question}]}]


class Server:
    """A `videopanda serve` subprocess; its log goes to a file (a pipe nobody reads could fill and block it)."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.tmpdir = tmp / "tmp"  # the server's TMPDIR: uploads are written here, and must not stay
        self.tmpdir.mkdir()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        cmd = [sys.executable, "-m", "videopanda.serve.commands", "serve", "--port", str(self.port), *args]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(self.tmpdir)})

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/v1/models", headers=AUTH, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        pytest.fail(f"the server did not answer within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def health(self) -> dict:
        return httpx.get(f"{self.base}/health", timeout=10).json()

    def post(self, body: dict | bytes, headers: dict | None = None) -> httpx.Response:
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        return httpx.post(f"{self.base}/v1/chat/completions", headers={**AUTH, **(headers or {})}, timeout=60,
                          **kwargs)

    def __enter__(self) -> Server:
        try:
            self.wait_ready()
        except BaseException:  # pytest.fail included: the process must not outlive a failed start
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """media/sample.mp4 (readable), and outside it a real video plus a symlink to it from inside."""
    root = tmp_path_factory.mktemp("serve")
    (root / "media").mkdir()
    (root / "media" / "sample.mp4").write_bytes(SAMPLE.read_bytes())
    (root / "secret.mp4").write_bytes(SAMPLE.read_bytes())  # decodable: only the path check can refuse it
    (root / "media" / "link.mp4").symlink_to(root / "secret.mp4")
    return root


@pytest.fixture(scope="module")
def server(media: Path) -> Iterator[Server]:
    with Server(media, "--model", MODEL, "--api-key", KEY, "--media-dir", str(media / "media"),
                "--max-upload-mb", "0.25", "--max-queue", "2", "--max-batch", "4", "--max-tokens", "256") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=f"{server.base}/v1", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def sample_url() -> str:
    return data_url(SAMPLE.read_bytes())


def error_of(response: httpx.Response) -> str:
    return response.json()["error"]["message"]


def run_commands(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "videopanda.serve.commands", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_help_texts() -> None:
    serve = run_commands("serve", "--help")
    assert serve.returncode == 0
    for words in ("--api-key", "--media-dir", "--max-upload-mb", "--max-queue", "--max-batch", "127.0.0.1",
                  "--max-connections", "--header-timeout", "--body-timeout", "(default: 256)", "(default: 10.0)",
                  "(default: 60.0)", "examples:", "videopanda serve --media-dir",
                  "curl http://127.0.0.1:8000/v1/chat/completions"):
        assert words in serve.stdout, words
    demo = run_commands("demo", "--help")
    assert demo.returncode == 0 and "--port" in demo.stdout and "(default: 7860)" in demo.stdout
    assert "videopanda demo" in demo.stdout


@pytest.mark.parametrize(("flags", "words"), [
    (["--media-dir", "/no/such/folder"], "--media-dir /no/such/folder: no such folder"),
    (["--max-queue", "0"], "--max-queue"),
    (["--max-upload-mb", "0"], "--max-upload-mb"),
    (["--model", "/no/such/model"], "/no/such/model: no such folder, and not a hub id"),
    (["--dtype", "int3"], "--dtype"),
    (["--max-connections", "0"], "--max-connections"),
    (["--header-timeout", "0"], "--header-timeout"),
    (["--body-timeout", "inf"], "--body-timeout"),
])
def test_bad_settings_fail_before_loading(flags: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    """In process (the same `main` that `python -m videopanda.serve.commands` runs): one error line each."""
    from videopanda.serve import commands

    assert commands.main(["-v", "serve", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1, err


def test_media_paths(tmp_path: Path) -> None:
    from videopanda.serve.errors import APIError
    from videopanda.serve.media import resolve_media_path

    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.mp4").write_bytes(b"x")
    (root / "inside.mp4").symlink_to(root / "sub" / "a.mp4")
    (tmp_path / "outside.mp4").write_bytes(b"x")
    (root / "escape.mp4").symlink_to(tmp_path / "outside.mp4")
    (root / "escape_dir").symlink_to(tmp_path)
    real = os.path.realpath(root / "sub" / "a.mp4")
    for ok in ("sub/a.mp4", "./sub/../sub/a.mp4", str(root / "sub" / "a.mp4"), f"file://{root}/sub/a.mp4",
               f"file://localhost{root}/sub/a.mp4", f"file://{root}/sub%2Fa.mp4", "inside.mp4"):
        assert resolve_media_path(ok, str(root)) == real, ok
    for bad, status in [("../outside.mp4", 403), (str(tmp_path / "outside.mp4"), 403), ("escape.mp4", 403),
                        ("escape_dir/outside.mp4", 403), ("/etc/passwd", 403), ("file:///etc/passwd", 403),
                        ("file://evil.example/x.mp4", 400), ("https://example.com/x.mp4", 400),
                        ("a\x00b.mp4", 400)]:
        with pytest.raises(APIError) as err:
            resolve_media_path(bad, str(root))
        assert err.value.status == status, (bad, err.value.message)
    with pytest.raises(APIError) as err:
        resolve_media_path("sub/a.mp4", None)
    assert err.value.status == 403 and "--media-dir" in err.value.message


def test_data_url_limits() -> None:
    from videopanda.serve.errors import APIError
    from videopanda.serve.media import decode_data_url

    assert decode_data_url(data_url(b"12345678"), 8) == ("video/mp4", b"12345678")
    assert decode_data_url("data:video/mp4;base64,MTIz\nNDU2", 8)[1] == b"123456"  # line breaks are allowed
    for url, limit, status in [(data_url(b"123456789"), 8, 413), (data_url(b"x" * 4000), 8, 413),
                               ("data:video/mp4;base64,!!!!", 8, 400), ("data:video/mp4,123", 8, 400)]:
        with pytest.raises(APIError) as err:
            decode_data_url(url, limit)
        assert err.value.status == status, url


@pytest.mark.slow
def test_models_and_api_key(server: Server, client: openai.OpenAI, sample_url: str) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{server.base}/v1/models", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(f"{server.base}/v1/models", headers=wrong, timeout=10).status_code == 401
    r = httpx.post(f"{server.base}/v1/chat/completions", json={"messages": ask(sample_url)}, timeout=10)
    assert r.status_code == 401 and "API key" in error_of(r)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="wrong", base_url=f"{server.base}/v1", max_retries=0).models.list()


@pytest.mark.slow
def test_answer(client: openai.OpenAI, sample_url: str) -> None:
    r = client.chat.completions.create(model=MODEL, messages=ask(sample_url), max_tokens=16)
    assert r.object == "chat.completion" and r.model == MODEL
    assert "three" in r.choices[0].message.content.lower()
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 500 and r.usage.completion_tokens >= 1  # the video's tokens are in the prompt


@pytest.mark.slow
def test_stream_sse_format(server: Server, sample_url: str) -> None:
    """The raw stream: OpenAI chunks (role first, then content, then finish_reason), usage, and `data: [DONE]`."""
    body = {"model": MODEL, "messages": ask(sample_url), "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "three" in text.lower()
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


@pytest.mark.slow
def test_multi_turn_streamed_with_openai_client(client: openai.OpenAI, sample_url: str) -> None:
    messages = [{"role": "system", "content": "ignored"}, *ask(sample_url), {"role": "assistant", "content": "three"},
                {"role": "user", "content": "What color is the circle?"}]
    stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True, max_tokens=16)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) >= 2 and "".join(pieces).strip()


@pytest.mark.slow
def test_image_url(client: openai.OpenAI) -> None:
    import av

    with av.open(str(SAMPLE)) as container:
        frame = next(container.decode(video=0)).to_image()
    png = io.BytesIO()
    frame.save(png, format="PNG")
    r = client.chat.completions.create(model=MODEL, messages=ask(data_url(png.getvalue(), "image/png"),
                                                                 kind="image_url"), max_tokens=8)
    assert r.choices[0].message.content.strip()


@pytest.mark.slow
def test_media_dir(server: Server, client: openai.OpenAI, media: Path) -> None:
    r = client.chat.completions.create(model=MODEL, messages=ask("sample.mp4"), max_tokens=16)
    assert "three" in r.choices[0].message.content.lower()
    refused = ["../secret.mp4", str(media / "secret.mp4"), "link.mp4", f"file://{media / 'secret.mp4'}",
               "/etc/passwd", "file:///etc/passwd", "sample.mp4/../../secret.mp4"]
    for url in refused:
        r = server.post({"messages": ask(url)})
        assert r.status_code == 403 and "outside the media folder" in error_of(r), url
    r = server.post({"messages": ask("http://127.0.0.1/clip.mp4")})
    assert r.status_code == 400 and "fetches nothing" in error_of(r)
    r = server.post({"messages": ask("missing.mp4")})
    assert r.status_code == 400 and "no such file" in error_of(r)


@pytest.mark.slow
def test_upload_limits(server: Server) -> None:
    """0.25 MiB decoded; the body may hold its base64 plus 1 MiB of text."""
    r = server.post({"messages": ask(data_url(os.urandom(300_000)))})
    assert r.status_code == 413 and "0.25 MiB" in error_of(r)
    r = server.post({"messages": ask(data_url(os.urandom(1_500_000)))})
    assert r.status_code == 413 and "request body" in error_of(r)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["truncated_mp4", "text", "empty"])
def test_bad_uploads(server: Server, cli_inputs, name: str) -> None:
    r = server.post({"messages": ask(data_url(Path(cli_inputs[name]).read_bytes()))})
    assert r.status_code == 400
    message = error_of(r)
    assert message.startswith("the uploaded video: ") and "/tmp" not in message  # the reason, not our temp path
    assert any(w in message for w in ("not a video file", "empty")), message


@pytest.mark.slow
def test_bad_requests(server: Server, sample_url: str) -> None:
    cases = [
        (b"{not json", 400, "not valid JSON"),
        ({"model": MODEL}, 422, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, 422, "type"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 422, "role"),
        ({"messages": ask("data:video/mp4;base64,@@@")}, 400, "base64"),
        ({"messages": ask("data:video/mp4,rawbytes")}, 400, "base64"),
        ({"messages": [{"role": "user", "content": "no video"}]}, 400, "exactly one video"),
        ({"messages": ask(sample_url) + [{"role": "user", "content": "again"}]}, 400, "alternate"),
        ({"messages": ask(sample_url, "")}, 400, "no text"),
        ({"messages": ask(sample_url), "n": 2}, 400, "not supported"),
        ({"messages": ask(sample_url), "max_tokens": 100000}, 400, "--max-tokens"),
        ({"messages": ask(sample_url), "temperature": -1}, 422, "temperature"),
        ({"messages": ask(sample_url), "model": "gpt-4o"}, 404, "does not exist"),
    ]
    for body, status, words in cases:
        r = server.post(body)
        assert r.status_code == status and words in error_of(r), (body if isinstance(body, bytes) else str(body)[:200],
                                                                  r.status_code, r.text[:300])
    assert server.health()["status"] == "ok"


@pytest.mark.slow
def test_queue_full_and_batching(server: Server, sample_url: str) -> None:
    """While a long request runs, 4 more arrive with room for 2 waiting: 2 get 503, and the 2 that waited are
    answered together in one batch when the long one ends."""
    before = server.health()
    results: list[httpx.Response] = []

    def one(**extra: object) -> None:
        results.append(server.post({"model": MODEL, "messages": ask(sample_url), "max_tokens": 8, **extra}))

    long = threading.Thread(target=one, kwargs={"max_tokens": 40, "ignore_eos": True})  # ~5 s on 2 CPU cores
    long.start()
    deadline = time.monotonic() + 30
    while server.health()["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in [*threads, long]:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 200, 200, 503, 503], codes
    busy = next(r for r in results if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "--max-queue" in error_of(busy)
    short = [r.json() for r in results if r.status_code == 200 and r.json()["usage"]["completion_tokens"] < 40]
    assert len(short) == 2 and all("three" in r["choices"][0]["message"]["content"] for r in short)
    after = server.health()
    assert after["requests"] - before["requests"] == 3 and after["rejected"] - before["rejected"] == 2
    assert after["batches"] - before["batches"] == 2  # the long request alone, then the two that waited together


def wait_idle(server: Server, since: float, limit: float = 60) -> dict:
    while time.monotonic() - since < limit:
        health = server.health()
        if health["running"] == 0 and health["waiting"] == 0:
            return health
        time.sleep(0.2)
    return server.health()


@pytest.mark.slow
def test_disconnect_frees_the_slot(server: Server, sample_url: str) -> None:
    """Requests that would run ~20 s (256 tokens, ignore_eos) are dropped by their clients, streamed after a few
    tokens and plain after 3 s: each time the worker is idle again within seconds, and the server answers."""
    body = {"model": MODEL, "messages": ask(sample_url), "max_tokens": 256, "ignore_eos": True}
    before = server.health()
    start = time.monotonic()
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", json={**body, "stream": True}, headers=AUTH,
                      timeout=60) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ") and '"content"' in line
            if seen >= 4:  # the role chunk and 3 tokens
                break
    health = wait_idle(server, start)
    assert health["running"] == 0 and health["cancelled"] == before["cancelled"] + 1
    assert time.monotonic() - start < 15

    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base}/v1/chat/completions", json=body, headers=AUTH, timeout=3)
    health = wait_idle(server, start)
    assert health["running"] == 0 and health["cancelled"] == before["cancelled"] + 2
    assert time.monotonic() - start < 15

    r = server.post({"model": MODEL, "messages": ask(sample_url), "max_tokens": 8})
    assert r.status_code == 200


@pytest.mark.slow
def test_server_survived_and_kept_no_upload(server: Server) -> None:
    assert server.proc.poll() is None
    assert server.health()["status"] == "ok"
    assert not [p.name for p in server.tmpdir.iterdir() if p.name.startswith("videopanda-upload-")]


def test_compile_flag_and_static_cache_worker_answers_the_same() -> None:
    """--compile is a switch of `serve` (the worker then decodes with Engine.generate(decoding="compiled")); on
    CPU the static-cache form of the same path must give the dynamic worker's answer for one job and a batch."""
    import torch

    from videopanda.engine import Engine
    from videopanda.serve.worker import _Job, _Worker
    from videopanda.video import load_video

    assert "--compile" in run_commands("serve", "--help").stdout
    engine = Engine.load(MODEL, device="cpu")
    processor = engine.processor
    pixels = processor.preprocess(load_video(str(SAMPLE)))

    def answers(decoding: str, questions: list[str]) -> list[str]:
        worker = _Worker(engine, processor, max_queue=4, max_batch=4, decoding=decoding)
        jobs = [_Job(stream=False, max_tokens=12, temperature=0.0, top_p=1.0, ignore_eos=False,
                     prompt=processor.build_prompt(q), pixels=pixels) for q in questions]
        worker._run(jobs)
        worker.close()
        return [j.result.result().text for j in jobs]

    questions = [COUNT, "What colour is the circle?"]
    with torch.inference_mode():
        assert answers("static", questions[:1]) == answers("auto", questions[:1])
        assert answers("static", questions) == answers("auto", questions)

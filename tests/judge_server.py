"""A real OpenAI-compatible judge server on 127.0.0.1 for the judge and benchmark tests, and its fixtures.

It answers /v1/chat/completions with deterministic verdicts, some 500s and some malformed replies (to exercise
retries and parsing) and counts the requests it sees.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeServer:
    """A deterministic OpenAI-compatible judge on 127.0.0.1 (see the module docstring); counts requests per prompt."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()  # user message -> requests
        self.bodies: list[dict] = []
        self.active = self.max_active = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                if self.headers.get("Authorization") == "Bearer bad-key":
                    return self._send(401, {"error": {"message": "invalid api key", "code": "invalid_api_key"}})
                status, content = server.respond(body)
                if content.startswith("RAW:"):  # a broken proxy's reply: not a chat completion at all
                    _, kind, text = content.split(":", 2)
                    return self._send_raw(kind, text.encode())
                if status != 200:
                    return self._send(status, {"error": {"message": "internal error"}})
                self._send(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

            def _send(self, status: int, payload: dict) -> None:
                self._send_raw("application/json", json.dumps(payload).encode(), status)

            def _send_raw(self, kind: str, data: bytes, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with self.lock:
            self.hits.clear()
            self.bodies.clear()
            self.active = self.max_active = 0

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    def respond(self, body: dict) -> tuple[int, str]:
        user = body["messages"][-1]["content"]
        with self.lock:
            self.hits[user] += 1
            n = self.hits[user]
            self.bodies.append(body)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if "SLOW" in user:
                time.sleep(0.2)
            if "FAIL500" in user or ("FLAKY" in user and n == 1):
                return 500, ""
            if "HTML" in user:
                return 200, "RAW:text/html:<html><body><h1>502 Bad Gateway</h1></body></html>"
            if "TRUNCJSON" in user:
                return 200, 'RAW:application/json:{"id": "chatcmpl-test", "choices": [{"index": 0, "mess'
            if "GARBLED" in user or ("GARBLE-ONCE" in user and n == 1):
                return 200, "I am not sure how to grade this."
            if '"pred"' not in user:  # a score-only rubric
                return 200, json.dumps({"score": min(5, user.count("zebra"))})
            answer = re.search(r"Correct answer: (.*)", user).group(1).strip().lower()
            pred = re.search(r"Predicted answer: (.*)", user).group(1).lower()
            verdict, score = ("yes", 5) if answer in pred else ("no", 1)
            if "PYDICT" in user:
                return 200, f"{{'pred': '{verdict}', 'score': {score - 0.2}}}"
            if "PROSE" in user:
                return 200, f"{verdict.capitalize()}. I would rate it. Score: {score}"
            return 200, json.dumps({"pred": verdict, "score": score})
        finally:
            with self.lock:
                self.active -= 1

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

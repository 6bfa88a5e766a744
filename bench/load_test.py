"""Load test of `videopanda serve`: N concurrent clients for T seconds against a server this script starts itself.

    python bench/load_test.py --clients 4 --seconds 60 --out bench/results/serve_load_cpu.json

Each client is a thread with its own `openai` client, asking questions about the bundled sample clip (sent as a
data: URL, as a remote client would) in a loop; every `--stream-every`-th request of a client is streamed, to time
the first token. No request starts after `--seconds`; the ones in flight finish (each has a timeout), so the run
stops by itself. Reported: throughput (requests and generated tokens per second), latency p50/p90/p99, time to
first token of the streamed requests, errors (expected 0; the exit status is 1 otherwise), the server's RSS before
and after and its peak, and the server's own counters (requests, batches). The JSON also records the command, the
server flags and the machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "videopanda" / "assets" / "sample.mp4"
QUESTIONS = ["How many objects are there?", "What color is the circle?", "What shape is the blue object?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> dict[str, float]:
    """Resident memory of a process now (VmRSS) and at its peak so far (VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "memory_gib": round(int(mem) / 2**20, 1), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": "cpu"}


def start_server(args: argparse.Namespace, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "videopanda.serve.commands", "serve", "--model", args.model, "--port", str(port),
           "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue), "--device", args.device]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the server did not answer within 300 s:\n{log_path.read_text()[-3000:]}")


class Client(threading.Thread):
    """Asks questions in a loop until the deadline; records one dict per request."""

    def __init__(self, index: int, base_url: str, model: str, video_url: str, deadline: float, stream_every: int,
                 max_tokens: int) -> None:
        super().__init__(name=f"client-{index}", daemon=True)
        self.index, self.model, self.video_url, self.deadline = index, model, video_url, deadline
        self.stream_every, self.max_tokens = stream_every, max_tokens
        self.api = openai.OpenAI(api_key="none", base_url=base_url, max_retries=0, timeout=300)
        self.records: list[dict[str, object]] = []

    def run(self) -> None:
        n = 0
        while time.monotonic() < self.deadline:
            stream = self.stream_every > 0 and n % self.stream_every == self.stream_every - 1
            question = QUESTIONS[(self.index + n) % len(QUESTIONS)]
            self.records.append(self.one(question, stream))
            n += 1

    def one(self, question: str, stream: bool) -> dict[str, object]:
        messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": self.video_url}},
                                                 {"type": "text", "text": question}]}]
        start = time.monotonic()
        record: dict[str, object] = {"stream": stream, "start": start}
        try:
            if stream:
                first, pieces, tokens = None, [], 0
                chunks = self.api.chat.completions.create(model=self.model, messages=messages, stream=True,
                                                          max_tokens=self.max_tokens,
                                                          stream_options={"include_usage": True})
                for chunk in chunks:
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first or time.monotonic()
                        pieces.append(chunk.choices[0].delta.content)
                    if chunk.usage:
                        tokens = chunk.usage.completion_tokens
                record.update(ttft=(first or time.monotonic()) - start, tokens=tokens, text="".join(pieces))
            else:
                r = self.api.chat.completions.create(model=self.model, messages=messages, max_tokens=self.max_tokens)
                record.update(tokens=r.usage.completion_tokens, text=r.choices[0].message.content)
            if not str(record["text"]).strip():
                record["error"] = "empty answer"
        except Exception as err:  # counted and reported; the load goes on
            record["error"] = f"{type(err).__name__}: {err}"
        record["end"] = time.monotonic()
        record["latency"] = record["end"] - start
        return record


class RSSMonitor(threading.Thread):
    """Samples the server's RSS every `every` seconds while the load runs: a leak shows as a steady climb."""

    def __init__(self, pid: int, every: float = 5.0) -> None:
        super().__init__(name="rss-monitor", daemon=True)
        self.pid, self.every, self.stop = pid, every, threading.Event()
        self.samples: list[tuple[float, float]] = []

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(self.every):
            self.samples.append((round(time.monotonic() - start, 1), rss_mib(self.pid)["VmRSS"]))


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(p[0]), 3), "p90": round(float(p[1]), 3), "p99": round(float(p[2]), 3),
            "mean": round(float(np.mean(values)), 3), "max": round(float(np.max(values)), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=60, help="no request starts after this (default: %(default)s)")
    parser.add_argument("--stream-every", type=int, default=4,
                        help="every k-th request of a client streams; 0 = none (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request (default: %(default)s)")
    parser.add_argument("--model", default="videopanda-default", help="(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="(default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=4, help="server --max-batch (default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=16, help="server --max-queue (default: %(default)s)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_load_cpu.json"))
    args = parser.parse_args()

    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="videopanda-load-")) / "server.log"
    boot = time.monotonic()
    proc = start_server(args, port, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        ready_s = time.monotonic() - boot
        video_url = "data:video/mp4;base64," + base64.b64encode(SAMPLE.read_bytes()).decode()
        warm = Client(0, f"{base}/v1", args.model, video_url, 0, 0, args.max_tokens).one(QUESTIONS[0], False)
        if "error" in warm:
            raise SystemExit(f"the warm-up request failed: {warm['error']}")
        rss_before = rss_mib(proc.pid)
        health_before = httpx.get(f"{base}/health").json()
        start = time.monotonic()
        clients = [Client(i, f"{base}/v1", args.model, video_url, start + args.seconds, args.stream_every,
                          args.max_tokens) for i in range(args.clients)]
        monitor = RSSMonitor(proc.pid)
        monitor.start()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        wall = time.monotonic() - start
        monitor.stop.set()
        rss_after = rss_mib(proc.pid)
        health_after = httpx.get(f"{base}/health").json()
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

    records = [r for c in clients for r in c.records]
    ok = [r for r in records if "error" not in r]
    errors = [r["error"] for r in records if "error" in r]
    served = health_after["requests"] - health_before["requests"]
    batches = health_after["batches"] - health_before["batches"]
    answers: dict[str, int] = {}
    for r in ok:
        answers[str(r["text"]).strip().lower()] = answers.get(str(r["text"]).strip().lower(), 0) + 1
    result = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "server": {"model": args.model, "device": args.device, "max_batch": args.max_batch,
                   "max_queue": args.max_queue, "seconds_to_ready": round(ready_s, 1), "alive_at_end": alive},
        "load": {"clients": args.clients, "seconds": args.seconds, "stream_every": args.stream_every,
                 "max_tokens": args.max_tokens, "video": "videopanda/assets/sample.mp4 as a data: URL",
                 "questions": QUESTIONS},
        "requests": len(records), "ok": len(ok), "errors": len(errors), "error_examples": errors[:5],
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(ok) / wall, 3),
        "generated_tokens_per_s": round(sum(int(r["tokens"]) for r in ok) / wall, 2),
        "latency_s": percentiles([float(r["latency"]) for r in ok]),
        "latency_s_non_streamed": percentiles([float(r["latency"]) for r in ok if not r["stream"]]),
        "latency_s_streamed": percentiles([float(r["latency"]) for r in ok if r["stream"]]),
        "time_to_first_token_s": percentiles([float(r["ttft"]) for r in ok if r["stream"]]),
        "server_counters": {"requests": served, "batches": batches,
                            "mean_batch_size": round(served / batches, 2) if batches else None,
                            "rejected": health_after["rejected"] - health_before["rejected"]},
        "server_rss_mib": {"before": rss_before["VmRSS"], "after": rss_after["VmRSS"], "peak": rss_after["VmHWM"],
                           "every_5_s": [mib for _, mib in monitor.samples]},
        "answers": dict(sorted(answers.items(), key=lambda kv: -kv[1])),
    }
    if not errors and alive:
        shutil.rmtree(log_path.parent, ignore_errors=True)
    else:
        print(f"server log: {log_path}", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("requests", "errors", "wall_s", "throughput_rps", "latency_s",
                                              "time_to_first_token_s", "server_counters", "server_rss_mib")}, indent=2))
    print(f"wrote {out}")
    return 1 if errors or not alive else 0


if __name__ == "__main__":
    sys.exit(main())

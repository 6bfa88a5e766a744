"""Whole-process wall time of `videopanda ask` on the bundled clip vs a text-only SmolLM2 answer of the same length.

Both are fresh processes with a warm cache (the default model already assembled from the GGUF and the bundled files),
generating the same number of new tokens; the runs alternate (ask, text, ask, text, ...) after one untimed run of
each, and the medians of --runs runs each are compared. Writes JSON with the machine, its load and the command.

    python bench/cpu_ask_vs_text.py --runs 3 --out bench/results/cpu_ask_vs_text.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "videopanda" / "assets" / "sample.mp4"
QUESTION = "Describe the video."

TEXT_ONLY = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from videopanda.weights import smollm2_dir
n = int(sys.argv[1])
folder = smollm2_dir()
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
ids = tok.apply_chat_template([{"role": "user", "content": "Describe a short video of moving shapes."}],
                              add_generation_prompt=True, return_tensors="pt", return_dict=True)
with torch.inference_mode():
    out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
"""


def timed(cmd: list[str]) -> tuple[float, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_ask_vs_text.json"))
    args = parser.parse_args()
    ask = [sys.executable, "-m", "videopanda", "ask", str(CLIP), QUESTION, "--json", "--device", "cpu"]
    timed(ask)  # warm the cache and the page cache
    n = json.loads(timed(ask)[1])["new_tokens"]
    text_cmd = [sys.executable, "-c", TEXT_ONLY, str(n)]
    timed(text_cmd)
    load_before = os.getloadavg()
    ask_times, text_times, answers = [], [], []
    for _ in range(args.runs):  # interleaved, so that a drift in the machine's load affects both alike
        seconds, out = timed(ask)
        ask_times.append(seconds)
        answers.append(json.loads(out))
        text_times.append(timed(text_cmd)[0])
    result = {
        "what": "whole-process wall time, warm cache: videopanda ask (8 frames, 584 visual tokens) vs text-only "
                "SmolLM2-135M-Instruct generating the same number of new tokens",
        "new_tokens": n, "answer": answers[0]["answer"],
        "ask_seconds": ask_times, "text_only_seconds": text_times,
        "ask_median": statistics.median(ask_times), "text_only_median": statistics.median(text_times),
        "ratio": statistics.median(ask_times) / statistics.median(text_times),
        "ratios": [a / t for a, t in zip(ask_times, text_times)],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "git_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=ROOT).stdout.strip() or None,
        "command": "python bench/cpu_ask_vs_text.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("new_tokens", "ask_median", "text_only_median", "ratio")}, indent=2))


if __name__ == "__main__":
    main()

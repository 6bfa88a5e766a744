"""End-to-end test of `videopanda demo` in a headless browser: the real Gradio page in a subprocess, with the real
bundled default model, driven by Playwright through Debian's Chromium (`apt-get install chromium`).

Playwright's own browser downloads are never used (this machine reaches no browser download site): the test
launches /usr/bin/chromium and skips, saying why, where it or the `playwright` package is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "videopanda" / "assets" / "sample.mp4"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the playwright package is missing: pip install playwright (never `playwright install`: the test uses "
           "/usr/bin/chromium)")
pytest.importorskip("gradio", reason="gradio is missing: pip install 'videopanda[demo]'")
httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("demo")
    port = free_port()
    log = tmp / "demo.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp),
           "NO_PROXY": "127.0.0.1,localhost"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "videopanda.serve.commands", "demo", "--port", str(port)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the demo did not answer within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def test_upload_ask_and_read_the_answer(demo_url: str, tmp_path: Path) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(180_000)  # a CPU answer on a busy 2-core machine can take over a minute
            page.goto(demo_url, wait_until="load")
            page.locator("#video input[type=file]").set_input_files(str(SAMPLE))
            page.locator("#video video").wait_for()  # the uploaded clip is shown

            page.locator("#question textarea").fill("How many objects are there?")
            page.locator("#send").click()
            answer = page.locator("#chat").get_by_text("three", exact=True)
            answer.wait_for()
            page.screenshot(path=str(tmp_path / "demo_answer.png"), full_page=True)

            # a follow-up with Enter: answered in the same chat, after the first exchange
            page.locator("#question textarea").fill("What color is the circle?")
            page.locator("#question textarea").press("Enter")
            page.wait_for_function(
                "() => document.querySelectorAll('#chat [data-testid=\"bot\"]').length >= 2"
                " && document.querySelectorAll('#chat [data-testid=\"bot\"]')[1].innerText.trim().length > 0")
            text = page.locator("#chat").inner_text()
            assert text.index("How many objects are there?") < text.index("three") < text.index("circle?")
            assert page.locator("#question textarea").input_value() == ""
            page.screenshot(path=str(tmp_path / "demo_followup.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "demo_answer.png").stat().st_size > 10_000

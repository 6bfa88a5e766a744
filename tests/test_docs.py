"""Every code snippet of README.md and docs/*.md runs as written, or is skipped for a reason this test states.

What runs, each in a fresh temporary folder that holds the files the docs name (`clip.mp4`: the bundled sample clip;
`photo.jpg`: one of its frames; `videopanda/`: a link to the package folder, for `videopanda/assets/sample.mp4`), with
commands `python`, `python3` and `videopanda` of this environment first on PATH, offline (HF_HUB_OFFLINE=1), under a
time limit:

- each ```python block, saved as `snippet.py` and run with `python snippet.py`, as a reader would (a script, not
  `python -c`: that is what a missing `if __name__ == "__main__":` guard breaks);
- each ```bash command that `RUN_RULES` names: `--help` lines, and commands that need only the bundled assets and
  the bundled default model (of those that load the model, the first of each page). The quick commands above it on
  the same page run first (the server example's `sed` reads the `request.json` that its `printf` wrote).

What is checked without running:
- every `videopanda ...` command of a bash block (also `python -m videopanda`, `torchrun ... -m videopanda`) is parsed
  by the real argument parser, so a renamed or removed flag in the docs fails here; lines abridged with a bare `...`
  may leave out required arguments;
- every python block compiles, and its `from videopanda... import NAME` names exist.

What does not run, always as a visible skip with its reason (`pytest -rs` lists them):
- a block preceded by an HTML comment `<!-- no-test: REASON -->` (blank lines between are allowed);
- a python block listed in `NO_TEST` (file, a line of the block): for files whose authors have not marked them;
- a bash command that no `RUN_RULES` entry names: the first matching `SKIP_RULES` entry gives the reason (installs
  packages, needs a GPU, the 7B, a server or the network, or minutes of compute).

Snippets that load the default model or render clips are marked slow (5-40 s each on 2 cores); the rest take a few
seconds together.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SAMPLE = REPO / "videopanda" / "assets" / "sample.mp4"

MARKER = re.compile(r"<!--\s*no-test:\s*(.+?)\s*-->", re.S)

# Python blocks not run, in files that carry no `no-test` marker: (file, a line of the block) -> reason.
NO_TEST = {
    ("docs/serving.md", "from openai import OpenAI"):
        "a client of a running `videopanda serve` (tests/test_serve.py runs the same client against the server)",
}

# Bash commands that run (first match): regex on the command -> slow (True: loads the model or renders clips).
RUN_RULES = [
    (r"(^|\s)--help(\s|$)", False),
    (r"^printf .*videopanda/assets/sample\.mp4", False),  # builds the server example's request from the sample
    (r"^sed .*request\.json", False),
    (r"^cp videopanda/assets/\S+ \S+$", False),  # a bundled asset copied under the name the commands below use
    (DEFAULT_MODEL := r"^(videopanda|python3? -m videopanda) (ask|chat) (clip\.mp4|photo\.jpg|"
                      r"videopanda/assets/sample\.mp4)\b(?!.*--(model|device|load-in|compile))", True),
    (r"^videopanda data synth .*--n [1-4]?\d?\d\b", True),  # fewer than 500 clips: seconds
]
# Of the commands that load the bundled default model on a bundled clip (DEFAULT_MODEL), the first of each page runs.
ONCE_PER_PAGE = ("one default-model command per page runs (each loads the model, 5-40 s; tests/test_cli.py runs ask, "
                 "--json, images and chat); this one's flags are checked by the parser")

# Why a bash command does not run (first match).
SKIP_RULES = [
    (r"\bpip install\b|scripts/setup\.sh", "installs packages"),
    (r"-m pytest\b", "runs the whole test suite, this file included"),
    (r"\bcurl\b|\bvllm\b|videopanda (serve|demo)\b", "starts or needs a running server"),
    (r"Video-Panda-7B|LanguageBind|clip-vit|Qwen|my-videopanda|checkpoints/",
     "needs a checkpoint that is not bundled (the 7B, a teacher or a judge model)"),
    (r"--device cuda|torchrun|accelerate launch|--load-in|--compile|run_gpu\.sh", "needs a GPU"),
    (r"--base-url|OPENAI_API_KEY", "needs a judge server or an API key"),
    (r"--model runs/", "needs the model that a training command above writes"),
    (r"\beval judge\b", "needs the predictions of an earlier run"),
    (r"\btrain\b", "trains: minutes to hours"),
    (r"\bbench\b", "benchmarks: minutes"),
    (r"\beval (videoqa|vcgbench)\b", "answers a whole question set (a minute or more on a CPU)"),
    (r"\bdata synth\b", "renders thousands of clips (a minute or more on 2 cores)"),
    (r"\btensorboard\b", "needs the logs of a training run"),
]


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository
    line: int  # of the first code line
    lang: str
    code: str
    skip: str | None  # the reason of a `no-test` marker or a NO_TEST entry

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Command:
    block: Block
    line: int
    text: str  # as written (continuation lines joined), one part of an `A && B` line
    part: int = 0  # which part of such a line

    @property
    def id(self) -> str:
        return f"{self.block.file}:{self.line}" + (f"+{self.part}" if self.part else "")


def marker_before(lines: list[str], fence: int) -> str | None:
    """The reason of a `<!-- no-test: REASON -->` line right above line `fence` (blank lines between allowed)."""
    above = next((line.strip() for line in reversed(lines[:fence]) if line.strip()), "")
    marker = MARKER.fullmatch(above)
    return marker.group(1) if marker else None


def read_blocks(path: Path) -> list[Block]:
    """Fenced ```python / ```bash blocks of a markdown file, with the reason of a `no-test` marker before them."""
    name = path.relative_to(REPO).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
        if fence.group(2) in ("python", "bash", "sh", "shell"):
            code = "\n".join(line[len(fence.group(1)):] for line in lines[i + 1:end]) + "\n"
            lang = "python" if fence.group(2) == "python" else "bash"
            skip = marker_before(lines, i) or next(
                (why for (f, needle), why in NO_TEST.items() if f == name and needle in code), None)
            blocks.append(Block(name, i + 2, lang, code, skip))
        i = end + 1
    return blocks


BLOCKS = [b for path in DOCS for b in read_blocks(path)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def split_and(text: str) -> list[str]:
    """`A && B` -> [A, B], outside quotes."""
    parts, quote, start, i = [], None, 0, 0
    while i < len(text):
        c = text[i]
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif text.startswith("&&", i):
            parts.append(text[start:i].strip())
            start = i + 2
        i += 1
    return [p for p in [*parts, text[start:].strip()] if p]


def commands(block: Block) -> list[Command]:
    """Logical commands of a bash block: continuation lines and multi-line quotes joined, comment lines dropped."""
    out, pending, first = [], "", 0
    for number, line in enumerate(block.code.splitlines(), block.line):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        pending += line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            pending += "\n"
            continue
        out += [Command(block, first, text, k) for k, text in enumerate(split_and(pending))]
        pending = ""
    return out


COMMANDS = [c for b in BLOCKS if b.lang == "bash" for c in commands(b)]


def words(text: str) -> list[str]:
    """The command's words up to the first shell operator (redirection, pipe, background)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out = []
    for token in lexer:
        if token and set(token) <= set("<>|&;()"):
            break
        out.append(token)
    return out


def cli_argv(text: str) -> list[str] | None:
    """The arguments after `videopanda` (or `-m videopanda`), or None if the command does not run the CLI."""
    ws = words(text)
    for i, w in enumerate(ws):
        if w == "videopanda" and (i == 0 or ws[i - 1] == "-m"):
            return ws[i + 1:]
    return None


def page_before(command: Command) -> list[Command]:
    """The commands above `command` on its page, not marked no-test."""
    page = [c for c in COMMANDS if c.block.file == command.block.file]
    return [c for c in page[:page.index(command)] if not c.block.skip]


def decision(command: Command) -> tuple[str | None, bool]:
    """(None, slow) for a command that runs, else (the reason it does not, False)."""
    if command.block.skip:
        return command.block.skip, False
    text = " ".join(words(command.text))  # quotes, comments and redirections left out
    for pattern, slow in RUN_RULES:
        if re.search(pattern, text, re.S):
            if pattern == DEFAULT_MODEL and any(
                    re.search(pattern, " ".join(words(c.text)), re.S) for c in page_before(command)):
                return ONCE_PER_PAGE, False
            return None, slow
    for pattern, why in SKIP_RULES:
        if re.search(pattern, text, re.S):
            return why, False
    return "not in RUN_RULES (only --help and commands on the bundled assets and default model run)", False


def slow_if(slow: bool) -> list:
    return [pytest.mark.slow] if slow else []


def heavy(code: str) -> bool:
    """Loads a model or renders clips."""
    return bool(re.search(r"from_pretrained|Engine\.load|generate\(", code))


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working folder with the files the docs name, and an environment whose PATH finds this Python first."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(SAMPLE, work / "clip.mp4")
    # videopanda/assets/sample.mp4 as in the repository root: a link to the package folder, since a plain folder of
    # that name would shadow the installed package for `python -m videopanda`
    (work / "videopanda").symlink_to(REPO / "videopanda", target_is_directory=True)
    from PIL import Image

    from videopanda import load_video

    Image.fromarray(load_video(SAMPLE, num_frames=1)[0]).save(work / "photo.jpg")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # scripts, not links: a link to a virtual environment's python would not find the environment
    for name, args in (("python", ""), ("python3", ""), ("videopanda", " -m videopanda")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}"{args} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    return work, env


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float, stdin: str | None = None,
        what: str = "") -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, input=stdin or "", capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish in {timeout:.0f} s (a script that starts a spawn pool without an "
                    f"`if __name__ == '__main__':` guard hangs like this)")
    assert done.returncode == 0 and "Traceback" not in done.stderr, \
        f"{what} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


# ---------------------------------------------------------------------------------------------------------------
# python blocks
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=slow_if(not b.skip and heavy(b.code)))
                                   for b in PYTHON])
def test_python_snippet_runs_as_a_script(block: Block, folder):
    if block.skip:
        pytest.skip(f"{block.id}: {block.skip}")
    work, env = folder
    (work / "snippet.py").write_text(block.code)
    run([sys.executable, "snippet.py"], work, env, 300, what=f"{block.id} (saved as snippet.py)")


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in PYTHON])
def test_python_snippet_compiles_and_its_videopanda_names_exist(block: Block):
    """Also for blocks that do not run: a fragment must still be valid Python naming real things."""
    tree = ast.parse(block.code, filename=block.id)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "videopanda":
            module = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)
                       and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
            assert not missing, f"{block.id}: {node.module} has no {missing}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "videopanda":
                    importlib.import_module(alias.name)


# ---------------------------------------------------------------------------------------------------------------
# bash blocks
# ---------------------------------------------------------------------------------------------------------------


def _command_params() -> list:
    params = []
    for c in COMMANDS:
        _, slow = decision(c)
        params.append(pytest.param(c, id=c.id, marks=slow_if(slow)))
    return params


@pytest.mark.parametrize("command", _command_params())
def test_bash_command_runs(command: Command, folder):
    why, _ = decision(command)
    if why:
        pytest.skip(f"{command.id} `{' '.join(command.text.split())[:70]}`: {why}")
    work, env = folder
    for earlier in page_before(command):  # the quick ones run first: they may write what this one reads
        reason, slow = decision(earlier)
        if reason is None and not slow:
            run(["bash", "-c", earlier.text], work, env, 120, what=earlier.id)
    chat = cli_argv(command.text)[:1] == ["chat"] if cli_argv(command.text) else False
    run(["bash", "-c", command.text], work, env, 300, stdin="How many objects are there?\n/exit\n" if chat else None,
        what=f"{command.id} `{command.text.strip()[:80]}`")
    if command.text.startswith("printf"):  # the request it builds is JSON with the sample clip inside
        request = json.loads((work / "request.json").read_text())
        assert request["messages"][0]["content"][0]["video_url"]["url"].startswith("data:video/mp4;base64,AAAA")


CLI = [c for c in COMMANDS if cli_argv(c.text) is not None]


@pytest.mark.parametrize("command", [pytest.param(c, id=c.id) for c in CLI])
def test_videopanda_command_line_parses(command: Command):
    """Run or not, every documented `videopanda` command is accepted by the real parser (flags, choices, types)."""
    from videopanda.cli import build_parser

    abridged = re.search(r"(^|\s)\.\.\.(\s|$)", command.text) is not None  # "..." as a word: left out on purpose
    argv = [w for w in cli_argv(command.text) if not (abridged and w == "...")]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    message = err.getvalue().strip().splitlines()[-1:] or [""]
    if abridged and "the following arguments are required" in message[0]:
        return
    assert code == 0, f"{command.id}: `videopanda {' '.join(argv)}` is refused by the parser: {message[0]}"


# ---------------------------------------------------------------------------------------------------------------
# the rules themselves
# ---------------------------------------------------------------------------------------------------------------


def test_every_no_test_entry_names_exactly_one_unmarked_block():
    """A NO_TEST entry whose block changed or gained a marker must go, so nothing is skipped by a stale rule."""
    for name, needle in NO_TEST:
        path = REPO / name
        hits = [b for b in read_blocks(path) if needle in b.code]
        assert len(hits) == 1, f"NO_TEST entry ({name}, {needle!r}) matches {len(hits)} blocks"
        lines = path.read_text(encoding="utf-8").splitlines()
        assert marker_before(lines, hits[0].line - 2) is None, \
            f"{name}:{hits[0].line} has a no-test marker: drop its NO_TEST entry"


def test_the_snippets_are_found():
    """The extraction itself: blocks of every kind, markers, joined continuation lines and multi-line quotes."""
    assert len(PYTHON) >= 4 and len(COMMANDS) >= 50
    assert {b.file for b in BLOCKS} >= {"README.md", "docs/training.md", "docs/evaluation.md", "docs/synthetic_data.md"}
    assert any(b.skip and "judge server" in b.skip for b in BLOCKS)  # a no-test marker (docs/evaluation.md)
    runs = [c for c in COMMANDS if decision(c)[0] is None]
    assert any("--help" in c.text for c in runs) and any(cli_argv(c.text)[:1] == ["ask"] for c in runs
                                                         if cli_argv(c.text))
    printf = next(c for c in COMMANDS if c.text.startswith("printf"))
    assert printf.text.count("\n") == 2 and printf.text.rstrip().endswith("> request.json")
    assert any(len(cli_argv(c.text) or []) > 12 for c in COMMANDS)  # backslash continuations joined

"""The command table (`videopanda.cli.COMMANDS`): every sub-command's parser, help and dispatch come from its row, the
shared flag groups and checks are the same everywhere, and the examples a user copies from --help parse."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import pytest

from videopanda import cli
from videopanda.eval import commands as eval_commands
from videopanda.flags import Command, build_parser, check_generation
from videopanda.serve import DemoArgs, ServeArgs
from videopanda.serve import commands as serve_commands


def sub_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every leaf sub-command of `parser` by its words ("eval videoqa")."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                nested = sub_parsers(sub)
                found.update({f"{word} {k}": v for k, v in nested.items()} if nested else {word: sub})
    return found


def test_the_parser_is_the_table() -> None:
    parsers = sub_parsers(cli.build_parser())
    assert sorted(parsers) == sorted(c.name for c in cli.COMMANDS)
    assert {"ask", "chat", "convert", "data synth", "train", "eval videoqa", "eval judge", "eval vcgbench", "serve",
            "demo", "bench"} <= set(parsers)
    for command in cli.COMMANDS:
        sub = parsers[command.name]
        assert sub.get_default("func") is command.run, command.name
        assert command.help and "\n" not in command.help and sub.description == command.description
        assert command.examples.strip(), f"{command.name} has no examples"


def test_help_lines_come_from_the_rows() -> None:
    top = cli.build_parser().format_help()
    for command in cli.COMMANDS:
        if len(command.path) == 1:
            assert command.path[0] in top
    evaluate = subprocess.run([sys.executable, "-m", "videopanda", "eval", "--help"], capture_output=True, text=True)
    assert evaluate.returncode == 0
    for command in eval_commands.COMMANDS:
        assert command.path[1] in evaluate.stdout
    # the eval module run on its own (torchrun -m) has the same rows and the same flags
    alone = build_parser([Command(c.path[1:], c.run, c.flags) for c in eval_commands.COMMANDS], prog="x",
                         description="")
    inside = sub_parsers(cli.build_parser())
    for name, sub in sub_parsers(alone).items():
        assert sorted(sub._option_string_actions) == sorted(inside[f"eval {name}"]._option_string_actions), name


def example_lines(command: Command) -> list[list[str]]:
    """The `videopanda ...` lines of a row's examples, joined at backslash continuations, comments dropped."""
    joined = command.examples.replace("\\\n", " ")
    lines = []
    for line in joined.splitlines():
        if not line.strip().startswith("videopanda "):
            continue
        words = shlex.split(line, comments=True)
        if words[:1] == ["videopanda"] and "..." not in words:
            lines.append(words[1:])
    return lines


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_examples_parse_with_the_real_parser(command: Command) -> None:
    lines = example_lines(command)
    if command.name != "eval videoqa":  # its example line is torchrun's
        assert lines, f"no runnable example for {command.name}"
    for argv in lines:
        args = cli.build_parser().parse_args(argv)
        assert args.func is command.run


def test_dataclass_flags_keep_types_defaults_and_switches() -> None:
    parser = cli.build_parser()
    serve = parser.parse_args(["serve", "--port", "0", "--max-upload-mb", "1.5", "--compile"])
    assert serve.port == 0 and serve.max_upload_mb == 1.5 and serve.compile is True and serve.frames is None
    assert isinstance(serve_commands.dataclass_from_args(ServeArgs, serve), ServeArgs)
    demo = parser.parse_args(["demo"])
    assert isinstance(serve_commands.dataclass_from_args(DemoArgs, demo), DemoArgs)
    train = parser.parse_args(["train", "--data", "synth:0", "--out", "runs/x", "--lora-r", "8"])
    assert train.lora_r == 8 and train.stage == "finetune"
    with pytest.raises(SystemExit):  # --data and --out have no default: required
        parser.parse_args(["train", "--data", "synth:0"])


@pytest.mark.parametrize(("kwargs", "words"), [
    (dict(frames=0), "--frames must be between 1 and 256, got 0"),
    (dict(max_new_tokens=0), "--max-new-tokens must be >= 1, got 0"),
    (dict(temperature=2.5), "--temperature must be between 0 (greedy) and 2, got 2.5"),
    (dict(dtype="int3"), "--dtype must be one of auto"),
])
def test_one_check_for_every_command(kwargs: dict, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The same setting is refused with the same line by ask, eval videoqa and serve (no model is loaded)."""
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_generation(**kwargs)
    flag = {"frames": "--frames", "max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
            "dtype": "--dtype"}[next(iter(kwargs))]
    value = str(next(iter(kwargs.values())))
    argvs = [["ask", "missing.mp4", "q", flag, value]]
    if flag != "--temperature":
        argvs.append(["eval", "videoqa", "--questions", "q.json", "--answers", "a.json", "--video-dir", ".",
                      "--out", "o", flag, value])
        argvs.append(["serve", "--max-tokens" if flag == "--max-new-tokens" else flag, value])
    for argv in argvs:
        assert cli.main(["-v", *argv]) == 2, argv
        err = capsys.readouterr().err
        expected = words.replace("--max-new-tokens", "--max-tokens") if argv[0] == "serve" else words
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, (argv, err)


def test_serve_takes_a_hub_id(tmp_path) -> None:
    """`serve --model owner/name` is a hub id, checked through the same resolver as ask (here: not in an empty
    offline cache), not refused as a missing folder."""
    assert ServeArgs(model="jh-yi/Video-Panda-7B").model == "jh-yi/Video-Panda-7B"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for command in ("serve", "demo"):
        r = subprocess.run([sys.executable, "-m", "videopanda", command, "--model", "jh-yi/Video-Panda-7B"],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("error: jh-yi/Video-Panda-7B: not in the local hub cache"), \
            r.stderr
        assert "Traceback" not in r.stderr

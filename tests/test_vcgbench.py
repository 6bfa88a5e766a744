"""The Video-ChatGPT benchmark: question files, consistency pairs (Q2 really asked and really shown to the judge),
the five aspect scores against a real HTTP judge, and `eval vcgbench` end to end with a tiny model on synthetic
clips, resumed without new generation or judge requests. The judge server is tests/judge_server.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from videopanda.data.synth import generate
from videopanda.eval.commands import main
from videopanda.eval.judges import OpenAIJudge
from videopanda.eval.report import vcg_markdown
from videopanda.eval.vcgbench import ASPECTS, VCGItem, pair_consistency, qa_items, read_vcg, score_vcgbench

pytest.importorskip("openai")

PAPER_ROW = "| Video-Panda, paper (GPT-3.5 judge) | 2.74 | 2.47 | 3.01 | 2.26 | 2.36 | 2.57 |"


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# -- question files ----------------------------------------------------------------------------------------------------
def test_read_vcg_ids_like_the_reference(tmp_path):
    generic = write_json(tmp_path / "generic_qa.json", [
        {"video_name": "v_a", "Q": "What happens?", "A": "A man runs."},
        {"video_name": "v_b", "Q": "Who?", "A": "A dog.", "extra": 1},
        {"video_name": "v_a", "Q": "Where?", "A": "In a park."},
    ])
    items = read_vcg(generic, "generic")
    assert items == [VCGItem("v_a_0", "v_a", ("What happens?",), "A man runs."),
                     VCGItem("v_b_0", "v_b", ("Who?",), "A dog."), VCGItem("v_a_1", "v_a", ("Where?",), "In a park.")]
    assert [(q.question_id, q.question, q.answer) for q in qa_items(items)] == [
        ("v_a_0", "What happens?", "A man runs."), ("v_b_0", "Who?", "A dog."), ("v_a_1", "Where?", "In a park.")]


def test_consistency_asks_both_wordings(tmp_path):
    path = write_json(tmp_path / "consistency_qa.json", [{"video_name": "v", "Q1": "Q one?", "Q2": "Q two?", "A": "a"}])
    questions = qa_items(read_vcg(path, "consistency"))
    assert [(q.question_id, q.question) for q in questions] == [("v_0#1", "Q one?"), ("v_0#2", "Q two?")]
    records = [q.record(f"pred {k}") for k, q in enumerate(questions, 1)]
    assert pair_consistency(records[::-1]) == [{"id": "v_0", "question1": "Q one?", "question2": "Q two?",
                                                "answer": "a", "pred1": "pred 1", "pred2": "pred 2"}]
    assert pair_consistency(records[:1]) == []  # one half missing: left out
    with pytest.raises(ValueError, match="does not end in #1 or #2"):
        pair_consistency([{**records[0], "id": "v_0"}])


@pytest.mark.parametrize(
    ("kind", "data", "match"),
    [
        ("generic", "[{", "not valid JSON"),
        ("generic", {"video_name": "v"}, "expected a JSON list"),
        ("generic", [{"video_name": "v", "Q": "q"}], r"entry 0 lacks \['A'\]"),
        ("consistency", [{"video_name": "v", "Q1": "q", "A": "a"}], r"lacks \['Q2'\].*Q1, Q2"),
        ("generic", [3], "entry 0 is int, not an object"),
        ("spatial", [], "unknown benchmark file kind"),
    ],
)
def test_read_vcg_errors(tmp_path, kind, data, match):
    path = tmp_path / "q.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ValueError, match=match):
        read_vcg(path, kind)


# -- scoring with a real HTTP judge ------------------------------------------------------------------------------------
def test_five_aspects_scored_by_their_own_prompts(api, tmp_path):
    # The server scores "zebra" counts: generic 1 and 3 (mean 2), temporal 4, consistency 2 + 3 = 5; one GARBLED.
    generic = write_jsonl(tmp_path / "generic.jsonl", [
        {"id": "v_0", "question": "What?", "answer": "A run.", "pred": "zebra"},
        {"id": "v_1", "question": "Who?", "answer": "A man.", "pred": "zebra zebra zebra"},
    ])
    temporal = write_jsonl(tmp_path / "temporal.jsonl", [
        {"id": "v_0", "question": "Then?", "answer": "He sat.", "pred": "zebra zebra zebra zebra"},
        {"id": "v_1", "question": "First?", "answer": "He ran.", "pred": "GARBLED"},
    ])
    consistency = write_jsonl(tmp_path / "consistency.jsonl", [
        {"id": "w_0#1", "question": "Colour of the car?", "answer": "red", "pred": "zebra zebra"},
        {"id": "w_0#2", "question": "Which colour is the vehicle?", "answer": "red", "pred": "zebra zebra zebra"},
    ])
    judge = OpenAIJudge(api.url, "judge-test", "sk-test", tmp_path / "cache", max_retries=1, backoff=0.01)
    result = score_vcgbench(judge, {"generic": generic, "temporal": temporal, "consistency": consistency},
                            tmp_path / "out")
    scores = {aspect: s["score"] for aspect, s in result["aspects"].items()}
    assert scores == {"correctness": 2.0, "detail": 2.0, "context": 2.0, "temporal": 4.0, "consistency": 5.0}
    assert result["average"] == pytest.approx(15 / 5)
    assert result["aspects"]["temporal"] == {"count": 2, "judged": 1, "score": 4.0, "unparsed": 1, "failed": 0,
                                             "prompt_version": "temporal-v1"}
    systems = {b["messages"][0]["content"] for b in api.bodies}
    assert systems == {rubric.system for rubric in ASPECTS.values()}  # five aspects, five prompts
    users = [b["messages"][1]["content"] for b in api.bodies]
    consistency_prompt = next(u for u in users if "Question 2" in u)
    assert "Question 1: Colour of the car?" in consistency_prompt
    assert "Question 2: Which colour is the vehicle?" in consistency_prompt  # the reference showed Q1 twice
    judged = [json.loads(line) for line in (tmp_path / "out" / "judgments" / "temporal.jsonl").read_text().splitlines()]
    assert [(r["id"], r["score"], r["status"]) for r in judged] == [("v_0", 4, "ok"), ("v_1", None, "unparsed")]

    partial = score_vcgbench(judge, {"temporal": temporal}, tmp_path / "out2")
    assert list(partial["aspects"]) == ["temporal"] and partial["average"] is None
    with pytest.raises(ValueError, match="aspects must be among"):
        score_vcgbench(judge, {"generic": generic}, tmp_path / "out", aspects=["humour"])


def test_vcg_report_has_the_paper_row():
    aspects = {a: {"count": 2, "judged": 2, "score": 2.5, "unparsed": 0, "failed": 0, "prompt_version": f"{a}-v1"}
               for a in ASPECTS}
    report = vcg_markdown({"model": "m", "aspects": aspects, "average": 2.5,
                           "judge": {"judge": "openai", "judge_model": "gpt-x", "temperature": 0.0}})
    assert "| ours (m) | 2.50 | 2.50 | 2.50 | 2.50 | 2.50 | 2.50 |" in report and PAPER_ROW in report
    assert "Judge: openai `gpt-x`, temperature 0.0, prompts correctness-v1, detail-v1, context-v1" in report


# -- `eval vcgbench` end to end ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_model, smollm2_tokenizer) -> tuple[Path, Path, dict[str, Path], list[str]]:
    """The shared tiny model (conftest.py) saved as a folder, synthetic clips, and VCG question files about them."""
    root = tmp_path_factory.mktemp("vcg")
    tiny_model.save_pretrained(root / "model")
    smollm2_tokenizer.save_pretrained(root / "model")
    generate(root / "data", n=4, seed=0, splits=(0.5, 0.0, 0.5), num_frames=8, size=64, progress=False)
    names = sorted({q["video_name"] for q in json.loads((root / "data" / "test_q.json").read_text())})
    files = {
        "generic": write_json(root / "generic_qa.json", [{"video_name": n, "Q": "What happens?", "A": "Shapes move."}
                                                         for n in names] + [{"video_name": names[0], "Q": "Colours?",
                                                                             "A": "Red and blue."}]),
        "temporal": write_json(root / "temporal_qa.json", [{"video_name": n, "Q": "What comes first?",
                                                            "A": "The circle."} for n in names]),
        "consistency": write_json(root / "consistency_qa.json", [{"video_name": n, "Q1": "How many shapes?",
                                                                  "Q2": "Count the objects.", "A": "Two."}
                                                                 for n in names]),
    }
    return root / "model", root / "data" / "videos", files, names


def test_vcgbench_command_end_to_end_and_resume(bench, api, tmp_path, capsys):
    model, videos, files, names = bench
    out = tmp_path / "out"
    argv = ["vcgbench", "--generic", str(files["generic"]), "--temporal", str(files["temporal"]), "--consistency",
            str(files["consistency"]), "--video-dir", str(videos), "--out", str(out), "--model", str(model),
            "--max-new-tokens", "4", "--batch-size", "2", "--base-url", api.url, "--api-key", "sk-test",
            "--judge-model", "judge-test", "--cache-dir", str(tmp_path / "cache"), "--retry-wait", "0.01"]
    assert main(["-v", *argv]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["aspects"]) == set(ASPECTS) and printed["average"] is not None
    generic = [json.loads(line) for line in (out / "generic.jsonl").read_text().splitlines()]
    assert [r["id"] for r in generic] == [f"{n}_0" for n in names] + [f"{names[0]}_1"]  # the input order
    assert generic[-1]["question"] == "Colours?"
    consistency = [json.loads(line) for line in (out / "consistency.jsonl").read_text().splitlines()]
    assert [r["question"] for r in consistency[:2]] == ["How many shapes?", "Count the objects."]
    result = json.loads((out / "results.json").read_text())
    n = len(names)
    assert result["runs"]["generic"]["done"] == n + 1 and result["runs"]["consistency"]["done"] == 2 * n
    assert {a: s["count"] for a, s in result["aspects"].items()} == {
        "correctness": n + 1, "detail": n + 1, "context": n + 1, "temporal": n, "consistency": n}
    assert all(s["judged"] == s["count"] for s in result["aspects"].values())
    report = (out / "report.md").read_text()
    assert "## Video-ChatGPT benchmark" in report and PAPER_ROW in report and f"| ours ({model}) |" in report
    requests = api.total
    assert requests == len(api.hits) <= 3 * (n + 1) + n + n  # each distinct prompt asked once

    assert main(["-v", *argv]) == 0  # rerun: answers and judgments all reused
    rerun = json.loads((out / "results.json").read_text())
    assert api.total == requests and all(r["done"] == 0 for r in rerun["runs"].values())
    assert rerun["aspects"] == result["aspects"]
    score_only = ["-v", "vcgbench", "--stage", "score", "--out", str(out), "--base-url", api.url, "--judge-model",
                  "judge-test", "--cache-dir", str(tmp_path / "cache")]
    assert main(score_only) == 0 and api.total == requests  # judges the answers in --out again, from the cache
    assert json.loads((out / "results.json").read_text())["aspects"] == result["aspects"]
    assert f"| ours ({model}) |" in (out / "report.md").read_text()  # the model recorded by the prediction stage
    capsys.readouterr()
    assert main(["-v", "vcgbench", "--stage", "score", "--out", str(out), "--judge", "none"]) == 2
    assert "needs a judge" in capsys.readouterr().err
    assert main(["-v", "vcgbench", "--stage", "score", "--out", str(tmp_path / "empty"), "--base-url", api.url]) == 2
    assert "no predictions" in capsys.readouterr().err

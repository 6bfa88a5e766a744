"""Evaluation: judge-free metrics, QA file reading, and batched, resumable VideoQA inference with a tiny model."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

from videopanda import VideoPandaForCausalLM, VideoPandaProcessor
from videopanda.configuration import variant_config
from videopanda.data.synth import generate
from videopanda.engine import Engine
from videopanda.eval import (
    QAItem,
    contains_match,
    exact_match,
    find_video,
    merge_and_score,
    normalize,
    read_qa,
    run_videoqa,
    summarize,
    token_f1,
    videoqa,
)

RUN = dict(dataset="synth", max_new_tokens=6, progress=False)


# -- metrics ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("The Red  Circle.", "red circle"),
        ("  an apple, a pear and THE end!  ", "apple pear and end"),
        ("Three dogs", "3 dogs"),
        ("ten / 10 / zero", "10 10 0"),
        ("there's a t-shirt", "theres t shirt"),
        ("“Quoted” answer…", "quoted answer"),
        ("another theory", "another theory"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize(text, want):
    assert normalize(text) == want


def test_exact_and_contains_match():
    assert exact_match("Five.", "five") and exact_match("5", "five") and exact_match("The dog", "dog")
    assert not exact_match("a red circle", "red")
    assert contains_match("It is a red circle moving left.", "red circle")
    assert contains_match("there are 3 objects", "three")
    assert not contains_match("a reddish circle", "red")  # whole words only
    assert not contains_match("circle red", "red circle")
    assert contains_match("", "the") and not contains_match("something", "the")  # empty after normalisation


def test_token_f1_values():
    assert token_f1("a red circle moves left", "the red square moves left") == pytest.approx(0.75)
    assert token_f1("red red", "red") == pytest.approx(2 / 3)
    assert token_f1("Two dogs.", "2 dogs") == 1.0
    assert token_f1("blue", "red") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("the", "red") == 0.0


def test_summarize_groups_and_means():
    records = [
        {"pred": "red", "answer": "red", "family": "colour"},
        {"pred": "a blue one", "answer": "red", "family": "colour"},
        {"pred": "it is 3", "answer": "three", "family": "count"},
        {"pred": "left", "answer": "left"},  # no family: overall only
    ]
    s = summarize(records)
    assert s["count"] == 4 and s["key"] == "family"
    assert s["exact_match"] == pytest.approx(0.5) and s["contains_match"] == pytest.approx(0.75)
    assert s["token_f1"] == pytest.approx((1 + 0 + 2 * (1 / 3) / (1 / 3 + 1) + 1) / 4)
    assert list(s["groups"]) == ["colour", "count"]
    assert s["groups"]["colour"] == {"count": 2, "exact_match": 0.5, "contains_match": 0.5, "token_f1": 0.5}
    assert summarize(records, key=None)["groups"] == {}
    assert summarize([])["exact_match"] is None
    with pytest.raises(ValueError, match="needs 'pred' and 'answer'"):
        summarize([{"pred": "x"}])


# -- reading question files ------------------------------------------------------------------------------------------
def write_qa(folder: Path, questions, answers) -> tuple[Path, Path]:
    q, a = folder / "test_q.json", folder / "test_a.json"
    for path, data in ((q, questions), (a, answers)):
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return q, a


QS = [
    {"video_name": "vid1", "question": "what is it?", "question_id": 0, "type": "what"},
    {"video_name": "vid2", "question": "who is it?", "question_id": 1},
]
AS = [{"answer": "dog", "question_id": 0}, {"answer": 7, "type": "who"}]


def test_read_qa_aligns_by_index_and_keeps_extra_fields(tmp_path):
    items = read_qa(*write_qa(tmp_path, QS, AS))
    assert items == [
        QAItem(0, "vid1", "what is it?", "dog", {"type": "what"}),
        QAItem(1, "vid2", "who is it?", "7", {"type": "who"}),
    ]
    want = {"id": 0, "question": "what is it?", "answer": "dog", "pred": "a dog", "type": "what"}
    assert items[0].record("a dog") == want


@pytest.mark.parametrize(
    ("questions", "answers", "match"),
    [
        ("[{", AS, "not valid JSON"),
        ({"video_name": "x"}, AS, "expected a JSON list"),
        ([1, 2], AS, "entry 0 is int"),
        (QS, AS[:1], "2 questions but .* 1 answers"),
        ([{**QS[0], "question": None}, QS[1]], AS, "entry 0 has no 'question' field"),
        ([QS[0], {k: v for k, v in QS[1].items() if k != "question_id"}], AS, "entry 1 has no 'question_id'"),
        (QS, [AS[0], {"question_id": 1}], "entry 1 has no 'answer'"),
        (QS, [{"answer": "dog", "question_id": 5}, AS[1]], "question_id 0 in .* but 5 in"),
        ([QS[0], {**QS[1], "question_id": 0}], [AS[0], {"answer": "x"}], "occurs more than once"),
        ([{**QS[0], "question_id": [0]}, QS[1]], AS, "expected a string or an integer"),
    ],
)
def test_read_qa_errors(tmp_path, questions, answers, match):
    with pytest.raises(ValueError, match=match):
        read_qa(*write_qa(tmp_path, questions, answers))


def test_find_video_naming_and_extension_order(tmp_path):
    for name in ("clip.avi", "clip.mp4", "clip.gif", "v_act.mkv", "anim.gif", "anim.webm"):
        (tmp_path / name).write_bytes(b"x")
    assert find_video(tmp_path, "clip", "msvd") == tmp_path / "clip.mp4"
    assert find_video(tmp_path, "clip.gif", "msrvtt") == tmp_path / "clip.gif"  # a name with its extension
    assert find_video(tmp_path, "act", "activitynet") == tmp_path / "v_act.mkv"
    assert find_video(tmp_path, "v_act", "activitynet") == tmp_path / "v_act.mkv"
    assert find_video(tmp_path, "act", "msvd") is None
    assert find_video(tmp_path, "anim", "tgif") == tmp_path / "anim.gif"
    assert find_video(tmp_path, "anim", "msvd") == tmp_path / "anim.webm"
    with pytest.raises(ValueError, match="unknown dataset 'kinetics'"):
        find_video(tmp_path, "clip", "kinetics")


# -- inference with a tiny model -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def processor(tiny_processor) -> VideoPandaProcessor:
    return tiny_processor


@pytest.fixture(scope="module")
def model(processor) -> Engine:
    """The tiny variant with larger weights than the default init, so that answers differ between questions and
    videos (its own model: the shared `tiny_model` is not to be changed), in an Engine as `eval` loads it."""
    torch.manual_seed(0)
    net = VideoPandaForCausalLM(variant_config("videopanda-tiny", video_token_index=49152)).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim >= 2 and not name.startswith("video_tower"):
                p.normal_(0, 0.3)
    return Engine(net, processor)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, n=6, seed=0, splits=(0.5, 0.0, 0.5), num_frames=8, size=64, progress=False)
    return root


@pytest.fixture(scope="module")
def items(data) -> list[QAItem]:
    items = read_qa(data / "test_q.json", data / "test_a.json")
    assert len(items) >= 12 and len({i.video_name for i in items}) == 3
    return items


@pytest.fixture(scope="module")
def reference(model, processor, items, data, tmp_path_factory) -> bytes:
    """The output file of one uninterrupted run, batch size 4."""
    out = tmp_path_factory.mktemp("ref") / "pred.jsonl"
    summary = run_videoqa(model, processor, items, data / "videos", out, batch_size=4, **RUN)
    assert summary["done"] == len(items) and summary["skipped_existing"] == 0 and summary["failed"] == []
    assert summary["answers_per_second"] > 0
    return out.read_bytes()


def lines(blob: bytes) -> list[dict]:
    return [json.loads(line) for line in blob.decode().splitlines()]


def test_output_has_one_line_per_question_in_input_order(reference, items):
    records = lines(reference)
    assert [r["id"] for r in records] == [i.question_id for i in items]
    for record, item in zip(records, items):
        assert record == item.record(record["pred"])
        assert set(record) == {"id", "question", "answer", "pred", "family"}
    assert len({r["pred"] for r in records}) > len(records) // 2  # the answers depend on the input


def test_batched_equals_one_by_one(model, processor, items, data, reference, tmp_path):
    out = tmp_path / "single.jsonl"
    run_videoqa(model, processor, items, data / "videos", out, batch_size=1, num_workers=0, **RUN)
    assert out.read_bytes() == reference


def test_static_cache_decoding_gives_the_same_file(model, processor, items, data, reference, tmp_path):
    """`decoding` (`eval --compile` sets "compiled") only changes speed: the static-cache path answers the same."""
    out = tmp_path / "static.jsonl"
    run_videoqa(model, processor, items, data / "videos", out, batch_size=4, decoding="static", **RUN)
    assert out.read_bytes() == reference


def test_each_video_decoded_once_and_output_in_input_order(
    model, processor, items, data, reference, tmp_path, monkeypatch
):
    calls, lock = Counter(), threading.Lock()
    real = videoqa.load_video

    def counting(path, num_frames):
        with lock:
            calls[Path(path).stem] += 1
        return real(path, num_frames)

    monkeypatch.setattr(videoqa, "load_video", counting)
    seen, rank = Counter(), {}
    for item in items:  # the k-th question of every video, then the (k+1)-th, ...
        seen[item.video_name] += 1
        rank[item.question_id] = seen[item.video_name]
    interleaved = sorted(items, key=lambda i: (rank[i.question_id], i.video_name))
    assert [i.video_name for i in interleaved[:3]] != [interleaved[0].video_name] * 3  # videos alternate
    out = tmp_path / "pred.jsonl"
    run_videoqa(model, processor, interleaved, data / "videos", out, batch_size=4, num_workers=2, **RUN)
    assert calls == {name: 1 for name in {i.video_name for i in items}}
    records = lines(out.read_bytes())
    assert [r["id"] for r in records] == [i.question_id for i in interleaved]
    assert sorted(records, key=lambda r: r["id"]) == sorted(lines(reference), key=lambda r: r["id"])


def test_resume_after_first_half(model, processor, items, data, reference, tmp_path):
    out, half = tmp_path / "pred.jsonl", len(items) // 2
    run_videoqa(model, processor, items[:half], data / "videos", out, batch_size=4, **RUN)
    summary = run_videoqa(model, processor, items, data / "videos", out, batch_size=4, **RUN)
    assert summary["skipped_existing"] == half and summary["done"] == len(items) - half
    assert out.read_bytes() == reference


def test_resume_after_a_torn_last_line(model, processor, items, data, reference, tmp_path):
    out = tmp_path / "pred.jsonl"
    cut = [i for i, b in enumerate(reference) if b == ord("\n")][2] + 20  # 3 lines and 20 bytes of the 4th
    out.write_bytes(reference[:cut])
    summary = run_videoqa(model, processor, items, data / "videos", out, batch_size=4, **RUN)
    assert summary["skipped_existing"] == 3 and summary["done"] == len(items) - 3
    assert out.read_bytes() == reference


def test_resume_after_a_crash_during_generation(model, processor, items, data, reference, tmp_path, monkeypatch):
    out, calls, real = tmp_path / "pred.jsonl", [], videoqa._generate

    def crash_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(videoqa, "_generate", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run_videoqa(model, processor, items, data / "videos", out, batch_size=4, **RUN)
    assert len(lines(out.read_bytes())) == 4  # the first batch was flushed
    monkeypatch.setattr(videoqa, "_generate", real)
    summary = run_videoqa(model, processor, items, data / "videos", out, batch_size=4, **RUN)
    assert summary["skipped_existing"] == 4 and out.read_bytes() == reference
    again = run_videoqa(model, processor, items, data / "videos", out, batch_size=4, **RUN)
    assert again["done"] == 0 and again["skipped_existing"] == len(items) and out.read_bytes() == reference


def test_resume_refuses_a_foreign_or_corrupt_file(model, processor, items, data, tmp_path):
    out = tmp_path / "pred.jsonl"
    out.write_text('{"id": "someone_else", "pred": "x"}\n')
    with pytest.raises(ValueError, match="not in this question set"):
        run_videoqa(model, processor, items, data / "videos", out, **RUN)
    out.write_text('{"id": "a"\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"pred.jsonl:1: not a JSON line"):
        run_videoqa(model, processor, items, data / "videos", out, **RUN)


def test_missing_and_broken_videos_are_reported_not_fatal(model, processor, items, data, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    names = sorted({i.video_name for i in items})
    (videos / f"{names[0]}.mp4").symlink_to(data / "videos" / f"{names[0]}.mp4")
    (videos / f"{names[1]}.mp4").write_bytes(b"not a video at all")  # broken; names[2] is missing
    out = tmp_path / "pred.jsonl"
    summary = run_videoqa(model, processor, items, videos, out, batch_size=4, **RUN)
    ok = [i for i in items if i.video_name == names[0]]
    assert summary["done"] == len(ok) and summary["num_failed"] == len(items) - len(ok)
    assert [r["id"] for r in lines(out.read_bytes())] == [i.question_id for i in ok]
    reasons = {f["video_name"]: f["reason"] for f in summary["failed"]}
    assert reasons.keys() == {names[1], names[2]}
    assert "not a video file" in reasons[names[1]] and "video not found" in reasons[names[2]]
    again = run_videoqa(model, processor, items, videos, out, batch_size=4, **RUN)  # failures are retried
    assert again["skipped_existing"] == len(ok) and again["done"] == 0 and again["num_failed"] == summary["num_failed"]
    with pytest.raises(FileNotFoundError, match="no such video folder"):
        run_videoqa(model, processor, items, tmp_path / "nowhere", out, **RUN)


# -- scoring ---------------------------------------------------------------------------------------------------------
def test_merge_and_score(items, tmp_path):
    preds = [item.record(item.answer if k % 2 == 0 else "no idea") for k, item in enumerate(items)]
    first, second = tmp_path / "2_0.json", tmp_path / "2_1.json"
    first.write_text("".join(json.dumps(r) + "\n" for r in preds[1:5]))
    second.write_text("".join(json.dumps(r) + "\n" for r in preds[5:]) + '{"id": "torn')
    merged = tmp_path / "merge.jsonl"
    s = merge_and_score([first, second], items, merged_path=merged)
    scored = preds[1:]
    assert s["count"] == len(scored) and s["missing"] == 1 and s["unexpected"] == 0
    assert s["exact_match"] == pytest.approx(sum(r["pred"] == r["answer"] for r in scored) / len(scored))
    assert sum(g["count"] for g in s["groups"].values()) == len(scored)
    assert lines(merged.read_bytes()) == scored
    own = merge_and_score(merged, key=None)  # without the question set: the files' own answers
    assert own["exact_match"] == s["exact_match"] and own["groups"] == {}
    second.write_text(json.dumps({**preds[1], "pred": "different"}) + "\n")
    with pytest.raises(ValueError, match="two different predictions"):
        merge_and_score([first, second], items)

"""`videopanda bench`: runs end to end on CPU with tiny models and writes the JSON docs/speed.md describes."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from videopanda import bench, cli

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
# a checkout of the public reference repository (jh-yi/Video-Panda), never committed: `videopanda bench --reference-dir`
REFERENCE = Path(os.environ.get("VIDEOPANDA_REFERENCE_DIR", "/nonexistent"))
TINY = ["--device", "cpu", "--llm", "tiny", "--stab-configs", "tiny", "--vit", "tiny", "--batch-sizes", "1,2",
        "--vit-batch-sizes", "1", "--frame-size", "112", "--new-tokens", "4", "--decoding", "dynamic,static",
        "--eval-batch-sizes", "1,3", "--eval-new-tokens", "2", "--no-eval-e2e", "--repeats", "1", "--warmup", "0",
        "--quant", "4bit" if HAS_BNB else ""]


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "cpu_tiny.json"
    assert cli.main(["bench", *TINY, "--out", str(out), "--quiet"]) == 0
    return json.loads(out.read_text())


def test_header_records_device_versions_and_command(result):
    assert result["errors"] == []
    assert result["command"].startswith("videopanda bench") and "--llm tiny" in result["command"]
    assert result["device"]["type"] == "cpu" and result["device"]["name"]
    assert result["versions"]["torch"] == torch.__version__ and result["versions"]["transformers"]
    assert result["settings"]["llm"] == ["tiny"] and result["settings"]["repeats"] == 1
    assert result["dtype"] == "float32" and result["seconds"] > 0


def test_stab_and_vit_rows(result):
    rows = result["stab"]["rows"]
    assert {(r["impl"], r["batch"]) for r in rows} >= {("ours-eager", 1), ("ours-eager", 2)}
    for r in rows:
        assert r["median_ms"] > 0 and r["videos_per_s"] > 0 and r["peak_mem_mb"] > 0
        assert r["tokens_per_video"] == 8 * (1 + 4 * 5)  # tiny STAB, 112 px square: 4 x 4 LSD tokens + splits + CLS
    vit = result["vit"]["rows"]
    assert [r["batch"] for r in vit] == [1] and vit[0]["images"] == 8 and vit[0]["tokens_per_video"] == 8 * 16


def test_generate_rows_time_every_mode_with_the_same_tokens(result):
    rows = {r["decoding"]: r for r in result["generate"]["rows"]}
    assert set(rows) == {"dynamic", "static"}
    for r in rows.values():
        assert r["new_tokens"] == 4 and r["visual_tokens"] == 168 and r["prompt_tokens"] > 168
        assert r["ttft_ms"] > 0 and r["e2e_ms"] > 0  # no order between them: this CPU may be shared
        assert r["decode_tokens_per_s"] is None or r["decode_tokens_per_s"] > 0
        assert r["same_tokens_as_first_mode"] is True


def test_eval_and_memory_rows(result):
    assert [(r["batch"], r["new_tokens"]) for r in result["eval"]["rows"]] == [(1, 2), (3, 2)]
    assert all(r["answers_per_s"] > 0 for r in result["eval"]["rows"])
    memory = result["memory"]["rows"][0]
    assert memory["llm"] == "tiny" and memory["total_mb"] == pytest.approx(memory["visual_mb"] + memory["llm_mb"],
                                                                           abs=0.2)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_quantized_llm_is_smaller_and_still_answers(result):
    (row,) = result["memory"]["quantized"]
    assert "error" not in row, row
    assert row["quantization"] == "4bit" and row["layers_quantized"] == 2 * 7  # q k v o gate up down per layer
    assert row["llm_mb"] < result["memory"]["rows"][0]["llm_mb"] and row["e2e_ms"] > 0


def test_bad_flags_fail_cleanly(capsys):
    assert cli.main(["bench", "--device", "cpu", "--sections", "stab,speed"]) == 2
    assert "unknown ['speed']" in capsys.readouterr().err
    assert cli.main(["bench", "--device", "cpu", "--batch-sizes", "0"]) == 2


def test_command_line_rebuilt_from_python_arguments():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--llm", "tiny", "--compile", "--no-eval-e2e"])
    line = bench._command_line(args)
    assert line.startswith("videopanda bench") and "--llm tiny" in line and "--compile" in line
    assert "--no-eval-e2e" in line


@pytest.mark.skipif(not (REFERENCE / "vision_tokenizer.py").is_file() or importlib.util.find_spec("einops") is None,
                    reason="no reference checkout in $VIDEOPANDA_REFERENCE_DIR (never committed), or no einops")
def test_reference_stab_loads_with_our_weights_and_agrees():
    from videopanda.modeling.stab import STAB

    cls = bench.load_reference_stab(REFERENCE)
    torch.manual_seed(0)
    ours = STAB(1024, 8).eval()
    cfg = argparse.Namespace(mm_video_tower="config/videopanda-video-LB-patch14-anypixel-448")
    ref = cls(1024, cfg, argparse.Namespace(patch_stride=14, conv_stride=2)).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("lmhra2.") for k in missing)
    px = bench.pixel_values(bench.synthetic_videos(1, 8, 112), "videopanda-tiny")  # 112 px canvas: cheap
    with torch.no_grad():
        theirs = torch.cat(ref(torch.stack(px[0].chunk(2)), torch.nn.Identity())[0])
        mine = ours(px).tokens
    assert theirs.shape == mine.shape and torch.allclose(theirs, mine, atol=1e-4)


def test_a_broken_device_keeps_the_rows_measured_before_it(tmp_path, monkeypatch):
    """A kernel fault leaves the CUDA context unusable, and the next cleanup raises: the bench writes what it had,
    records the error and runs no further section (each would fail the same way)."""
    calls = []

    def free(device):
        calls.append(device)
        if len(calls) > 1:
            raise RuntimeError("CUDA error: unspecified launch failure")

    monkeypatch.setattr(bench, "_free", free)
    out = tmp_path / "broken.json"
    args = [*TINY, "--sections", "stab,vit,generate", "--batch-sizes", "1", "--out", str(out), "--quiet"]
    assert cli.main(["bench", *args]) == 0
    result = json.loads(out.read_text())
    assert result["stab"]["rows"] and "vit" not in result and "generate" not in result
    assert "unspecified launch failure" in result["errors"][-1]["error"]


ROOT = Path(__file__).resolve().parents[1]


def floor_probe(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python bench/floor_probe.py ARGS...` from the repository root, as users run it, with this checkout's package.
    It imports bench/gemm_probe.py, which needs Triton."""
    pytest.importorskip("triton")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "bench/floor_probe.py", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bench/floor_probe.py times CUDA kernels: a GPU only")
def test_floor_probe_times_the_products_the_fused_7b_encode_runs(tmp_path):
    """The floor in docs/speed.md is only about this model if the probe's shapes are the fused STAB's: its token
    counts, and every product's K and N as the folded weights hold them."""
    from videopanda.configuration import variant_config
    from videopanda.fast import FusedSTAB
    from videopanda.modeling.stab import STAB, count_visual_tokens

    out = tmp_path / "floor.json"
    run = floor_probe("--videos", "2", "--rounds", "1", "--out", str(out))
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    config = variant_config("videopanda-7b")
    stab = FusedSTAB(STAB.from_config(config).eval())
    la = stab.stab.local_attention
    s = result["shapes"]
    full = torch.ones(2, 8, 4, 448, 448)  # every pixel valid, as the bench's videos
    assert s["llm"] == sum(count_visual_tokens(full, stab.patch_size, stab.conv_stride))
    assert s["tokens"] == 2 * 8 * (448 // stab.patch_size) ** 2 and s["windows"] == s["tokens"] // 4
    weights = [stab._fold_patch_w, stab._fold_patch_lste_w, stab._fold_lste_w2, la.kv[1].weight, la.q[1].weight,
               la.proj.weight]
    C, D = config.stab_hidden_size, config.llm_hidden_size  # the mlp2x_gelu projector: C -> D -> D
    rows = [s["tokens"]] * 4 + [s["windows"]] * 2 + [s["llm"]] * 2
    assert [(r["M"], r["K"], r["N"]) for r in result["gemms"]] == [
        (m, k, n) for m, (k, n) in zip(rows, [(w.shape[1], w.shape[0]) for w in weights] + [(C, D), (D, D)])]
    assert [r["bias"] for r in result["gemms"]] == [False, False, True, False, False, True, True, True]
    assert la.proj.bias is not None and la.kv[1].bias is None and la.q[1].bias is None


@pytest.mark.parametrize("argv, message", [
    (["--videos", "0"], "--videos and --rounds must be at least 1"),
    (["--cutlass-modes", "plain,fast"], "not fast"),
    (["--cutlass-dir", "/nonexistent"], "is not a CUTLASS tree"),
])
def test_floor_probe_refuses_bad_arguments_before_touching_a_gpu(argv, message, tmp_path):
    run = floor_probe(*argv, "--out", str(tmp_path / "floor.json"))
    assert run.returncode == 2 and message in run.stderr
    assert not (tmp_path / "floor.json").exists()

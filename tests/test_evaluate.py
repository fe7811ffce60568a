"""Evaluation driver (tsmixit.evaluation.evaluate): models run on manifests and folders at
full length, batched, multi-channel, with the optional quality metrics; the test mixtures kept
per system, and the recipe's re-evaluation when the eval settings change."""

import json
import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from conftest import gaussian_signals as _signals
from conftest import make_corpus
from tsmixit.data.manifest import Manifest
from tsmixit.errors import AudioError, ConfigError
from tsmixit.evaluation.evaluate import (
    evaluate_into_run,
    evaluate_path,
    evaluate_separator,
    evaluate_stages,
    example_name,
)
from tsmixit.metrics import score_mixture
from tsmixit.model_files import save_model
from tsmixit.models.conv_tasnet import ConvTasNet
from tsmixit.training.config import load_config

SR = 8000


class HalfWaves(nn.Module):
    """Per-sample 'separator' [max(x, 0), min(x, 0), 0.01 x]: zero padding cannot change it,
    so batched full-length results must equal one-mixture-at-a-time scores."""

    def __init__(self) -> None:
        super().__init__()
        self.hparams = {"n_sources": 3, "n_channels": 1}
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x):  # (B, T) -> (B, 3, T)
        return torch.stack([x.clamp_min(0), x.clamp_max(0), 0.01 * x], dim=1)


def _write_corpus(folder, lengths, layout="manifest"):
    rows = []
    for n, T in enumerate(lengths):
        src = _signals(2, T, 10 + n).numpy() * 0.1
        if layout == "wsj":
            paths = [folder / "tt" / d / f"m{n}.wav" for d in ("mix", "s1", "s2")]
        else:
            paths = [folder / f"{n}_{d}.wav" for d in ("mix", "s1", "s2")]
        for path, wav in zip(paths, [src.sum(0), src[0], src[1]], strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wav, SR, subtype="FLOAT")
        rows.append({"id": f"m{n}", "split": "test", "labelled": False, "sample_rate": SR,
                     "channels": 1, "num_frames": T, "n_speakers": 2,
                     "mixture": paths[0].name, "sources": [p.name for p in paths[1:]]})
    return rows


def test_evaluate_separator_batches_by_length(tmp_path):
    lengths = [4000, 4100, 2500, 6000, 3900]
    manifest = Manifest(_write_corpus(tmp_path, lengths), tmp_path)
    model = HalfWaves()
    result = evaluate_separator(model, manifest, batch_size=2, progress=False,
                                examples=2, example_dir=tmp_path / "ex")
    assert [r["id"] for r in result["per_mixture"]] == [f"m{n}" for n in range(5)]
    for i, row in enumerate(result["per_mixture"]):
        mix = torch.from_numpy(manifest.load_mixture(i)[0])
        want = score_mixture(model(mix[None])[0], torch.from_numpy(manifest.load_sources(i, True)),
                             mix)
        for key, value in want.items():
            assert row[key] == pytest.approx(value, abs=1e-4), key
        assert row["active_outputs"] == 2
    mean = result["mean"]
    assert mean["si_snri_topk"] == pytest.approx(
        np.mean([r["si_snri_topk"] for r in result["per_mixture"]]))
    assert mean["over_separated"] == 0.0
    # The first two rows kept (rows 0 and 1 sit in different length batches), each as the
    # model makes it alone: mixture, references, all outputs, top-k and oracle groups.
    assert result["examples"] == [{"id": f"m{n}", "path": str(tmp_path / "ex" / f"{n}_m{n}.npz")}
                                  for n in range(2)]
    assert result["example"] == result["examples"][0]
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == ["0_m0.npz", "1_m1.npz"]
    for n, entry in enumerate(result["examples"]):
        mix = manifest.load_mixture(n)[0]
        with np.load(entry["path"]) as example:
            assert str(example["id"]) == f"m{n}" and int(example["sample_rate"]) == SR
            np.testing.assert_array_equal(example["mixture"], mix)
            np.testing.assert_array_equal(example["references"], manifest.load_sources(n, True))
            np.testing.assert_allclose(example["outputs"],
                                       model(torch.from_numpy(mix)[None])[0].numpy(), atol=1e-7)
            row = result["per_mixture"][n]
            assert list(example["topk_outputs"]) == row["topk_outputs"]
            assert list(example["oracle_groups"]) == row["oracle_groups"]


def test_examples_beyond_the_test_set_keep_every_row_and_none_is_refused_below_zero(tmp_path):
    manifest = Manifest(_write_corpus(tmp_path, [3000, 2000]), tmp_path)
    result = evaluate_separator(HalfWaves(), manifest, progress=False, examples=5,
                                example_dir=tmp_path / "ex")
    assert [e["id"] for e in result["examples"]] == ["m0", "m1"]
    none = evaluate_separator(HalfWaves(), manifest, progress=False, examples=0,
                              example_dir=tmp_path / "none")
    assert none["examples"] == [] and "example" not in none
    assert "examples" not in evaluate_separator(HalfWaves(), manifest, progress=False)
    with pytest.raises(ConfigError, match="examples must be >= 0"):
        evaluate_separator(HalfWaves(), manifest, progress=False, examples=-1,
                           example_dir=tmp_path / "ex")


def test_example_names_are_file_safe_and_distinct():
    assert example_name(0, "m0") == "0_m0.npz"
    assert example_name(2, "../a b/c:d") == "2_.._a_b_c_d.npz"
    assert example_name(1, "a/b") != example_name(2, "a:b")
    assert len(example_name(3, "x" * 500)) == len("3_") + 60 + len(".npz")


def test_evaluate_into_run_lays_out_the_examples_and_drops_stale_ones(tmp_path):
    manifest = Manifest(_write_corpus(tmp_path, [2000, 2100, 2200]), tmp_path)
    eval_dir = tmp_path / "eval"
    (eval_dir / "examples" / "student").mkdir(parents=True)
    old = eval_dir / "examples" / "student.npz"  # the one-example layout
    stale = eval_dir / "examples" / "student" / "5_old.npz"
    other = eval_dir / "examples" / "teacher.npz"  # another system's: kept
    for path in (old, stale, other):
        np.savez(path, id="old")
    out = evaluate_into_run(HalfWaves(), manifest, eval_dir, system="student", examples=2,
                            progress=False)
    result = json.loads(out.read_text())
    assert result["examples"] == [{"id": "m0", "path": "examples/student/0_m0.npz"},
                                  {"id": "m1", "path": "examples/student/1_m1.npz"}]
    assert result["example"] == result["examples"][0]  # the report's spectrogram example
    assert sorted(p.name for p in (eval_dir / "examples" / "student").iterdir()) == [
        "0_m0.npz", "1_m1.npz"]
    assert not old.exists() and other.exists()
    evaluate_into_run(HalfWaves(), manifest, eval_dir, system="student", examples=1,
                      progress=False)
    assert [p.name for p in (eval_dir / "examples" / "student").iterdir()] == ["0_m0.npz"]


def test_the_recipe_evaluates_again_when_eval_examples_changes(tmp_path):
    manifest = Manifest.load(make_corpus(tmp_path / "corpus", n_train=0, n_valid=0, n_test=3,
                                         seconds=0.25))
    save_model(ConvTasNet.from_preset("tiny"), tmp_path / "model", 8000, {})
    summaries = {"student": {"kind": "student", "fingerprint": "f1",
                             "checkpoint": str(tmp_path / "model")}}
    run, eval_dir = tmp_path / "run", tmp_path / "run" / "eval"
    result = tmp_path / "run" / "eval" / "student.json"

    def evaluate(examples: int) -> int:
        config = load_config(None, ["train.max_steps=1", f"eval.examples={examples}"])
        evaluate_stages(config, manifest, eval_dir, run, summaries, progress=False)
        return result.stat().st_mtime_ns

    first = evaluate(2)
    assert len(json.loads(result.read_text())["examples"]) == 2
    assert evaluate(2) == first  # unchanged: not evaluated again
    evaluate(3)
    assert [e["id"] for e in json.loads(result.read_text())["examples"]] == [
        "test000", "test001", "test002"]
    assert len(list((eval_dir / "examples" / "student").iterdir())) == 3
    with pytest.raises(ConfigError, match="'eval.examples' must be positive"):
        load_config(None, ["train.max_steps=1", "eval.examples=0"])


def test_optional_quality_metrics_when_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pesq", types.SimpleNamespace(pesq=lambda *a: 3.25))
    monkeypatch.setitem(sys.modules, "pystoi",
                        types.SimpleNamespace(stoi=lambda ref, est, sr, extended: 0.5))
    manifest = Manifest(_write_corpus(tmp_path, [3000]), tmp_path)
    result = evaluate_separator(HalfWaves(), manifest, progress=False)
    assert result["quality_metrics"] == ["pesq_topk", "stoi_topk"]
    assert result["mean"]["pesq_topk"] == 3.25 and result["mean"]["stoi_topk"] == 0.5


def test_evaluate_path_on_a_wsj0_2mix_folder(tmp_path):
    _write_corpus(tmp_path / "wsj", [3000, 3200], layout="wsj")
    model = ConvTasNet.from_preset("tiny", n_sources=4)
    save_model(model, tmp_path / "model", SR, {})
    result = evaluate_path(tmp_path / "model", tmp_path / "wsj", json_out=tmp_path / "r.json",
                           progress=False)
    assert result["n_mixtures"] == 2 and result["n_outputs"] == 4
    assert json.loads((tmp_path / "r.json").read_text())["mean"] == result["mean"]
    assert all(1 <= r["active_outputs"] <= 4 for r in result["per_mixture"])


def test_multichannel_rows_feed_every_mic_or_mic_0(tmp_path):
    rows = _write_corpus(tmp_path, [2400])
    stereo = np.stack([sf.read(tmp_path / "0_mix.wav")[0], 0.5 * sf.read(tmp_path / "0_s1.wav")[0]])
    sf.write(tmp_path / "0_mix.wav", stereo.T, SR, subtype="FLOAT")
    rows[0]["channels"] = 2
    manifest = Manifest(rows, tmp_path)
    mix = torch.from_numpy(manifest.load_mixture(0))  # (2, T)
    ref = torch.from_numpy(manifest.load_sources(0, allow_unlabelled=True))
    for n_channels, inputs in ((2, mix[None]), (1, mix[:1])):
        model = ConvTasNet.from_preset("tiny", n_channels=n_channels).eval()
        row = evaluate_separator(model, manifest, progress=False)["per_mixture"][0]
        with torch.inference_mode():
            want = score_mixture(model(inputs)[0], ref, mix[0])
        assert row["si_snri_topk"] == pytest.approx(want["si_snri_topk"], abs=1e-4)


def test_multichannel_model_refuses_rows_of_another_array(tmp_path):
    rows = _write_corpus(tmp_path, [2400])
    model = ConvTasNet.from_preset("tiny", n_channels=2).eval()
    with pytest.raises(AudioError, match="row 'm0' has 1 channel.*takes 2 microphone"):
        evaluate_separator(model, Manifest(rows, tmp_path), progress=False)

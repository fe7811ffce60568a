"""Evaluation driver (tsmixit.evaluation.evaluate): models run on manifests and folders at
full length, batched, multi-channel, with the optional quality metrics."""

import json
import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from conftest import gaussian_signals as _signals
from tsmixit.data.manifest import Manifest
from tsmixit.errors import AudioError
from tsmixit.evaluation.evaluate import evaluate_path, evaluate_separator
from tsmixit.metrics import score_mixture
from tsmixit.model_files import save_model
from tsmixit.models.conv_tasnet import ConvTasNet

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
                                example_index=3, example_path=tmp_path / "ex.npz")
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
    example = np.load(tmp_path / "ex.npz")
    assert str(example["id"]) == "m3" and example["outputs"].shape == (3, 6000)


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

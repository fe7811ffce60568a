"""Evaluation metrics against independent computations (torchmetrics, fast-bss-eval, brute
force over groupings, hand-worked cases)."""

import itertools
import json
import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn
from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio as tm_si_snr
from torchmetrics.functional.audio import signal_distortion_ratio as tm_sdr

from tsmixit.data.manifest import Manifest
from tsmixit.evaluation.metrics import (
    active_output_count,
    evaluate_path,
    evaluate_separator,
    oracle_grouping,
    score_mixture,
)
from tsmixit.model_files import save_model
from tsmixit.models.conv_tasnet import ConvTasNet

SR = 8000


def _signals(n: int, T: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, T))).float()


def test_estimate_equal_to_reference_and_to_mixture():
    ref = _signals(2, 4000, 0)
    mix = ref.sum(dim=0)
    perfect = score_mixture(ref.flip(0), ref, mix)
    assert perfect["si_snri_topk"] > 60 and perfect["sdri_topk"] > 60
    assert perfect["topk_outputs"] == [1, 0]
    same = score_mixture(mix.expand(2, -1).clone(), ref, mix)
    assert same["si_snri_topk"] == pytest.approx(0.0, abs=1e-4)
    assert same["sdri_topk"] == pytest.approx(0.0, abs=1e-3)


def test_topk_scores_match_torchmetrics():
    ref = _signals(2, 8000, 1)
    mix = ref.sum(dim=0)
    noise = _signals(3, 8000, 2)
    est = torch.stack([ref[1] + 0.3 * noise[0], 0.05 * noise[2], ref[0] + 0.5 * noise[1]])
    row = score_mixture(est, ref, mix)
    assert row["topk_outputs"] == [2, 0]  # the silent-ish output 1 is dropped
    kept = est[[2, 0]].double()
    # Independent: torchmetrics SI-SNR and SDR (one thread: see sdr_pairwise), the
    # SDR permutation found by brute force.
    si = tm_si_snr(kept, ref.double()).mean() - tm_si_snr(mix.expand(2, -1).double(),
                                                          ref.double()).mean()
    with torch.no_grad():
        sdr = max(tm_sdr(est[list(p)].double(), ref.double()).mean() for p in ((0, 2), (2, 0)))
        sdr_mix = tm_sdr(mix.expand(2, -1).double(), ref.double()).mean()
    assert row["si_snri_topk"] == pytest.approx(float(si), abs=1e-3)
    assert row["sdri_topk"] == pytest.approx(float(sdr - sdr_mix), abs=1e-3)
    # The oracle groups (3 outputs into 2), scored in the same SDR call: the best grouping by
    # SI-SNR puts the quiet output 1 with one of the others; its SDR by torchmetrics.
    groups = [torch.stack([est[2] + est[1], est[0]]), torch.stack([est[2], est[0] + est[1]])]
    best = max(groups, key=lambda g: float(tm_si_snr(g.double(), ref.double()).mean()))
    with torch.no_grad():
        sdr_oracle = tm_sdr(best.double(), ref.double()).mean()
    assert row["oracle_groups"] in ([1, 0, 0], [1, 1, 0])  # output 2 -> source 0
    assert row["sdri_oracle"] == pytest.approx(float(sdr_oracle - sdr_mix), abs=1e-3)


def test_oracle_grouping_equals_brute_force():
    ref = _signals(2, 3000, 3)
    est = _signals(4, 3000, 4) + 0.8 * torch.stack([ref[0], ref[1], ref[1], ref[0]])
    best_score, best_groups = -np.inf, None
    for groups in itertools.product(range(2), repeat=4):
        if len(set(groups)) < 2:
            continue
        sums = torch.stack([est[[m for m in range(4) if groups[m] == j]].sum(0) for j in range(2)])
        score = float(tm_si_snr(sums.double(), ref.double()).mean())
        if score > best_score:
            best_score, best_groups = score, groups
    A = oracle_grouping(est, ref)
    assert A.argmax(dim=0).tolist() == list(best_groups) == [0, 1, 1, 0]
    row = score_mixture(est, ref, ref.sum(0))
    assert row["si_snr_oracle"] == pytest.approx(best_score, abs=1e-3)


def test_over_separation_oracle_beats_topk():
    parts = _signals(4, 4000, 5) * torch.tensor([[1.0], [0.9], [0.8], [0.7]])
    ref = torch.stack([parts[0] + parts[2], parts[1] + parts[3]])  # each source split in two
    row = score_mixture(parts, ref, ref.sum(0))
    assert row["oracle_groups"] == [0, 1, 0, 1]
    assert row["si_snri_oracle"] > 60
    assert row["si_snri_oracle"] >= row["si_snri_topk"] + 10
    assert row["active_outputs"] == 4


def test_active_output_count():
    base = _signals(1, 2000, 6)[0]
    # Energy shares 1/1.505, 0.5/1.505, 0.005/1.505, 0: -1.8, -4.8, -24.8 dB and -inf.
    est = torch.stack([base, base * 0.5**0.5, base * 0.005**0.5, torch.zeros_like(base)])
    assert active_output_count(est, -20.0) == 2
    assert active_output_count(est, -30.0) == 3
    assert active_output_count(est, -3.0) == 1


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

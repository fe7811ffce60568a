"""DPRNN: the published size, its layer sizes, chunking, toy training."""

import math

import pytest
import torch

from tsmixit.losses import pit, si_snr
from tsmixit.models.dprnn import DPRNN, PRESETS, overlap_add, segment


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hand_count(n_sources, N, L, D, H, K, B):
    """Parameters from the layer sizes (weights + biases; gLN 2 per channel)."""
    lstm = 2 * (4 * H * (D + H) + 8 * H)  # two directions, two bias vectors each
    path = lstm + (2 * H * D + D) + 2 * D  # BiLSTM, projection 2H -> D, gLN
    head = 1 + (D * n_sources * D + n_sources * D) + 2 * (D * D + D) + D * N
    return N * L + 2 * N + N * D + B * 2 * path + head + N * L


def test_paper_preset_has_the_published_size():
    # Luo, Chen & Yoshioka, ICASSP 2020, the WSJ0-2mix comparison table: DPRNN (window 2)
    # has 2.6 M parameters (18.8 dB SI-SNRi). Here 2,608,001, the count of the authors'
    # layer sizes (github.com/yluo42/TAC, utility/models.py) with 64 encoder filters.
    count = n_params(DPRNN.from_preset("paper"))
    assert abs(count - 2.6e6) / 2.6e6 < 0.02
    assert count == 2_608_001


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("n_sources", [2, 4])
def test_parameter_counts_match_the_layer_sizes(preset, n_sources):
    model = DPRNN.from_preset(preset, n_sources=n_sources)
    assert n_params(model) == hand_count(n_sources, **PRESETS[preset])


def test_small_and_tiny_sizes():
    assert 0.5e6 <= n_params(DPRNN.from_preset("small")) <= 0.7e6
    assert n_params(DPRNN.from_preset("tiny")) <= 90_000


@pytest.mark.parametrize("frames", [1, 4, 5, 124, 125, 250, 251])
def test_every_frame_lies_in_two_chunks(frames):
    f = torch.randn(2, frames, 3)
    chunks = segment(f, 10)  # (batch, C, 10, 3)
    assert chunks.shape[2] == 10
    torch.testing.assert_close(overlap_add(chunks, frames), 2 * f)


def two_tones(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, 2, length): a low tone (200-400 Hz) and a high tone (1.5-2.5 kHz) at 8 kHz."""
    t = torch.arange(length) / 8000
    low = 200 + 200 * torch.rand(batch, 1, generator=generator)
    high = 1500 + 1000 * torch.rand(batch, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(batch, 2, 1, generator=generator)
    amp = 0.5 + torch.rand(batch, 2, 1, generator=generator)
    freqs = torch.cat([low, high], dim=1).unsqueeze(-1)  # (batch, 2, 1)
    return amp * torch.sin(2 * math.pi * freqs * t + phase)


def test_training_on_two_tones_reduces_the_loss():
    # 150 steps, batch 4 x 0.25 s: the test mixtures' SI-SNR rises by well over 10 dB.
    model = DPRNN.from_preset("tiny")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    test = two_tones(8, 2000, torch.Generator().manual_seed(1))
    mixture = test.sum(dim=1)
    baseline = si_snr(mixture.unsqueeze(1).expand_as(test), test).mean()
    for _ in range(150):
        sources = two_tones(4, 2000, g)
        loss, _ = pit(model(sources.sum(dim=1)), sources)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    with torch.no_grad():
        test_loss, _ = pit(model.eval()(mixture), test)
    gain = -test_loss.mean() - baseline
    assert gain > 10.0, (float(baseline), float(gain))

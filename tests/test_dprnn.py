"""DPRNN: the published size, its layer sizes, chunking (toy training: test_separators.py)."""

import pytest
import torch

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


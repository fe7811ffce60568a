"""TF-GridNet: the published size, the STFT, multi-microphone input (toy training:
test_separators.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from tsmixit.errors import AudioError
from tsmixit.models.tf_gridnet import STFT, TFGridNet


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hand_count(n_sources, n_fft, D, B, I, H, L, E=None, n_channels=1, **_):
    """Parameters from the layer sizes of the authors' code (ESPnet's TFGridNet)."""
    n_freqs = n_fft // 2 + 1
    E = math.ceil(512 / n_freqs) if E is None else E
    path = 2 * D + 2 * (4 * H * (D * I + H) + 8 * H) + (2 * H * D * I + D)  # LN, BiLSTM, deconv

    def head(C):  # per head: 1x1 conv D -> C, PReLU, LayerNorm over (C x F)
        return D * C + C + 1 + 2 * C * n_freqs

    attention = L * (2 * head(E) + head(D // L)) + (D * D + D + 1 + 2 * D * n_freqs)
    stem = 2 * n_channels * D * 9 + D + 2 * D  # conv 3x3 + gLN
    return stem + B * (2 * path + attention) + D * 2 * n_sources * 9 + 2 * n_sources


def test_paper_preset_has_the_published_size():
    # Wang et al., IEEE/ACM TASLP 2023, WSJ0-2mix comparison: TF-GridNet, 14.4 M parameters
    # (23.5 dB SI-SDRi); the same figure is quoted by later papers (e.g. TF-Locoformer's
    # table). The sizes of the preset are inferred (see the module docstring).
    count = n_params(TFGridNet.from_preset("paper"))
    assert abs(count - 14.4e6) / 14.4e6 < 0.02
    assert count == 14_435_602


@pytest.mark.parametrize("preset", list(TFGridNet.presets))
@pytest.mark.parametrize("n_sources, n_channels", [(2, 1), (4, 6)])
def test_parameter_counts_match_the_authors_layer_sizes(preset, n_sources, n_channels):
    model = TFGridNet.from_preset(preset, n_sources=n_sources, n_channels=n_channels)
    hp = TFGridNet.presets[preset]
    assert n_params(model) == hand_count(n_sources, n_channels=n_channels, **hp)


def test_espnet_recipe_and_cpu_sizes():
    assert n_params(TFGridNet.from_preset("espnet")) == 8_175_874  # ESPnet's WSJ0-2mix recipe
    assert 0.3e6 <= n_params(TFGridNet.from_preset("small")) <= 0.45e6
    assert n_params(TFGridNet.from_preset("tiny")) <= 40_000


@pytest.mark.parametrize("n_fft, hop", [(128, 64), (256, 64), (64, 32), (30, 12)])
@pytest.mark.parametrize("length", [1, 63, 64, 1000, 4001])
def test_stft_inverse_reconstructs_the_signal(n_fft, hop, length):
    stft = STFT(n_fft, hop)
    x = torch.randn(3, length)
    lead, tail, frames = stft.pad(length, min_frames=4)
    spec = stft(F.pad(x, (lead, tail)))
    assert spec.shape == (3, 2 * (n_fft // 2 + 1), frames) and frames >= 4
    y = stft.inverse(spec)[:, lead : lead + length]
    torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)


def test_stft_matches_torch_stft():
    stft = STFT(128, 64)
    x = torch.randn(2, 1000)
    spec = stft(x)  # (2, 2F, K): no padding, frames from sample 0
    ref = torch.stft(x, 128, 64, window=torch.hann_window(128), center=False,
                     return_complex=True)  # (2, F, K)
    torch.testing.assert_close(spec[:, :65], ref.real, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(spec[:, 65:], ref.imag, atol=1e-4, rtol=1e-4)
    assert "analysis" not in TFGridNet.from_preset("tiny").state_dict()  # buffers not saved


def test_multi_microphone_input_uses_every_microphone():
    model = TFGridNet.from_preset("tiny", n_channels=3, consistency="uniform").eval()
    x = torch.randn(2, 3, 1500)
    with torch.no_grad():
        out = model(x)
        other = x.clone()
        other[:, 2] = torch.randn(2, 1500)
        changed = model(other)
    assert out.shape == (2, 2, 1500)
    assert (out.sum(dim=1) - x[:, 0]).abs().max() < 1e-5  # consistent with mic 0
    assert (changed - out).abs().max() > 1e-3  # mic 2 is an input, not ignored
    with pytest.raises(AudioError, match="3 microphones got 1"):
        model(torch.randn(2, 1500))


def test_output_scales_with_the_input():
    # The RMS normalisation makes the network scale-equivariant: f(c x) = c f(x).
    model = TFGridNet.from_preset("tiny").eval()
    x = torch.randn(2, 1200)
    with torch.no_grad():
        torch.testing.assert_close(model(100 * x), 100 * model(x), rtol=1e-4, atol=1e-4)
        assert torch.isfinite(model(torch.zeros(1, 500))).all()


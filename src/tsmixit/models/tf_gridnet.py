"""TF-GridNet (Wang, Cornell, Choi, Lee, Kim & Watanabe, "TF-GridNet: Integrating Full- and
Sub-Band Modeling for Speech Separation", IEEE/ACM TASLP 2023), single- and multi-microphone.

Symbols follow the paper:

    n_fft, hop   STFT window and hop in samples (periodic Hann window)
    D   embedding channels at each time-frequency (T-F) bin
    B   TF-GridNet blocks
    I   kernel, J hop (in bins or frames) of the unfolding before each BiLSTM and of the
        transposed 1-D convolution after it
    H   hidden units of each LSTM direction
    L   attention heads
    E   query/key channels per head and frequency (None: ceil(512 / F), the authors' code's
        ``attn_approx_qk_dim = 512``); F = n_fft / 2 + 1 frequencies

Signal flow for C = n_channels microphones x (batch, C, T) and S = n_sources outputs:

    x = x / std(x)                               (batch, C, T) RMS normalisation (undone last)
    X = STFT(x)                                  (batch, 2C, K, F) real and imaginary parts
    z = gLN(conv3x3(X))                          (batch, K, F, D) channels last from here on
    z = B x GridBlock(z)
    Y = conv3x3(z)                               (batch, 2S, K, F) complex spectral mapping
    s_hat = iSTFT(Y) * std(x)                    (batch, S, T), the source images at mic 0

A GridBlock, with a residual connection around each of its three modules:

    intra-frame full-band module: per frame, LayerNorm over D, unfold I bins with hop J,
        BiLSTM along frequency, transposed conv 2H -> D (kernel I, stride J)
    sub-band temporal module: the same per frequency, along frames
    full-band self-attention: per head, 1x1 projections to E (queries, keys) and D/L
        (values) channels, PReLU and LayerNorm over (channels x frequencies); attention
        across frames of the flattened (channels x frequencies) vectors; the heads'
        outputs concatenated, 1x1 conv, PReLU, LayerNorm over (D x F)

Layer sizes follow the authors' code in ESPnet (``espnet2/enh/separator/
tfgridnet_separator.py``); this is our own implementation (channels-last tensors, the heads'
projections fused into one matrix product each; STFT and iSTFT as fixed convolutions over
zero-padded frames, an exact inverse pair that exports to ONNX and runs on any device, where
ESPnet uses torch.stft's centred, reflect-padded frames; the RMS normalisation uses the
biased standard deviation, defined for a single sample). The output convolution is a 3x3
convolution (the authors' transposed convolution with stride 1 is the same function class
and parameter count). With J = 1 a block computes exactly the authors' block (checked
against their code with shared weights); with J > 1 each path zero-pads only its own axis to
whole unfolding windows (theirs pads both axes before the first path). Multi-microphone
input, as in the paper: the real and imaginary parts of all C microphones are the 2C input
channels; the outputs are the sources at mic 0.

The ``"paper"`` preset (D = 64, B = 6, I = 4, J = 1, H = 256, L = 4, E = 8, 16 ms window
and 8 ms hop at 8 kHz) has 14.44 M parameters, the 14.4 M the paper reports for WSJ0-2mix
(23.5 dB SI-SDRi). These sizes were not read from the paper's text: they reproduce its
parameter count with the STFT of ESPnet's WSJ0-2mix recipe, whose own sizes (D = 48,
H = 192: the ``"espnet"`` preset) give 8.18 M.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsmixit.errors import ConfigError
from tsmixit.models.consistency import mixture_consistency
from tsmixit.models.inputs import as_channels, build_preset

Consistency = Literal["uniform", "energy"] | None

_STFT_8K = {"n_fft": 128, "hop": 64}

PRESETS: dict[str, dict[str, Any]] = {
    # 14.44 M parameters, the paper's 14.4 M for WSJ0-2mix (see the module docstring).
    "paper": {**_STFT_8K, "D": 64, "B": 6, "I": 4, "J": 1, "H": 256, "L": 4},
    # ESPnet's WSJ0-2mix recipe (egs2/wsj0_2mix/enh1, train_enh_tfgridnet_tf_lr-patience3_
    # patience5.yaml): 8.18 M parameters.
    "espnet": {**_STFT_8K, "D": 48, "B": 6, "I": 4, "J": 1, "H": 192, "L": 4},
    # About 0.36 M parameters (the BiLSTMs dominate the CPU time: J = 2 halves their steps).
    "small": {**_STFT_8K, "D": 32, "B": 2, "I": 4, "J": 2, "H": 48, "L": 4, "E": 4},
    # About 33 k parameters, for tests and smoke runs (J = 2 halves the BiLSTMs' steps).
    "tiny": {**_STFT_8K, "D": 16, "B": 1, "I": 4, "J": 2, "H": 16, "L": 2, "E": 4},
}


class STFT(nn.Module):
    """STFT and least-squares iSTFT with a periodic Hann window, written as fixed
    convolutions (non-persistent buffers: no weights in the state dict).

    Frames tile the signal exactly: ``pad`` puts n_fft - hop zeros before (every kept sample
    lies under as many frames as any other) and enough after for whole frames.
    """

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop, self.n_freqs = n_fft, hop, n_fft // 2 + 1
        t = torch.arange(n_fft, dtype=torch.float64)
        f = torch.arange(self.n_freqs, dtype=torch.float64)
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * t / n_fft)  # periodic Hann (W,)
        angle = 2 * math.pi * f[:, None] * t[None] / n_fft  # (F, W)
        analysis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window  # (2F, W)
        # One-sided inverse DFT: bins 1..F-2 count twice; DC and Nyquist once.
        weight = torch.full((self.n_freqs, 1), 2.0, dtype=torch.float64)
        weight[0] = weight[-1] = 1.0
        synthesis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * torch.cat([weight] * 2)
        synthesis = synthesis * window / n_fft  # (2F, W)
        self.register_buffer("analysis", analysis.float().unsqueeze(1), persistent=False)
        self.register_buffer("synthesis", synthesis.float().unsqueeze(1), persistent=False)
        self.register_buffer(
            "window_sq", window.square().float().view(1, 1, -1), persistent=False
        )

    def pad(self, T: int, min_frames: int = 1) -> tuple[int, int, int]:
        """(lead, tail, frames): zeros before and after a T-sample signal, and the number of
        frames that then tile it (at least `min_frames`)."""
        lead = self.n_fft - self.hop
        # ceil((T + lead - hop) / hop) + 1, as (a + b - 1) // b: ONNX's division truncates.
        frames = (T + 2 * lead - self.n_fft + self.hop - 1) // self.hop + 1
        if frames < min_frames:
            frames = min_frames
        tail = (frames - 1) * self.hop + self.n_fft - lead - T
        return lead, tail, frames

    def forward(self, x: Tensor) -> Tensor:
        """(n, T_pad) -> (n, 2F, K): real parts, then imaginary parts."""
        return F.conv1d(x.unsqueeze(1), self.analysis, stride=self.hop)

    def inverse(self, spec: Tensor) -> Tensor:
        """(n, 2F, K) -> (n, T_pad): windowed overlap-add divided by the summed squared
        window (exact inverse of `forward` on the tiled signal)."""
        y = F.conv_transpose1d(spec, self.synthesis, stride=self.hop)  # (n, 1, T_pad)
        ones = torch.ones_like(spec[:1, :1])  # (1, 1, K)
        envelope = F.conv_transpose1d(ones, self.window_sq, stride=self.hop)  # (1, 1, T_pad)
        return (y / envelope.clamp_min(1e-8)).squeeze(1)


class UnfoldBiLSTM(nn.Module):
    """One path of a GridBlock (intra-frame or sub-band temporal): LayerNorm over D, unfold
    I steps with hop J, BiLSTM, transposed conv 2H -> D (kernel I, stride J), crop."""

    def __init__(self, D: int, I: int, J: int, H: int, eps: float) -> None:
        super().__init__()
        self.I, self.J = I, J
        self.norm = nn.LayerNorm(D, eps=eps)
        self.rnn = nn.LSTM(D * I, H, batch_first=True, bidirectional=True)
        self.out = nn.ConvTranspose1d(2 * H, D, I, stride=J)

    def forward(self, seq: Tensor) -> Tensor:
        """(n, steps, D) -> (n, steps, D); steps >= I."""
        I, J = self.I, self.J
        steps = seq.shape[1]
        y = F.pad(self.norm(seq), (0, 0, 0, (J - (steps - I) % J) % J))  # (n, steps_p, D)
        windows = (y.shape[1] - I) // J + 1
        span = J * (windows - 1) + 1
        y = torch.cat([y[:, i : i + span : J] for i in range(I)], dim=-1)  # (n, win, I*D)
        y, _ = self.rnn(y)  # (n, windows, 2H)
        y = self.out(y.transpose(1, 2))  # (n, D, steps_p)
        return y[..., :steps].transpose(1, 2)  # (n, steps, D)


class HeadProjection(nn.Module):
    """Per head: 1x1 projection D -> C, PReLU (one slope per head), LayerNorm over
    (frequencies x C) with per-head gamma, beta: (batch, K, F, D) -> (batch, L, K, F, C)."""

    def __init__(self, D: int, L: int, C: int, n_freqs: int, eps: float) -> None:
        super().__init__()
        self.L, self.C, self.n_freqs, self.eps = L, C, n_freqs, eps
        self.proj = nn.Linear(D, L * C)
        self.slope = nn.Parameter(torch.full((L, 1, 1, 1), 0.25))  # PReLU per head
        self.weight = nn.Parameter(torch.ones(L, 1, n_freqs, C))  # gamma (L, 1, F, C)
        self.bias = nn.Parameter(torch.zeros(L, 1, n_freqs, C))  # beta

    def forward(self, z: Tensor) -> Tensor:
        batch, K, n_freqs, _ = z.shape
        y = self.proj(z).view(batch, K, n_freqs, self.L, self.C).permute(0, 3, 1, 2, 4)
        y = y.contiguous()  # one copy: the elementwise passes below are slow on strided heads
        y = F.relu(y) + self.slope * (y - F.relu(y))  # PReLU, (batch, L, K, F, C)
        y = F.layer_norm(y, (self.n_freqs, self.C), eps=self.eps)  # static shape (ONNX)
        return y * self.weight + self.bias


class FullBandAttention(nn.Module):
    """Self-attention across frames; each frame's query, key and value is the flattened
    (channels x frequencies) output of its head's projection."""

    def __init__(self, D: int, L: int, E: int, n_freqs: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.query = HeadProjection(D, L, E, n_freqs, eps)
        self.key = HeadProjection(D, L, E, n_freqs, eps)
        self.value = HeadProjection(D, L, D // L, n_freqs, eps)
        self.out = nn.Linear(D, D)
        self.out_act = nn.PReLU()
        self.out_norm = nn.LayerNorm((n_freqs, D), eps=eps)  # over (F x D) per frame

    def forward(self, z: Tensor) -> Tensor:
        batch, K, n_freqs, D = z.shape
        q = self.query(z).flatten(3)  # (batch, L, K, F*E)
        k = self.key(z).flatten(3)  # (batch, L, K, F*E)
        v = self.value(z)  # (batch, L, K, F, D/L)
        heads = F.scaled_dot_product_attention(q, k, v.flatten(3))  # (batch, L, K, F*D/L)
        heads = heads.view(v.shape).permute(0, 2, 3, 1, 4).reshape(batch, K, n_freqs, D)
        return self.out_norm(self.out_act(self.out(heads)))  # (batch, K, F, D)


class GridBlock(nn.Module):
    """Intra-frame full-band BiLSTM, sub-band temporal BiLSTM, full-band self-attention."""

    def __init__(
        self, D: int, I: int, J: int, H: int, L: int, E: int, n_freqs: int, eps: float
    ) -> None:
        super().__init__()
        self.intra = UnfoldBiLSTM(D, I, J, H, eps)
        self.inter = UnfoldBiLSTM(D, I, J, H, eps)
        self.attention = FullBandAttention(D, L, E, n_freqs, eps)

    def forward(self, z: Tensor) -> Tensor:
        batch, K, n_freqs, D = z.shape  # (batch, K frames, F, D)
        z = z + self.intra(z.reshape(batch * K, n_freqs, D)).view(batch, K, n_freqs, D)
        across = z.transpose(1, 2).reshape(batch * n_freqs, K, D)  # (batch*F, K, D)
        z = z + self.inter(across).view(batch, n_freqs, K, D).transpose(1, 2)
        return z + self.attention(z)  # (batch, K, F, D)


class TFGridNet(nn.Module):
    """TF-GridNet separating a mixture into ``n_sources`` waveforms.

    Args:
        n_sources: S, the number of outputs (4 for a MixIT teacher, 2 for the student).
        n_fft: STFT window (even).  hop: STFT hop (at most n_fft / 2).
        D: embedding channels.  B: blocks.  I, J: unfolding kernel and hop.
        H: hidden units per LSTM direction.  L: attention heads (dividing D).
        E: query/key channels per head and frequency (None: ceil(512 / F)).
        eps: epsilon of the normalisations.
        consistency: None, or mixture consistency ("uniform" or "energy" weights) projecting
            the outputs so that they sum to the mixture (at mic 0 for several microphones).
        n_channels: microphones; their real and imaginary parts are the input channels.

    ``forward`` takes (batch, time) or (batch, n_channels, time) of any length >= 1 and returns
    (batch, n_sources, time). ``hparams`` holds every argument: ``TFGridNet(**m.hparams)``
    rebuilds the architecture.
    """

    #: The named settings `from_preset` builds.
    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS
    #: Training under CPU bfloat16 autocast (plain autocast: its BLSTMs, attention and
    #: linear layers reach the bf16 units) measures faster than float32 at the same quality
    #: (benchmarks/bench_bf16_separators.py, bench_train_step.py --quality --arch tf_gridnet).
    supports_cpu_bf16: ClassVar[bool] = True

    def __init__(
        self,
        n_sources: int = 2,
        n_fft: int = 128,
        hop: int = 64,
        D: int = 64,
        B: int = 6,
        I: int = 4,
        J: int = 1,
        H: int = 256,
        L: int = 4,
        E: int | None = None,
        eps: float = 1e-5,
        consistency: Consistency = None,
        n_channels: int = 1,
    ) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {
            "n_sources": n_sources,
            "n_fft": n_fft,
            "hop": hop,
            "D": D,
            "B": B,
            "I": I,
            "J": J,
            "H": H,
            "L": L,
            "E": E,
            "eps": eps,
            "consistency": consistency,
            "n_channels": n_channels,
        }
        _check_hparams(self.hparams)
        self.n_sources, self.n_channels, self.consistency = n_sources, n_channels, consistency
        self.I = I
        n_freqs = n_fft // 2 + 1
        E = math.ceil(512 / n_freqs) if E is None else E
        self.stft = STFT(n_fft, hop)
        self.in_conv = nn.Conv2d(2 * n_channels, D, 3, padding=1)
        self.in_norm = nn.GroupNorm(1, D, eps=eps)
        self.blocks = nn.ModuleList(GridBlock(D, I, J, H, L, E, n_freqs, eps) for _ in range(B))
        self.out_conv = nn.Conv2d(D, 2 * n_sources, 3, padding=1)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TFGridNet:
        """Build a preset ("paper", "espnet", "small", "tiny"), overriding any argument."""
        return build_preset(cls, name, overrides, "TF-GridNet")

    def forward(self, mixture: Tensor) -> Tensor:
        """Separate ``mixture`` (batch, time) or (batch, n_channels, time) into
        (batch, n_sources, time) waveforms, the source images at mic 0."""
        x = as_channels(mixture, self.n_channels, "TF-GridNet")  # (batch, mics, T)
        batch, mics, T = x.shape
        std = x.std(dim=(1, 2), keepdim=True, correction=0).clamp_min(1e-8)  # (batch, 1, 1)
        lead, tail, frames = self.stft.pad(T, min_frames=self.I)
        padded = F.pad(x / std, (lead, tail))  # (batch, mics, T_pad)
        spec = self.stft(padded.reshape(batch * mics, -1))  # (batch*mics, 2F, K)
        n_freqs = spec.shape[1] // 2
        spec = spec.view(batch, mics, 2, n_freqs, frames).permute(0, 2, 1, 4, 3)
        spec = spec.reshape(batch, 2 * mics, frames, n_freqs)  # (batch, 2C, K, F): re, im
        z = self.in_norm(self.in_conv(spec)).permute(0, 2, 3, 1)  # (batch, K, F, D)
        for block in self.blocks:
            z = block(z)  # (batch, K, F, D)
        out = self.out_conv(z.permute(0, 3, 1, 2))  # (batch, 2S, K, F)
        out = out.view(batch, self.n_sources, 2, frames, n_freqs).transpose(3, 4)
        out = out.reshape(batch * self.n_sources, 2 * n_freqs, frames)  # (batch*S, 2F, K)
        est = self.stft.inverse(out).view(batch, self.n_sources, -1)  # (batch, S, T_pad)
        est = est[..., lead : lead + T] * std  # (batch, S, T)
        if self.consistency is not None:
            est = mixture_consistency(est, x[:, 0], weights=self.consistency)
        return est


def _check_hparams(hp: dict[str, Any]) -> None:
    """Raise ConfigError naming the first impossible hyperparameter."""
    for key in ("n_sources", "n_fft", "hop", "D", "B", "I", "J", "H", "L", "n_channels"):
        value = hp[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"TF-GridNet {key} must be a positive integer, got {value!r}")
    E = hp["E"]
    if E is not None and (isinstance(E, bool) or not isinstance(E, int) or E < 1):
        raise ConfigError(f"TF-GridNet E must be a positive integer or None, got {E!r}")
    if hp["n_fft"] % 2:
        raise ConfigError(f"TF-GridNet n_fft must be even, got {hp['n_fft']}")
    if hp["hop"] > hp["n_fft"] // 2:
        raise ConfigError(
            f"TF-GridNet hop must be at most n_fft / 2 = {hp['n_fft'] // 2} (the windows must "
            f"overlap for the iSTFT), got {hp['hop']}"
        )
    if hp["D"] % hp["L"]:
        raise ConfigError(
            f"TF-GridNet L (attention heads) must divide D, got D={hp['D']}, L={hp['L']}"
        )
    if hp["I"] > hp["n_fft"] // 2 + 1:
        raise ConfigError(
            f"TF-GridNet I={hp['I']} exceeds the {hp['n_fft'] // 2 + 1} frequencies of "
            f"n_fft={hp['n_fft']}"
        )
    if hp["J"] > hp["I"]:
        raise ConfigError(
            f"TF-GridNet J must not exceed I (the unfolding would skip bins), got "
            f"I={hp['I']}, J={hp['J']}"
        )
    eps = hp["eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ConfigError(f"TF-GridNet eps must be a positive number, got {eps!r}")
    if hp["consistency"] not in (None, "uniform", "energy"):
        raise ConfigError(
            "TF-GridNet consistency must be None, 'uniform' or 'energy', "
            f"got {hp['consistency']!r}"
        )

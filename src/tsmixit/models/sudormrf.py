"""SuDoRM-RF (Tzinis, Wang & Smaragdis, "Sudo rm -rf: Efficient networks for universal audio
source separation", MLSP 2020) and its improved version, SuDoRM-RF++ (Tzinis, Wang, Jiang &
Smaragdis, "Compute and memory efficient universal sound source separation", J. Signal
Process. Syst. 2022), single-channel.

Symbols (the MLSP paper's in brackets):

    N   encoder bases (C_E = 512)     L   encoder kernel in samples (K_E = 21); hop L // 2
    B   channels between the U-ConvBlocks (C = 128)
    H   channels inside a U-ConvBlock (C_U = 512)
    Q   successive downsamplings inside a U-ConvBlock (Q = 4): Q + 1 resolutions
    R   U-ConvBlocks (16, 8, 4 for SuDoRM-RF 1.0x, 0.5x, 0.25x)

A U-ConvBlock: 1x1 conv B -> H (+ gLN, PReLU); a depthwise conv (kernel 5) at full
resolution, then Q depthwise convs (kernel 5, stride 2) each halving the previous one; from
the coarsest up, nearest-neighbour upsampling by 2 and addition to the next finer level;
gLN + PReLU; back to B channels and a residual connection.

Signal flow for a mixture x (batch, T) with S = n_sources outputs:

    w = encoder(x)                          (batch, N, T')  T' frames, hop L // 2
    y = R x UConvBlock(1x1(gLN(w)))         (batch, B, T')
    m = masks(y)                            (batch, S, N, T')
    s_hat = decoder(m * w)                  (batch, S, T)

The two variants, as in the authors' code (github.com/etzinis/sudo_rm_rf, ``sudormrf.py``
and ``improved_sudormrf.py``):

* ``variant="original"``: encoder with bias and a ReLU; per-channel PReLUs; a block ends
  with 1x1 H -> B + gLN, then gLN + PReLU of (that + input); masks from a 1x1 B -> N conv and
  a (N+1)-tap convolution along the basis axis, softmax over sources (sigmoid for one);
  one decoder per source (grouped transposed conv with bias).
* ``variant="improved"`` (SuDoRM-RF++): bias-free encoder without nonlinearity; single-slope
  PReLUs; a block ends with a plain 1x1 H -> B added to its input; masks from PReLU + 1x1
  B -> S*N with a ReLU; one bias-free decoder mapping all S masked representations to the S
  outputs.

With shared weights and the same framing, both variants compute what the authors' classes
compute; their ``upsampling_depth`` is Q + 1 (the published 1.0x, 0.5x and 0.25x sizes need
upsampling_depth = 5, i.e. Q = 4 downsamplings, as in their README's commands). Lengths:
L - L // 2 zeros before the signal and at least as many after, up to a frame count T' that
is a multiple of 2^Q (every downsampling halves exactly); the outputs are cropped to T.
SuDoRM-RF has no published multi-microphone form: n_channels must be 1.

Training on CPU, the one-slope PReLUs and each block's full-resolution depthwise convolution
are Conv-TasNet's layers (``PReLU``, ``DepthwiseConv``), which take the hand-written backward
passes of ``tsmixit.models._cpu_kernels``; the same parameters and values as the plain torch
layers, and plain torch everywhere else (inference, export, GPU).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsmixit.errors import ConfigError
from tsmixit.models.consistency import mixture_consistency
from tsmixit.models.conv_tasnet import DepthwiseConv, PReLU
from tsmixit.models.inputs import as_channels, build_preset

Variant = Literal["original", "improved"]
Consistency = Literal["uniform", "energy"] | None

_BASE = {"N": 512, "L": 21, "B": 128, "H": 512, "Q": 4}

PRESETS: dict[str, dict[str, Any]] = {
    # MLSP 2020, Table 2: 2.66 M, 1.42 M and 0.79 M parameters (17.02, 15.37 and 13.39 dB
    # SI-SDRi on WSJ0-2mix); here 2.66 M, 1.41 M and 0.79 M.
    "1.0x": {**_BASE, "R": 16, "variant": "original"},
    "0.5x": {**_BASE, "R": 8, "variant": "original"},
    "0.25x": {**_BASE, "R": 4, "variant": "original"},
    # The authors' pretrained improved model for WSJ0-2mix (16 blocks, 512 bases; 5.02 M
    # parameters and 17.3 dB SI-SDRi in their repository's README).
    "improved": {"N": 512, "L": 21, "B": 256, "H": 512, "Q": 4, "R": 16, "variant": "improved"},
    # About 0.3 M parameters.
    "small": {"N": 128, "L": 17, "B": 64, "H": 256, "Q": 4, "R": 6, "variant": "improved"},
    # About 31 k parameters, for tests and smoke runs.
    "tiny": {"N": 64, "L": 17, "B": 32, "H": 64, "Q": 3, "R": 3, "variant": "improved"},
}

_EPS = 1e-8


def _gln(channels: int) -> nn.GroupNorm:
    """gLN: mean and variance over all channels and frames, per-channel gamma and beta."""
    return nn.GroupNorm(1, channels, eps=_EPS)


class UConvBlock(nn.Module):
    """One U-ConvBlock of either variant (see the module docstring)."""

    def __init__(self, B: int, H: int, Q: int, variant: Variant) -> None:
        super().__init__()
        self.original = variant == "original"
        slopes_h = H if self.original else 1  # the original's PReLUs are per channel
        self.proj = nn.Conv1d(B, H, 1)
        self.proj_norm = _gln(H)
        self.proj_act = PReLU(slopes_h)
        # Level 0 keeps the resolution; level q > 0 halves level q-1's.
        self.levels = nn.ModuleList(
            [DepthwiseConv(H, 5, 1, causal=False)]  # = Conv1d(H, H, 5, padding=2, groups=H)
            + [nn.Conv1d(H, H, 5, stride=2, padding=2, groups=H) for _ in range(Q)]
        )
        self.level_norms = nn.ModuleList(_gln(H) for _ in range(Q + 1))
        self.fuse_norm = _gln(H)
        self.fuse_act = PReLU(slopes_h)
        self.out = nn.Conv1d(H, B, 1)
        if self.original:
            self.out_norm = _gln(B)
            self.res_norm = _gln(B)
            self.res_act = nn.PReLU(B)

    def forward(self, x: Tensor) -> Tensor:
        y = self.proj_act(self.proj_norm(self.proj(x)))  # (batch, H, T')
        levels = []
        for conv, norm in zip(self.levels, self.level_norms, strict=True):
            y = norm(conv(y))  # (batch, H, T' / 2^q)
            levels.append(y)
        fused = levels.pop()
        while levels:
            coarse = fused.unsqueeze(-1).expand(-1, -1, -1, 2).flatten(2)  # nearest, x2
            fused = levels.pop() + coarse  # (batch, H, T' / 2^q)
        out = self.out(self.fuse_act(self.fuse_norm(fused)))  # (batch, B, T')
        if self.original:
            return self.res_act(self.res_norm(self.out_norm(out) + x))
        return out + x


class SuDoRMRF(nn.Module):
    """SuDoRM-RF separating a mixture into ``n_sources`` waveforms.

    Args:
        n_sources: S, the number of outputs (4 for a MixIT teacher, 2 for the student).
        N: encoder bases.  L: encoder kernel in samples (>= 2; hop L // 2).
        B: channels between blocks.  H: channels inside a block.
        Q: downsamplings per block.  R: number of U-ConvBlocks.
        variant: "original" (MLSP 2020) or "improved" (SuDoRM-RF++, JSPS 2022).
        consistency: None, or mixture consistency ("uniform" or "energy" weights) projecting
            the outputs so that they sum to the mixture.
        n_channels: must be 1: SuDoRM-RF has no published multi-microphone form.

    ``forward`` takes (batch, time) or (batch, 1, time) of any length >= 1 and returns
    (batch, n_sources, time). ``hparams`` holds every argument: ``SuDoRMRF(**m.hparams)``
    rebuilds the architecture.
    """

    #: The named settings `from_preset` builds.
    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS
    #: Training under CPU bfloat16 autocast measures slower than float32 (its depthwise
    #: convolutions do not reach the bf16 units; benchmarks/bench_bf16_separators.py), so
    #: `train.precision: auto` keeps float32.
    supports_cpu_bf16: ClassVar[bool] = False

    def __init__(
        self,
        n_sources: int = 2,
        N: int = 512,
        L: int = 21,
        B: int = 128,
        H: int = 512,
        Q: int = 4,
        R: int = 16,
        variant: Variant = "original",
        consistency: Consistency = None,
        n_channels: int = 1,
    ) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {
            "n_sources": n_sources,
            "N": N,
            "L": L,
            "B": B,
            "H": H,
            "Q": Q,
            "R": R,
            "variant": variant,
            "consistency": consistency,
            "n_channels": n_channels,
        }
        _check_hparams(self.hparams)
        self.n_sources, self.n_channels = n_sources, n_channels
        self.N, self.L, self.hop, self.Q = N, L, L // 2, Q
        self.original = variant == "original"
        self.consistency = consistency
        S = n_sources
        self.encoder = nn.Conv1d(1, N, L, stride=self.hop, bias=self.original)
        self.in_norm = _gln(N)
        self.bottleneck = nn.Conv1d(N, B, 1)
        self.blocks = nn.Sequential(*(UConvBlock(B, H, Q, variant) for _ in range(R)))
        if self.original:
            self.to_bases = nn.Conv1d(B, N, 1) if B != N else None
            # Each source's mask at basis n weighs all bases around n: an (N+1)-tap
            # convolution along the basis axis, one kernel per source.
            self.mask_conv = nn.Conv2d(1, S, (N + 1, 1))
            self.decoder = nn.ConvTranspose1d(S * N, S, L, stride=self.hop, groups=S)
        else:
            self.mask_act = PReLU()
            self.mask_conv1x1 = nn.Conv1d(B, S * N, 1)
            self.decoder = nn.ConvTranspose1d(S * N, S, L, stride=self.hop, bias=False)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SuDoRMRF:
        """Build a preset ("1.0x", "0.5x", "0.25x", "improved", "small", "tiny"),
        overriding any argument."""
        return build_preset(cls, name, overrides, "SuDoRM-RF")

    def _masks(self, y: Tensor) -> Tensor:
        """(batch, B, T') -> masks (batch, S, N, T')."""
        batch, frames = y.shape[0], y.shape[-1]
        if self.original:
            if self.to_bases is not None:
                y = self.to_bases(y)  # (batch, N, T')
            pad = (0, 0, self.N // 2, self.N - self.N // 2)  # N+1 taps -> N outputs
            logits = self.mask_conv(F.pad(y.unsqueeze(1), pad))  # (batch, S, N, T')
            if self.n_sources == 1:
                return torch.sigmoid(logits)
            return torch.softmax(logits, dim=1)
        logits = self.mask_conv1x1(self.mask_act(y))  # (batch, S*N, T')
        return F.relu(logits.view(batch, self.n_sources, self.N, frames))

    def forward(self, mixture: Tensor) -> Tensor:
        """Separate ``mixture`` (batch, time) or (batch, 1, time) into (batch, n_sources,
        time) waveforms."""
        x = as_channels(mixture, self.n_channels, "SuDoRM-RF")  # (batch, 1, T)
        T = x.shape[-1]
        # L - hop zeros before, so that the first sample lies under as many frames as any;
        # after, at least as many and up to a frame count T' that is a multiple of 2^Q:
        # T_pad = (T' - 1) hop + L.
        hop, lead, multiple = self.hop, self.L - self.hop, 2**self.Q
        # Ceilings as (a + b - 1) // b of non-negative a: ONNX's integer division truncates.
        frames = (T + 2 * lead - self.L + hop - 1) // hop + 1  # frames covering the padding
        frames = (frames + multiple - 1) // multiple * multiple
        tail = (frames - 1) * hop + self.L - lead - T
        x = F.pad(x, (lead, tail))  # (batch, 1, T_pad)
        w = self.encoder(x)  # (batch, N, T')
        if self.original:
            w = F.relu(w)
        y = self.blocks(self.bottleneck(self.in_norm(w)))  # (batch, B, T')
        masked = self._masks(y) * w.unsqueeze(1)  # (batch, S, N, T')
        est = self.decoder(masked.flatten(1, 2))  # (batch, S, T_pad)
        est = est[..., lead : lead + T]  # (batch, S, T)
        if self.consistency is not None:
            est = mixture_consistency(est, x[:, 0, lead : lead + T], weights=self.consistency)
        return est


def _check_hparams(hp: dict[str, Any]) -> None:
    """Raise ConfigError naming the first impossible hyperparameter."""
    for key in ("n_sources", "N", "L", "B", "H", "R", "n_channels"):
        value = hp[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"SuDoRM-RF {key} must be a positive integer, got {value!r}")
    Q = hp["Q"]
    if isinstance(Q, bool) or not isinstance(Q, int) or Q < 0:
        raise ConfigError(f"SuDoRM-RF Q must be a non-negative integer, got {Q!r}")
    if hp["L"] < 2:
        raise ConfigError(f"SuDoRM-RF L must be at least 2 (the hop is L // 2), got {hp['L']}")
    if hp["variant"] not in ("original", "improved"):
        raise ConfigError(
            f"SuDoRM-RF variant must be 'original' or 'improved', got {hp['variant']!r}"
        )
    if hp["consistency"] not in (None, "uniform", "energy"):
        raise ConfigError(
            "SuDoRM-RF consistency must be None, 'uniform' or 'energy', "
            f"got {hp['consistency']!r}"
        )
    if hp["n_channels"] != 1:
        raise ConfigError(
            f"SuDoRM-RF n_channels={hp['n_channels']}: SuDoRM-RF has no published "
            "multi-microphone form; set n_channels=1 (the model is fed microphone 0) or choose "
            "model.arch='conv_tasnet' or 'tf_gridnet' for multi-channel input"
        )

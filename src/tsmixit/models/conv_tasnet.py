"""Conv-TasNet (Luo & Mesgarani, "Conv-TasNet: Surpassing Ideal Time-Frequency Magnitude
Masking for Speech Separation", IEEE/ACM TASLP 2019), single- and multi-channel.

Symbols follow the paper's Table I:

    N   filters in the encoder (and basis signals in the decoder)
    L   filter length in samples; the encoder hops by L/2
    B   channels of the bottleneck and of the residual paths
    H   channels in the convolutional blocks
    P   kernel size of the depthwise convolutions
    X   convolutional blocks per repeat (dilations 1, 2, ..., 2^(X-1))
    R   repeats
    Sc  channels of the skip-connection paths

Signal flow for a mixture x (batch, T) with C = n_sources outputs:

    w = ReLU(encoder(x))                     (batch, N, K)   K frames, hop L/2
    m = TCN(w)                               (batch, C, N, K) masks (``MaskNetwork``)
    s_hat_c = decoder(m_c * w)               (batch, C, T)

The multi-channel model, in the style of the TS-MixIT authors' group (docs/method.md), adds
a spatial encoder: a 2-D convolution with S filters over (microphones x time), kernel
(n_channels, L), hop (1, L/2). Its output is concatenated with the reference microphone's
(mic 0) encoder output before the mask network's bottleneck; the masks still apply to the
reference representation, so the outputs are the source images at mic 0.

Training speed and memory on CPU (``benchmarks/bench_train_step.py`` prints them): gLN is
torch's fused group-norm kernel with one group; each PReLU + gLN pair keeps only the PReLU
input for the backward pass and recomputes the PReLU there (4 instead of 6 activations kept
per block); PReLU and the depthwise convolutions use the hand-written CPU backward passes of
``tsmixit.models._cpu_kernels``; the skip paths accumulate in place; the last block has no
residual convolution (its output would be unused); ``checkpointing=True`` recomputes each
repeat in the backward pass to trade time for activation memory. Export and GPU use plain
torch operations.

Inference on CPU (no gradients, gLN) runs the same layers on the time-major path of
``tsmixit.models._cpu_kernels`` (1x1 convolutions as matrix products with the frames as rows,
each gLN folded into the layer after it, shifted multiply-adds for the depthwise convolutions):
float32 within about 1e-6 of the layers, and inside ``allow_bf16_inference`` (what
``tsmixit.inference.Separator`` runs) bfloat16 products where the CPU has bfloat16 units and
they pay. cLN models keep the layers. ``benchmarks/bench_separate.py`` measures it against
Asteroid's ConvTasNet.

Under CPU bfloat16 autocast (Lightning's ``precision="bf16-mixed"``) training takes the
bfloat16 path of ``tsmixit.models._cpu_kernels`` (1x1 convolutions as bfloat16 matrix
products, bfloat16 activations, float32 master weights) where the CPU has bfloat16 units and
they measure faster; inference and CPUs without them run the exact float32 layers with
autocast off. Without autocast training is unchanged: float32 results are bit for bit the same.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import tsmixit.models._cpu_kernels as _cpu_kernels
from tsmixit.errors import ConfigError
from tsmixit.models._cpu_kernels import DepthwiseFunction, PReLUFunction, PReLUGroupNormFunction
from tsmixit.models.consistency import mixture_consistency
from tsmixit.models.inputs import as_channels, build_preset

Norm = Literal["gLN", "cLN"]
MaskActivation = Literal["relu", "sigmoid", "softmax"]
Consistency = Literal["uniform", "energy"] | None
BF16 = torch.bfloat16

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's best non-causal system (15.3 dB SI-SNRi on WSJ0-2mix): 4.98 M parameters
    # here, 5.05 M in the original, which keeps the last block's unused residual conv.
    "paper": {"N": 512, "L": 16, "B": 128, "H": 512, "P": 3, "X": 8, "R": 3},
    # The TS-MixIT authors' code (defaults inherited from their toolkit).
    "authors": {"N": 256, "L": 20, "B": 256, "H": 512, "P": 3, "X": 8, "R": 4},
    # About 0.38 M parameters: receptive field about 4 s, usable quality per CPU second.
    "small": {"N": 128, "L": 16, "B": 64, "H": 128, "P": 3, "X": 7, "R": 2},
    # About 56 k parameters (2 outputs), for tests, smoke runs and the CPU demo.
    "tiny": {"N": 32, "L": 16, "B": 32, "H": 64, "P": 3, "X": 4, "R": 2},
}

_EPS = 1e-8


class CumulativeLayerNorm(nn.Module):
    """cLN, the paper's normalisation for causal systems (eq. 12): frame k of f (batch, C, K)
    is normalised with the mean and variance of all channels over frames 1..k,

        cLN(f_k) = (f_k - E[f_{t<=k}]) / sqrt(Var[f_{t<=k}] + eps) * gamma + beta.

    Written by hand because torch has no cumulative normalisation; the running sums are kept
    in float64 so that E[f^2] - E[f]^2 does not cancel badly on long inputs.
    """

    def __init__(self, channels: int, eps: float = _EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, 1))  # gamma (C, 1)
        self.bias = nn.Parameter(torch.zeros(channels, 1))  # beta (C, 1)

    def forward(self, f: Tensor) -> Tensor:
        channels, frames = f.shape[1], f.shape[2]
        count = channels * torch.arange(1, frames + 1, device=f.device, dtype=torch.float64)
        mean = f.sum(dim=1, dtype=torch.float64).cumsum(dim=-1) / count  # (batch, K)
        power = f.square().sum(dim=1, dtype=torch.float64).cumsum(dim=-1) / count  # (batch, K)
        rstd = (power - mean.square()).clamp_min(0.0).add(self.eps).rsqrt()  # (batch, K)
        scale = rstd.to(f.dtype).unsqueeze(1)  # (batch, 1, K)
        shift = (mean * rstd).to(f.dtype).unsqueeze(1)  # (batch, 1, K)
        return (f * scale - shift) * self.weight + self.bias  # (batch, C, K)


class PReLU(nn.PReLU):
    """nn.PReLU (one slope, same parameter name) using ``PReLUFunction``'s backward when
    training on CPU; plain ``F.prelu`` otherwise (inference, export, GPU)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.device.type == "cpu" and self.weight.numel() == 1:
            return PReLUFunction.apply(x, self.weight)
        return F.prelu(x, self.weight)


class PReLUNorm(nn.Module):
    """PReLU followed by gLN or cLN, the pair that appears twice in every block; gLN training
    on CPU goes through ``PReLUGroupNormFunction`` (keeps the PReLU input only)."""

    def __init__(self, norm: Norm, channels: int) -> None:
        super().__init__()
        self.act = PReLU()
        self.norm = make_norm(norm, channels)

    def forward(self, x: Tensor) -> Tensor:
        gln = isinstance(self.norm, nn.GroupNorm)
        if gln and torch.is_grad_enabled() and x.device.type == "cpu":
            return PReLUGroupNormFunction.apply(
                x, self.act.weight, self.norm.weight, self.norm.bias, self.norm.eps
            )
        return self.norm(self.act(x))


class DepthwiseConv(nn.Conv1d):
    """Depthwise convolution (kernel P, dilation d) returning as many frames as it gets:
    causal pads (P-1)d frames in the past, otherwise the padding is split around the frame.
    Training on CPU uses ``DepthwiseFunction``'s backward; otherwise plain ``F.conv1d``."""

    def __init__(self, channels: int, P: int, dilation: int, causal: bool) -> None:
        super().__init__(channels, channels, P, dilation=dilation, groups=channels)
        total = (P - 1) * dilation
        self.pad = (total, 0) if causal else (total // 2, total - total // 2)

    def forward(self, x: Tensor) -> Tensor:
        d = self.dilation[0]
        if torch.is_grad_enabled() and x.device.type == "cpu":
            return DepthwiseFunction.apply(x, self.weight, self.bias, d, self.pad)
        return F.conv1d(F.pad(x, self.pad), self.weight, self.bias, dilation=d, groups=x.shape[1])


def make_norm(norm: Norm, channels: int) -> nn.Module:
    """gLN (eq. 11: mean and variance over all channels and frames, per-channel gamma, beta)
    is exactly GroupNorm with one group; cLN is the cumulative layer norm."""
    if norm == "gLN":
        return nn.GroupNorm(1, channels, eps=_EPS)
    return CumulativeLayerNorm(channels)


class ConvBlock(nn.Module):
    """One 1-D convolutional block (Fig. 1C): 1x1 conv B -> H, PReLU, norm, depthwise conv
    (kernel P, dilation d), PReLU, norm, then 1x1 convs H -> B (residual) and H -> Sc (skip).
    ``residual=False`` drops the residual conv (the last block's output is never used)."""

    def __init__(
        self,
        B: int,
        H: int,
        P: int,
        Sc: int,
        dilation: int,
        norm: Norm,
        causal: bool,
        residual: bool,
    ) -> None:
        super().__init__()
        self.in_conv = nn.Conv1d(B, H, 1)
        self.act_norm1 = PReLUNorm(norm, H)
        self.depthwise = DepthwiseConv(H, P, dilation, causal)
        self.act_norm2 = PReLUNorm(norm, H)
        self.res_conv = nn.Conv1d(H, B, 1) if residual else None
        self.skip_conv = nn.Conv1d(H, Sc, 1)

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        y = self.act_norm1(self.in_conv(x))  # (batch, H, K)
        y = self.act_norm2(self.depthwise(y))  # (batch, H, K)
        residual = self.res_conv(y) if self.res_conv is not None else None  # (batch, B, K)
        return residual, self.skip_conv(y)  # skip (batch, Sc, K)


class MaskNetwork(nn.Module):
    """The mask network, a temporal convolutional network (TCN, Fig. 1B): norm and 1x1
    bottleneck to B channels, R repeats of X blocks with dilations 2^0..2^(X-1), summed skip
    outputs, PReLU, 1x1 conv to n_sources * N mask channels and the mask nonlinearity.
    ``ConvTasNet`` keeps it as its attribute ``separator`` (state-dict keys ``separator.*``)."""

    def __init__(
        self,
        in_channels: int,
        n_sources: int,
        N: int,
        B: int,
        H: int,
        P: int,
        X: int,
        R: int,
        Sc: int,
        norm: Norm,
        causal: bool,
        mask_activation: MaskActivation,
        checkpointing: bool,
    ) -> None:
        super().__init__()
        self.n_sources, self.N = n_sources, N
        self.mask_activation = mask_activation
        self.checkpointing = checkpointing
        self.in_norm = make_norm(norm, in_channels)
        self.bottleneck = nn.Conv1d(in_channels, B, 1)
        self.repeats = nn.ModuleList(
            nn.ModuleList(
                ConvBlock(B, H, P, Sc, 2**x, norm, causal, residual=(r, x) != (R - 1, X - 1))
                for x in range(X)
            )
            for r in range(R)
        )
        self.out_act = PReLU()
        self.mask_conv = nn.Conv1d(Sc, n_sources * N, 1)

    @staticmethod
    def _run_repeat(blocks: nn.ModuleList, x: Tensor) -> tuple[Tensor, Tensor]:
        """X blocks: returns the residual stream (batch, B, K) and their summed skip outputs."""
        skip: Tensor | None = None
        for block in blocks:
            residual, s = block(x)
            if residual is not None:
                x = x + residual  # (batch, B, K); not in place: the next block saves x
            skip = s if skip is None else skip.add_(s)  # (batch, Sc, K); add saves nothing
        assert skip is not None
        return x, skip

    def forward(self, w: Tensor, bf16: bool = False) -> Tensor:
        """w (batch, N_in, K) -> masks (batch, C, N, K); ``bf16``: train on the bfloat16 path
        of ``_cpu_kernels.mask_network_bf16`` (gLN only)."""
        if bf16:
            return _cpu_kernels.mask_network_bf16(self, w)
        x = self.bottleneck(self.in_norm(w))  # (batch, B, K)
        skip: Tensor | None = None
        for blocks in self.repeats:
            if self.checkpointing and torch.is_grad_enabled():
                x, s = checkpoint(self._run_repeat, blocks, x, use_reentrant=False)
            else:
                x, s = self._run_repeat(blocks, x)
            skip = s if skip is None else skip.add_(s)  # (batch, Sc, K)
        assert skip is not None
        masks = self.mask_conv(self.out_act(skip))  # (batch, C*N, K)
        masks = masks.view(masks.shape[0], self.n_sources, self.N, -1)  # (batch, C, N, K)
        if self.mask_activation == "relu":
            return F.relu(masks)
        if self.mask_activation == "sigmoid":
            return torch.sigmoid(masks)
        return torch.softmax(masks, dim=1)


class ConvTasNet(nn.Module):
    """Conv-TasNet separating a mixture into ``n_sources`` waveforms.

    Args:
        n_sources: C, the number of outputs (4 for a MixIT teacher, 2 for the student).
        N: encoder filters.  L: filter length in samples (even; hop L/2).
        B: bottleneck channels.  H: channels in the conv blocks.  P: depthwise kernel size.
        X: blocks per repeat.  R: repeats.  Sc: skip channels (None: Sc = B, as in the paper).
        norm: "gLN" (global layer norm) or "cLN" (cumulative layer norm, needed when causal).
        causal: past-only depthwise convolutions and cLN (latency L samples).
        mask_activation: "relu" (the paper's best), "sigmoid" or "softmax" over sources.
        consistency: None, or mixture consistency ("uniform" or "energy" weights) projecting
            the outputs so that they sum to the mixture (at mic 0 for several microphones).
        n_channels: microphones; >= 2 adds the spatial encoder.
        S: spatial encoder filters (used only when n_channels >= 2); their outputs pass a
            ReLU like the 1-D encoder's (our choice: the description names no nonlinearity).
        checkpointing: recompute each repeat in the backward pass (less memory, slower).

    ``forward`` takes (batch, time) or (batch, n_channels, time) of any length >= 1 and returns
    (batch, n_sources, time). ``hparams`` holds every argument: ``ConvTasNet(**m.hparams)``
    rebuilds the architecture.
    """

    #: The named settings `from_preset` builds.
    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS
    #: Training under CPU bfloat16 autocast takes the bfloat16 path (see ``forward``).
    supports_cpu_bf16: ClassVar[bool] = True

    def __init__(
        self,
        n_sources: int = 2,
        N: int = 512,
        L: int = 16,
        B: int = 128,
        H: int = 512,
        P: int = 3,
        X: int = 8,
        R: int = 3,
        Sc: int | None = None,
        norm: Norm = "gLN",
        causal: bool = False,
        mask_activation: MaskActivation = "relu",
        consistency: Consistency = None,
        n_channels: int = 1,
        S: int = 30,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {
            "n_sources": n_sources,
            "N": N,
            "L": L,
            "B": B,
            "H": H,
            "P": P,
            "X": X,
            "R": R,
            "Sc": Sc,
            "norm": norm,
            "causal": causal,
            "mask_activation": mask_activation,
            "consistency": consistency,
            "n_channels": n_channels,
            "S": S,
            "checkpointing": checkpointing,
        }
        _check_hparams(self.hparams)
        self.n_sources, self.L, self.stride = n_sources, L, L // 2
        self.n_channels, self.consistency = n_channels, consistency
        # Encoder U (eq. 1) on the reference microphone: (batch, 1, T) -> (batch, N, K).
        self.encoder = nn.Conv1d(1, N, L, stride=L // 2, bias=False)
        # Spatial encoder: (batch, 1, mics, T) -> (batch, S, 1, K).
        self.spatial_encoder = (
            nn.Conv2d(1, S, (n_channels, L), stride=(1, L // 2), bias=False)
            if n_channels > 1
            else None
        )
        in_channels = N + (S if n_channels > 1 else 0)
        # The mask network; the attribute keeps its name so that state-dict keys stay.
        self.separator = MaskNetwork(
            in_channels,
            n_sources,
            N,
            B,
            H,
            P,
            X,
            R,
            B if Sc is None else Sc,
            norm,
            causal,
            mask_activation,
            checkpointing,
        )
        # Decoder V (eq. 5): overlap-add of N basis signals of length L.
        self.decoder = nn.ConvTranspose1d(N, 1, L, stride=L // 2, bias=False)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ConvTasNet:
        """Build a preset ("paper", "authors", "small", "tiny"), overriding any argument."""
        return build_preset(cls, name, overrides, "Conv-TasNet")

    def forward(self, mixture: Tensor) -> Tensor:
        """Separate ``mixture`` (batch, time) or (batch, n_channels, time) into
        (batch, n_sources, time) waveforms, the source images at mic 0.

        Under CPU autocast (e.g. Lightning's ``precision="bf16-mixed"``) training takes the
        bfloat16 path where ``_cpu_kernels.use_bf16_training`` says it pays, and everything
        else runs the exact float32 layers with autocast off (its bfloat16 convolutions are
        slower than float32 on CPU)."""
        x = as_channels(mixture, self.n_channels, "Conv-TasNet")  # (batch, mics, T)
        if _cpu_kernels.cpu_autocast_dtype(x) is not None:
            bf16 = self.hparams["norm"] == "gLN" and _cpu_kernels.use_bf16_training(x)
            with torch.autocast("cpu", enabled=False):
                return self._separate(x.float(), bf16)
        return self._separate(x, False)

    def _separate(self, x: Tensor, bf16: bool) -> Tensor:
        """x (batch, mics, T) -> (batch, n_sources, T); ``bf16``: see ``forward``."""
        batch, T = x.shape[0], x.shape[-1]
        # Pad L/2 before and L/2..L-1 after, so every sample lies under two frames and the
        # frames tile the padded signal exactly: T_pad = (K - 1) L/2 + L.
        hop = self.stride
        x = F.pad(x, (hop, hop + (-T) % hop))  # (batch, mics, T_pad)
        if not bf16 and self.hparams["norm"] == "gLN" and _cpu_kernels.use_fast_inference(x):
            est = self._infer(x)  # (batch, C, T_pad)
        else:
            w = F.relu(self.encoder(x[:, :1]))  # (batch, N, K)
            features = w
            if self.spatial_encoder is not None:
                spatial = F.relu(self.spatial_encoder(x.unsqueeze(1))).squeeze(2)  # (batch, S, K)
                features = torch.cat([w, spatial], dim=1)  # (batch, N+S, K)
            masks = self.separator(features, bf16)  # (batch, C, N, K)
            masked = (masks * w.unsqueeze(1)).flatten(0, 1)  # (batch*C, N, K)
            if bf16:
                est = _cpu_kernels.decode_overlap_add(masked, self.decoder.weight)
            else:
                est = self.decoder(masked)  # (batch*C, 1, T_pad)
            est = est.view(batch, self.n_sources, -1)  # (batch, C, T_pad)
        est = est[..., hop : hop + T]  # (batch, C, T)
        if self.consistency is not None:
            est = mixture_consistency(est, x[:, 0, hop : hop + T], weights=self.consistency)
        return est

    def _infer(self, x: Tensor) -> Tensor:
        """The encoder, mask network and decoder on the inference path of ``_cpu_kernels``
        (no gradients, CPU, gLN; time-major). x (batch, mics, T_pad) -> (batch, C, T_pad)."""
        hop = self.stride
        w = _cpu_kernels.encode_frames(x[:, 0], self.encoder.weight, hop).relu_()  # (batch, K, N)
        features = w
        if self.spatial_encoder is not None:
            spatial = F.relu(self.spatial_encoder(x.unsqueeze(1))).squeeze(2)  # (batch, S, K)
            features = torch.cat([w, spatial.transpose(1, 2)], dim=2)  # (batch, K, N+S)
        dtype = BF16 if _cpu_kernels.bf16_inference(self.hparams["H"]) else torch.float32
        masks = _cpu_kernels.mask_network_inference(self.separator, features, dtype)
        if dtype == torch.float32:
            masked = masks.mul_(w.unsqueeze(2))  # (batch, K, C, N)
        else:
            masked = torch.mul(masks, w.unsqueeze(2))  # float32
        return _cpu_kernels.decode_frames(masked, self.decoder.weight)  # (batch, C, T_pad)


def _check_hparams(hp: dict[str, Any]) -> None:
    """Raise ConfigError naming the first impossible hyperparameter."""
    for key in ("n_sources", "N", "L", "B", "H", "P", "X", "R", "n_channels", "S"):
        value = hp[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"Conv-TasNet {key} must be a positive integer, got {value!r}")
    if hp["Sc"] is not None and (
        isinstance(hp["Sc"], bool) or not isinstance(hp["Sc"], int) or hp["Sc"] < 1
    ):
        raise ConfigError(f"Conv-TasNet Sc must be a positive integer or None, got {hp['Sc']!r}")
    if hp["L"] % 2:
        raise ConfigError(f"Conv-TasNet L must be even (the hop is L/2), got {hp['L']}")
    if hp["norm"] not in ("gLN", "cLN"):
        raise ConfigError(f"Conv-TasNet norm must be 'gLN' or 'cLN', got {hp['norm']!r}")
    if hp["mask_activation"] not in ("relu", "sigmoid", "softmax"):
        raise ConfigError(
            "Conv-TasNet mask_activation must be 'relu', 'sigmoid' or 'softmax', "
            f"got {hp['mask_activation']!r}"
        )
    if hp["consistency"] not in (None, "uniform", "energy"):
        raise ConfigError(
            "Conv-TasNet consistency must be None, 'uniform' or 'energy', "
            f"got {hp['consistency']!r}"
        )
    if hp["causal"] and hp["norm"] == "gLN":
        raise ConfigError("a causal Conv-TasNet needs norm='cLN' (gLN looks at future frames)")
    if hp["causal"] and hp["consistency"] == "energy":
        raise ConfigError(
            "a causal Conv-TasNet cannot use consistency='energy' (the weights use the whole "
            "signal); use 'uniform' or None"
        )

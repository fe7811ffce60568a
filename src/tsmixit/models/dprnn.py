"""DPRNN-TasNet (Luo, Chen & Yoshioka, "Dual-path RNN: efficient long sequence modeling for
time-domain single-channel speech separation", ICASSP 2020), single-channel.

Symbols (the paper's where it names them):

    N   filters in the learned encoder (and basis signals in the decoder)
    L   window length in samples; the encoder hops by L/2 (50 % overlap)
    D   feature dimension inside the dual-path network (after a 1x1 bottleneck N -> D)
    H   hidden units of each LSTM direction
    K   chunk length in frames; chunks overlap by 50 % (hop K/2)
    B   dual-path blocks, each an intra-chunk then an inter-chunk BiLSTM

Signal flow for a mixture x (batch, T) with S = n_sources outputs:

    w = ReLU(encoder(x))                       (batch, N, T')  T' frames, hop L/2
    f = bottleneck(gLN(w))                     (batch, T', D)  channels last from here on
    u = segment(f)                             (batch, C, K, D) C chunks of K frames, hop K/2
    u = B x [u + gLN(Linear(BiLSTM_intra(u))),  over the K frames of each chunk
             u + gLN(Linear(BiLSTM_inter(u)))]  over the C chunks at each chunk position
    v = overlap_add(Linear(PReLU(u)))          (batch, T', S, D)
    m = ReLU(Linear(tanh(Lin(v)) * sigmoid(Lin(v))))   (batch, S, N, T') masks
    s_hat_s = decoder(m_s * w)                 (batch, S, T)

The layers follow the authors' public code (Yi Luo's DPRNN in github.com/yluo42/TAC,
``utility/models.py``, and its TasNet wrapper as copied into github.com/etzinis/sudo_rm_rf,
``dnn/models/dprnn.py``): a bias-free encoder with a ReLU, gLN before a bias-free
bottleneck, one linear projection 2H -> D after each BiLSTM, gLN on each path's output
before the residual sum, PReLU + 1x1 output layer to S*D, a tanh/sigmoid gated output and a
bias-free 1x1 mask layer D -> N; with shared weights and the same framing this module
computes what that code computes. Ours pads the signal (L/2 zeros around it) so that every
sample lies under two frames, and runs channels-last (no permutes around the BiLSTMs).
The published WSJ0-2mix system (``"paper"`` preset: N = D = 64, L = 2, H = 128, K = 250,
B = 6) has 2.61 M parameters here, "2.6 M" in the paper.

DPRNN has no published multi-microphone form: n_channels must be 1 (use Conv-TasNet's
spatial encoder or TF-GridNet for several microphones).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsmixit.errors import ConfigError
from tsmixit.models._cpu_kernels import cpu_autocast_dtype
from tsmixit.models.consistency import mixture_consistency
from tsmixit.models.inputs import as_channels, build_preset

MaskActivation = Literal["relu", "sigmoid", "softmax"]
Consistency = Literal["uniform", "energy"] | None

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's best WSJ0-2mix system (18.8 dB SI-SNRi, "2.6 M" parameters): window of 2
    # samples at 8 kHz, chunks of 250 frames, 6 blocks, 128 hidden units per direction.
    "paper": {"N": 64, "L": 2, "D": 64, "H": 128, "K": 250, "B": 6},
    # About 0.63 M parameters; window 16 (hop 8) keeps the sequence 8x shorter than the
    # paper's (the BiLSTMs dominate the CPU time).
    "small": {"N": 64, "L": 16, "D": 64, "H": 64, "K": 100, "B": 4},
    # About 80 k parameters, for tests and smoke runs: window 16 (hop 8).
    "tiny": {"N": 32, "L": 16, "D": 32, "H": 32, "K": 32, "B": 2},
}

_EPS = 1e-8


class ChannelLastGLN(nn.Module):
    """gLN on a channels-last tensor (batch, ..., D): mean and variance over everything but
    the batch, per-channel gamma and beta (the same parameters as ``GroupNorm(1, D)``)."""

    def __init__(self, channels: int, eps: float = _EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))  # gamma (D,)
        self.bias = nn.Parameter(torch.zeros(channels))  # beta (D,)

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(1, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = (x - mean).square().mean(dim=dims, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class PathRNN(nn.Module):
    """One path of a dual-path block: BiLSTM over (sequences, steps, D), a linear projection
    2H -> D and gLN; the caller adds the result to its input (residual)."""

    def __init__(self, D: int, H: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(D, H, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * H, D)
        self.norm = ChannelLastGLN(D)

    def forward(self, seq: Tensor, batch: int) -> Tensor:
        # Under CPU autocast the BiLSTM gets its input already in the autocast dtype: from a
        # float32 input oneDNN refuses the bf16 LSTM on CPUs without AVX-512 ("could not
        # create a primitive descriptor"), from a bf16 one it runs everywhere.
        dtype = cpu_autocast_dtype(seq)
        out, _ = self.rnn(seq if dtype is None else seq.to(dtype))  # (batch*n, steps, 2H)
        out = self.proj(out)  # (batch*n, steps, D)
        return self.norm(out.reshape(batch, -1, *out.shape[1:]))  # (batch, n, steps, D)


class DualPathBlock(nn.Module):
    """Intra-chunk BiLSTM (along the K frames of each chunk), then inter-chunk BiLSTM (along
    the C chunks, at each position inside the chunk), each with a residual connection."""

    def __init__(self, D: int, H: int) -> None:
        super().__init__()
        self.intra = PathRNN(D, H)
        self.inter = PathRNN(D, H)

    def forward(self, u: Tensor) -> Tensor:
        batch, C, K, D = u.shape  # (batch, C chunks, K frames, D)
        u = u + self.intra(u.reshape(batch * C, K, D), batch)  # (batch, C, K, D)
        across = u.transpose(1, 2).reshape(batch * K, C, D)  # (batch*K, C, D)
        return u + self.inter(across, batch).transpose(1, 2)  # (batch, C, K, D)


def segment(f: Tensor, K: int) -> Tensor:
    """Split (batch, T', D) into chunks of K frames with hop P = K/2: (batch, C, K, D).

    P zero frames go before, and after enough to fill whole blocks of P frames plus one more
    block, so that every frame lies in exactly two chunks. Chunk c is blocks c and c+1, so
    the chunks are two reshapes and one concatenation (exportable with a dynamic length).
    """
    P = K // 2
    frames = f.shape[1]
    f = F.pad(f, (0, 0, P, P + (-frames) % P))  # (batch, P + T' + tail, D)
    blocks = f.reshape(f.shape[0], -1, P, f.shape[2])  # (batch, n, P, D)
    return torch.cat([blocks[:, :-1], blocks[:, 1:]], dim=2)  # (batch, n-1, K, D)


def overlap_add(u: Tensor, frames: int) -> Tensor:
    """Inverse of `segment`: sum the two halves that cover each block, drop the padding:
    (batch, C, K, D) -> (batch, frames, D)."""
    P = u.shape[2] // 2
    first = F.pad(u[:, :, :P], (0, 0, 0, 0, 0, 1))  # chunk c's first half -> block c
    second = F.pad(u[:, :, P:], (0, 0, 0, 0, 1, 0))  # chunk c's second half -> block c+1
    blocks = first + second  # (batch, C+1, P, D)
    return blocks.reshape(blocks.shape[0], -1, blocks.shape[3])[:, P : P + frames]


class DPRNN(nn.Module):
    """DPRNN-TasNet separating a mixture into ``n_sources`` waveforms.

    Args:
        n_sources: S, the number of outputs (4 for a MixIT teacher, 2 for the student).
        N: encoder filters.  L: window length in samples (even; hop L/2).
        D: features inside the dual-path network.  H: hidden units per LSTM direction.
        K: chunk length in frames (even; hop K/2).  B: dual-path blocks.
        mask_activation: "relu" (the authors'), "sigmoid" or "softmax" over sources.
        consistency: None, or mixture consistency ("uniform" or "energy" weights) projecting
            the outputs so that they sum to the mixture.
        n_channels: must be 1: DPRNN has no published multi-microphone form.

    ``forward`` takes (batch, time) or (batch, 1, time) of any length >= 1 and returns
    (batch, n_sources, time). ``hparams`` holds every argument: ``DPRNN(**m.hparams)``
    rebuilds the architecture.
    """

    #: The named settings `from_preset` builds.
    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS
    #: Training under CPU bfloat16 autocast (plain autocast: its BiLSTMs and linear layers
    #: reach the bf16 units) measures faster than float32 at the same quality
    #: (benchmarks/bench_bf16_separators.py, bench_train_step.py --quality --arch dprnn).
    supports_cpu_bf16: ClassVar[bool] = True

    def __init__(
        self,
        n_sources: int = 2,
        N: int = 64,
        L: int = 2,
        D: int = 64,
        H: int = 128,
        K: int = 250,
        B: int = 6,
        mask_activation: MaskActivation = "relu",
        consistency: Consistency = None,
        n_channels: int = 1,
    ) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {
            "n_sources": n_sources,
            "N": N,
            "L": L,
            "D": D,
            "H": H,
            "K": K,
            "B": B,
            "mask_activation": mask_activation,
            "consistency": consistency,
            "n_channels": n_channels,
        }
        _check_hparams(self.hparams)
        self.n_sources, self.n_channels = n_sources, n_channels
        self.N, self.L, self.D, self.K = N, L, D, K
        self.hop = L // 2
        self.mask_activation, self.consistency = mask_activation, consistency
        # Encoder: (batch, 1, T) -> (batch, N, T'); a ReLU follows (non-negative weights).
        self.encoder = nn.Conv1d(1, N, L, stride=self.hop, bias=False)
        self.in_norm = nn.GroupNorm(1, N, eps=_EPS)
        self.bottleneck = nn.Conv1d(N, D, 1, bias=False)
        self.blocks = nn.ModuleList(DualPathBlock(D, H) for _ in range(B))
        self.out_act = nn.PReLU()
        self.out_proj = nn.Linear(D, n_sources * D)
        self.gate_tanh = nn.Linear(D, D)
        self.gate_sigmoid = nn.Linear(D, D)
        self.mask = nn.Linear(D, N, bias=False)
        # Decoder: overlap-add of N basis signals of length L.
        self.decoder = nn.ConvTranspose1d(N, 1, L, stride=self.hop, bias=False)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DPRNN:
        """Build a preset ("paper", "small", "tiny"), overriding any argument."""
        return build_preset(cls, name, overrides, "DPRNN")

    def forward(self, mixture: Tensor) -> Tensor:
        """Separate ``mixture`` (batch, time) or (batch, 1, time) into (batch, n_sources,
        time) waveforms."""
        x = as_channels(mixture, self.n_channels, "DPRNN")[:, :1]  # (batch, 1, T)
        batch, T = x.shape[0], x.shape[-1]
        # Frames tile the padded signal exactly and every sample lies under two of them:
        # L/2 zeros before, L/2 .. L-1 after, T_pad = (T' - 1) L/2 + L.
        hop = self.hop
        x = F.pad(x, (hop, hop + (-T) % hop))  # (batch, 1, T_pad)
        w = F.relu(self.encoder(x))  # (batch, N, T')
        frames = w.shape[-1]
        f = self.bottleneck(self.in_norm(w)).transpose(1, 2)  # (batch, T', D)
        u = segment(f, self.K)  # (batch, C, K, D)
        for block in self.blocks:
            u = block(u)  # (batch, C, K, D)
        u = self.out_proj(self.out_act(u))  # (batch, C, K, S*D)
        v = overlap_add(u, frames).reshape(batch, frames, self.n_sources, self.D)
        v = torch.tanh(self.gate_tanh(v)) * torch.sigmoid(self.gate_sigmoid(v))  # (b,T',S,D)
        masks = self.mask(v).permute(0, 2, 3, 1)  # (batch, S, N, T')
        if self.mask_activation == "relu":
            masks = F.relu(masks)
        elif self.mask_activation == "sigmoid":
            masks = torch.sigmoid(masks)
        else:
            masks = torch.softmax(masks, dim=1)
        masked = (masks * w.unsqueeze(1)).flatten(0, 1)  # (batch*S, N, T')
        est = self.decoder(masked).view(batch, self.n_sources, -1)  # (batch, S, T_pad)
        est = est[..., hop : hop + T]  # (batch, S, T)
        if self.consistency is not None:
            est = mixture_consistency(est, x[:, 0, hop : hop + T], weights=self.consistency)
        return est


def _check_hparams(hp: dict[str, Any]) -> None:
    """Raise ConfigError naming the first impossible hyperparameter."""
    for key in ("n_sources", "N", "L", "D", "H", "K", "B", "n_channels"):
        value = hp[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"DPRNN {key} must be a positive integer, got {value!r}")
    if hp["L"] % 2:
        raise ConfigError(f"DPRNN L must be even (the encoder hops by L/2), got {hp['L']}")
    if hp["K"] % 2:
        raise ConfigError(f"DPRNN K must be even (chunks hop by K/2), got {hp['K']}")
    if hp["mask_activation"] not in ("relu", "sigmoid", "softmax"):
        raise ConfigError(
            "DPRNN mask_activation must be 'relu', 'sigmoid' or 'softmax', "
            f"got {hp['mask_activation']!r}"
        )
    if hp["consistency"] not in (None, "uniform", "energy"):
        raise ConfigError(
            f"DPRNN consistency must be None, 'uniform' or 'energy', got {hp['consistency']!r}"
        )
    if hp["n_channels"] != 1:
        raise ConfigError(
            f"DPRNN n_channels={hp['n_channels']}: DPRNN has no published multi-microphone "
            "form; set n_channels=1 (the model is fed microphone 0) or choose "
            "model.arch='conv_tasnet' or 'tf_gridnet' for multi-channel input"
        )

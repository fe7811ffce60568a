"""Hand-written CPU backward passes for the layers a separator repeats most (PReLU, PReLU
followed by a one-group norm (gLN), and the same-length depthwise convolution), the bfloat16
training path of Conv-TasNet's mask network (second part of this file), and Conv-TasNet's
time-major inference path, float32 or bfloat16 (third part).

Notation: x (batch, C, K) is a layer's input, C channels over K frames; a is the PReLU's one
shared slope; gamma, beta (C,) are the norm's per-channel scale and shift; w (C, 1, P) and
b (C,) are the depthwise filters (P taps) and biases, d their dilation; grad is dL/d(output),
shaped like the output. Each autograd function keeps the forward pass of torch and replaces
its backward pass; the layers in ``tsmixit.models.conv_tasnet`` call them only when training
on the CPU (gradients on, CPU tensors) and use plain torch operations otherwise (ONNX export,
GPU; CPU inference takes the third part).

Why by hand: torch's generic CPU backward kernels for PReLU and for depthwise convolutions
are slower than the few fused operations below (``benchmarks/bench_cpu_kernels.py`` prints
both), and the PReLU + norm pair can recompute its PReLU instead of keeping it. Under CPU
autocast every function runs in float32.
"""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

_fp32_under_autocast = torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
_backward_under_autocast = torch.amp.custom_bwd(device_type="cpu")


class PReLUFunction(torch.autograd.Function):
    """PReLU(x) = max(x, 0) + a min(x, 0), with one fused leaky-ReLU backward for dL/dx and
    one dot product for dL/da (``prelu_backward``).

    x: (batch, C, K), a: (1,) -> (batch, C, K)
    """

    @staticmethod
    @_fp32_under_autocast
    def forward(ctx: Any, x: Tensor, a: Tensor) -> Tensor:
        ctx.save_for_backward(x, a)
        return F.prelu(x, a)

    @staticmethod
    @_backward_under_autocast
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        return prelu_backward(grad, *ctx.saved_tensors)


def prelu_backward(grad: Tensor, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """dL/dx = grad where x > 0 else a grad;  dL/da = sum(grad * min(x, 0)).

    grad, x: (batch, C, K), a: (1,) -> dL/dx (batch, C, K), dL/da (1,)
    """
    grad_x = torch.ops.aten.leaky_relu_backward(grad, x, a.item(), False)
    grad_a = torch.dot(grad.reshape(-1), x.clamp(max=0).reshape(-1)).reshape(a.shape)
    return grad_x, grad_a


class PReLUGroupNormFunction(torch.autograd.Function):
    """gLN(PReLU(x)) = (y - mean(y)) / sqrt(var(y) + eps) * gamma + beta with y = PReLU(x),
    mean and variance over all channels and frames of an example, saving only x: y is
    recomputed in the backward pass instead of being kept for the norm, one activation fewer
    per pair. Uses torch's fused group-norm kernels and ``prelu_backward``.

    x: (batch, C, K), a: (1,), gamma, beta: (C,) -> (batch, C, K)
    """

    @staticmethod
    @_fp32_under_autocast
    def forward(ctx: Any, x: Tensor, a: Tensor, gamma: Tensor, beta: Tensor, eps: float):
        n, c = x.shape[0], x.shape[1]
        y = F.prelu(x, a)  # (batch, C, K), freed after the norm
        out, mean, rstd = torch.native_group_norm(
            y, gamma, beta, n, c, x.numel() // (n * c), 1, eps
        )
        ctx.save_for_backward(x, a, gamma, mean, rstd)
        return out

    @staticmethod
    @_backward_under_autocast
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, None]:
        x, a, gamma, mean, rstd = ctx.saved_tensors
        n, c = x.shape[0], x.shape[1]
        grad_y, grad_gamma, grad_beta = torch.ops.aten.native_group_norm_backward(
            grad.contiguous(), F.prelu(x, a), mean, rstd, gamma, n, c, x.numel() // (n * c), 1,
            [True] * 3,
        )  # fmt: skip
        grad_x, grad_a = prelu_backward(grad_y, x, a)
        return grad_x, grad_a, grad_gamma, grad_beta, None


class DepthwiseFunction(torch.autograd.Function):
    """Same-length depthwise convolution y[k] = b + sum_p w_p x[k + p d - left] (zeros
    outside, pad = (left, right)). The forward pass is torch's; in the backward pass each
    tap's gradients are one shifted multiply-add (dL/dx) and one product-sum (dL/dw).

    x: (batch, C, K), w: (C, 1, P), b: (C,) -> (batch, C, K)
    """

    @staticmethod
    @_fp32_under_autocast
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor, dilation: int, pad: tuple[int, int]):
        ctx.save_for_backward(x, w)
        ctx.dilation, ctx.left = dilation, pad[0]
        return F.conv1d(F.pad(x, pad), w, b, dilation=dilation, groups=x.shape[1])

    @staticmethod
    @_backward_under_autocast
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        x, w = ctx.saved_tensors  # x (batch, H, K), w (H, 1, P)
        frames = x.shape[-1]
        grad_x, grad_w = torch.zeros_like(x), torch.zeros_like(w)
        for p in range(w.shape[-1]):
            shift = p * ctx.dilation - ctx.left  # y[k] reads x[k + shift]
            lo, hi = max(0, -shift), min(frames, frames - shift)  # frames k that read x
            if hi <= lo:
                continue
            g, xs = grad[..., lo:hi], x[..., lo + shift : hi + shift]  # (batch, H, hi - lo)
            grad_x[..., lo + shift : hi + shift].addcmul_(g, w[:, :, p])
            grad_w[:, 0, p] = (g * xs).sum(dim=(0, 2))
        return grad_x, grad_w, grad.sum(dim=(0, 2)), None, None


# --------------------------------------------------------------------------------------------
# The bfloat16 training path.
#
# On CPUs with bfloat16 dot-product instructions (AVX512-BF16, AMX-BF16) a bfloat16 matrix
# product runs several times faster than a float32 one, but torch's bfloat16 1x1 and depthwise
# convolutions (what CPU autocast picks) do not, and the functions above cast back to float32
# under autocast. The functions below keep the mask network's activations in bfloat16 between
# its matrix products: 1x1 convolutions as batched matrix products of bfloat16 copies of the
# float32 weights (the parameters stay float32, the master copies the optimiser updates), PReLU
# + gLN and the depthwise convolution on bfloat16 tensors with float32 statistics and float32
# parameter gradients; the residual stream and the skip sum stay float32.
# ``tsmixit.models.conv_tasnet`` takes this path while training on CPU under bfloat16 autocast
# (Lightning's ``precision="bf16-mixed"``) when ``bf16_training_available()``; elsewhere it runs
# its exact float32 layers with autocast off.

BF16 = torch.bfloat16

BF16_MODE_ENV = "TSMIXIT_CPU_BF16"
"""Environment variable overriding the dispatch: "auto" (default: CPU flags, then a short
measurement), "on" (whenever the CPU has the instructions) or "off" (always float32)."""

BF16_MIN_SPEEDUP = 1.5
"""``bf16_training_available`` under "auto" wants a bfloat16 matrix product at least this many
times faster than the float32 one (measured once per process, ``bf16_matmul_speedup``)."""

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_bf16_flags() -> frozenset[str]:
    """The CPU's bfloat16 instruction flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(set(line.split()) & set(_BF16_FLAGS))
    return frozenset()


@lru_cache(maxsize=1)
def bf16_matmul_speedup() -> float:
    """float32 time / bfloat16 time of one 1x1-convolution-sized batched product
    ((2, 256, 256) @ (2, 256, 2000)), best of 5 each, interleaved, on one thread: the ratio
    is the core's, whereas with more threads a core busy with other work would decide it
    and turn bfloat16 off where it pays; about 50 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            w, x = torch.randn(256, 256), torch.randn(2, 256, 2000)
            wb, xb = w.to(BF16), x.to(BF16)
            best = {torch.float32: float("inf"), BF16: float("inf")}
            for _ in range(6):
                for dtype, (a, b) in ((torch.float32, (w, x)), (BF16, (wb, xb))):
                    start = time.perf_counter()
                    torch.matmul(a, b)
                    best[dtype] = min(best[dtype], time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return best[torch.float32] / best[BF16]


def bf16_training_available() -> bool:
    """Whether the bfloat16 training path is worth taking on this CPU (see BF16_MODE_ENV)."""
    mode = os.environ.get(BF16_MODE_ENV, "auto").strip().lower()
    if mode == "off" or not cpu_bf16_flags():
        return False
    return mode == "on" or bf16_matmul_speedup() >= BF16_MIN_SPEEDUP


def cpu_autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype of CPU autocast when it is on and x is a CPU tensor, else None."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None
    return torch.get_autocast_dtype("cpu")


def use_bf16_training(x: Tensor) -> bool:
    """The bfloat16 path's condition: training (gradients on) on CPU under bfloat16 autocast,
    on a CPU where it is faster."""
    return (
        torch.is_grad_enabled()
        and cpu_autocast_dtype(x) == BF16
        and bf16_training_available()
    )


class PointwiseBF16Function(torch.autograd.Function):
    """1x1 convolutions y_b = W x_b + b of one input as one batched bfloat16 matrix product
    (bfloat16 copies of the float32 weights, stacked), returned as one output per (W, b)
    pair; the backward pass is two products per pair (dL/dx = sum W^T g accumulated in one
    buffer, dL/dW = sum_b g_b x_b^T summed in float32).

    x: (batch, C_in, K) float32 or bfloat16, then pairs W: (C_out, C_in) float32,
    b: (C_out,) float32 or None -> one (batch, C_out, K) bfloat16 per pair
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, *params: Tensor | None) -> tuple[Tensor, ...]:
        weights, biases = params[0::2], params[1::2]
        xb = x.to(BF16)
        wb = torch.cat(weights).to(BF16)  # (sum C_out, C_in)
        out = torch.bmm(wb.expand(x.shape[0], -1, -1), xb)  # (batch, sum C_out, K)
        if any(b is not None for b in biases):
            bias = torch.cat([
                torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if b is None else b
                for w, b in zip(weights, biases, strict=True)
            ])  # fmt: skip
            out.add_(bias.to(BF16).unsqueeze(-1))
        ctx.save_for_backward(xb, wb)
        ctx.sizes = [w.shape[0] for w in weights]
        ctx.has_bias = [b is not None for b in biases]
        return tuple(out.split(ctx.sizes, dim=1))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        xb, wb = ctx.saved_tensors
        grad_x: Tensor | None = None
        param_grads: list[Tensor | None] = []
        for w, grad, has_bias in zip(wb.split(ctx.sizes), grads, ctx.has_bias, strict=True):
            if grad is None:
                param_grads += [None, None]
                continue
            grad = grad.to(BF16)
            if ctx.needs_input_grad[0]:
                w_t = w.t().expand(grad.shape[0], -1, -1)  # (batch, C_in, C_out)
                grad_x = torch.bmm(w_t, grad) if grad_x is None else grad_x.baddbmm_(w_t, grad)
            param_grads.append(torch.bmm(grad, xb.transpose(1, 2)).sum(dim=0, dtype=torch.float32))
            param_grads.append(_channel_sum(grad) if has_bias else None)
        return (grad_x, *param_grads)


def _channel_sum(x: Tensor) -> Tensor:
    """Per-channel sum over batch and frames, float32: (batch, C, K) -> (C,). The sums over
    frames accumulate in float32 inside torch's kernel and are rounded once to x's dtype."""
    return x.sum(dim=2).float().sum(dim=0)


def _prelu_slope_grad(grad: Tensor, x: Tensor) -> Tensor:
    """dL/da = sum(grad * min(x, 0)) in float32 from bfloat16 tensors: (1,)."""
    rows = x.shape[0] * x.shape[1]
    negative = x.clamp(max=0).view(rows, -1)
    return torch.linalg.vecdot(grad.reshape(rows, -1), negative).sum(dtype=torch.float32)


class PReLUBF16Function(torch.autograd.Function):
    """PReLU with one slope on bfloat16 x (leaky ReLU kernels): (batch, C, K) -> same."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, a: Tensor) -> Tensor:
        ctx.slope = float(a)
        ctx.save_for_backward(x)
        return F.leaky_relu(x, ctx.slope)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        (x,) = ctx.saved_tensors
        grad = grad.to(x.dtype)
        grad_x = torch.ops.aten.leaky_relu_backward(grad, x, ctx.slope, False)
        return grad_x, _prelu_slope_grad(grad, x).reshape(1)


class PReLUGroupNormBF16Function(torch.autograd.Function):
    """``PReLUGroupNormFunction`` on bfloat16 x: statistics and the parameters' gradients in
    float32 (torch's mixed-type group-norm kernels), activations and dL/dx in bfloat16.

    x: (batch, C, K) bfloat16, a: (1,), gamma, beta: (C,) float32 -> (batch, C, K) bfloat16
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, a: Tensor, gamma: Tensor, beta: Tensor, eps: float):
        n, c = x.shape[0], x.shape[1]
        slope = float(a)
        y = F.leaky_relu(x, slope)  # (batch, C, K), freed after the norm
        out, mean, rstd = torch.native_group_norm(
            y, gamma, beta, n, c, x.numel() // (n * c), 1, eps
        )
        ctx.save_for_backward(x, gamma, mean, rstd)
        ctx.slope = slope
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, None]:
        x, gamma, mean, rstd = ctx.saved_tensors
        n, c = x.shape[0], x.shape[1]
        grad_y, grad_gamma, grad_beta = torch.ops.aten.native_group_norm_backward(
            grad.to(BF16).contiguous(), F.leaky_relu(x, ctx.slope), mean, rstd, gamma, n, c,
            x.numel() // (n * c), 1, [True] * 3,
        )  # fmt: skip
        grad_x = torch.ops.aten.leaky_relu_backward(grad_y, x, ctx.slope, False)
        return grad_x, _prelu_slope_grad(grad_y, x).reshape(1), grad_gamma, grad_beta, None


def _taps(P: int, dilation: int, left: int, frames: int):
    """(p, lo, hi, shift) for each tap that reads inside the input: y[lo:hi] += w_p x[lo+s:hi+s]."""
    for p in range(P):
        shift = p * dilation - left
        lo, hi = max(0, -shift), min(frames, frames - shift)
        if hi > lo:
            yield p, lo, hi, shift


class DepthwiseBF16Function(torch.autograd.Function):
    """``DepthwiseFunction`` on bfloat16 x, forward and backward as shifted multiply-adds
    with bfloat16 copies of the float32 filters; dL/dw and dL/db summed in float32.

    x: (batch, C, K) bfloat16, w: (C, 1, P), b: (C,) float32 -> (batch, C, K) bfloat16
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor, dilation: int, pad: tuple[int, int]):
        wb = w.to(BF16)  # (C, 1, P)
        frames = x.shape[-1]
        taps = list(_taps(w.shape[-1], dilation, pad[0], frames))
        centre = next((t for t in taps if t[3] == 0), None)
        if centre is not None:
            out = torch.mul(x, wb[:, :, centre[0]])
            out.add_(b.to(BF16).unsqueeze(-1))
        else:
            out = b.to(BF16).unsqueeze(-1).expand_as(x).contiguous()
        for p, lo, hi, shift in taps:
            if p != (centre[0] if centre else -1):
                out[..., lo:hi].addcmul_(x[..., lo + shift : hi + shift], wb[:, :, p])
        ctx.save_for_backward(x, wb)
        ctx.dilation, ctx.left = dilation, pad[0]
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        x, wb = ctx.saved_tensors  # (batch, C, K), (C, 1, P)
        grad = grad.to(BF16)
        taps = list(_taps(wb.shape[-1], ctx.dilation, ctx.left, x.shape[-1]))
        centre = next((t[0] for t in taps if t[3] == 0), None)
        grad_x = torch.mul(grad, wb[:, :, centre]) if centre is not None else torch.zeros_like(x)
        grad_w = torch.zeros(wb.shape, dtype=torch.float32, device=x.device)
        for p, lo, hi, shift in taps:
            g, xs = grad[..., lo:hi], x[..., lo + shift : hi + shift]  # (batch, C, hi - lo)
            if p != centre:
                grad_x[..., lo + shift : hi + shift].addcmul_(g, wb[:, :, p])
            grad_w[:, 0, p] = torch.linalg.vecdot(g, xs).sum(dim=0, dtype=torch.float32)
        return grad_x, grad_w, _channel_sum(grad), None, None


def _pointwise(x: Tensor, *convs: torch.nn.Conv1d) -> tuple[Tensor, ...]:
    """Kernel-1 Conv1d layers of one input through ``PointwiseBF16Function``: -> bfloat16."""
    params = [t for conv in convs for t in (conv.weight.squeeze(-1), conv.bias)]
    return PointwiseBF16Function.apply(x, *params)


def _prelu_norm(x: Tensor, module: torch.nn.Module) -> Tensor:
    """A ``PReLUNorm`` (PReLU + gLN) through ``PReLUGroupNormBF16Function``."""
    norm = module.norm
    return PReLUGroupNormBF16Function.apply(x, module.act.weight, norm.weight, norm.bias, norm.eps)


def _block_bf16(block: torch.nn.Module, x: Tensor) -> tuple[Tensor | None, Tensor]:
    """``ConvBlock.forward`` in bfloat16, its residual and skip convolutions as one product:
    x (batch, B, K) float32 -> residual (batch, B, K) bfloat16 or None, skip (batch, Sc, K)."""
    (h,) = _pointwise(x, block.in_conv)
    y = _prelu_norm(h, block.act_norm1)  # (batch, H, K)
    dw = block.depthwise
    y = DepthwiseBF16Function.apply(y, dw.weight, dw.bias, dw.dilation[0], dw.pad)
    y = _prelu_norm(y, block.act_norm2)  # (batch, H, K)
    if block.res_conv is None:
        return None, _pointwise(y, block.skip_conv)[0]
    residual, skip = _pointwise(y, block.res_conv, block.skip_conv)
    return residual, skip


def _repeat_bf16(blocks: torch.nn.ModuleList, x: Tensor) -> tuple[Tensor, Tensor]:
    """``MaskNetwork._run_repeat`` in bfloat16: residual stream and skip sum in float32."""
    skip: Tensor | None = None
    for block in blocks:
        residual, s = _block_bf16(block, x)
        if residual is not None:
            x = residual.float().add_(x)  # (batch, B, K) float32, in the converted copy
        skip = s.float() if skip is None else skip.add_(s.float())  # (batch, Sc, K)
    assert skip is not None
    return x, skip


def mask_network_bf16(net: torch.nn.Module, w: Tensor) -> Tensor:
    """``tsmixit.models.conv_tasnet.MaskNetwork.forward`` (gLN) on the bfloat16 path: the same
    layers and parameters, the 1x1 convolutions as bfloat16 matrix products, the activations
    between them in bfloat16, the masks returned in float32.

    w: (batch, N_in, K) float32 -> masks (batch, C, N, K) float32
    """
    x = _pointwise(net.in_norm(w), net.bottleneck)[0].float()  # (batch, B, K)
    skip: Tensor | None = None
    for blocks in net.repeats:
        if net.checkpointing:
            x, s = checkpoint(_repeat_bf16, blocks, x, use_reentrant=False)
        else:
            x, s = _repeat_bf16(blocks, x)
        skip = s if skip is None else skip.add_(s)  # (batch, Sc, K) float32
    assert skip is not None
    act = PReLUBF16Function.apply(skip.to(BF16), net.out_act.weight)
    masks = _pointwise(act, net.mask_conv)[0].float()  # (batch, C*N, K)
    masks = masks.view(masks.shape[0], net.n_sources, net.N, -1)  # (batch, C, N, K)
    if net.mask_activation == "relu":
        return F.relu(masks)
    if net.mask_activation == "sigmoid":
        return torch.sigmoid(masks)
    return torch.softmax(masks, dim=1)


def decode_overlap_add(masked: Tensor, weight: Tensor) -> Tensor:
    """The decoder (``ConvTranspose1d(N, 1, L, stride=L/2, bias=False)``) as one batched
    matrix product to frames and a two-term overlap-add, for the training path (torch's
    transposed convolution is several times slower on CPU); float32.

    masked: (M, N, K), weight: (N, 1, L) with L even -> (M, 1, (K + 1) L/2)
    """
    n_basis, L = weight.shape[0], weight.shape[-1]
    hop = L // 2
    basis = weight.reshape(n_basis, L).expand(masked.shape[0], -1, -1)  # (M, N, L)
    frames = torch.bmm(masked.transpose(1, 2), basis)  # (M, K, L)
    # sample k * hop + j gets frames[k, j] (j < L) : rows of hop samples, two frames each
    out = F.pad(frames[..., :hop], (0, 0, 0, 1)) + F.pad(frames[..., hop:], (0, 0, 1, 0))
    return out.reshape(masked.shape[0], 1, -1)  # (M, 1, (K + 1) hop)



# --------------------------------------------------------------------------------------------
# The inference path.
#
# Without gradients on the CPU (``torch.no_grad`` or ``torch.inference_mode``: ``Separator``,
# evaluation, export checks) Conv-TasNet with gLN runs the same layers in a time-major layout,
# (batch, K, C), frames as rows: every 1x1 convolution is one matrix product y = x W^T;
# each gLN is only its statistics, gLN(y) = a y + c per channel with a = gamma / std and
# c = beta - gamma mean / std folded into the layer after it (W (a y + c) + b =
# (W diag(a)) y + (W c + b); a depthwise convolution gets scaled taps, a constant and an edge
# correction), so no normalised copy is ever written; the biases of the residual and skip
# paths are carried as one vector into the next block's first product instead of being added
# to every frame; each block's residual and skip products are one product accumulating into
# a stream that holds both side by side;
# PReLU is an in-place leaky ReLU; the depthwise convolution is P shifted multiply-adds
# (torch's depthwise kernel is about ten times slower on CPU); the encoder is one product of
# framed samples and the decoder one product and a two-term overlap-add.
#
# ``dtype`` is that of the products and of the activations between them: float32 (the
# default: the same operations as the torch layers summed in another order, outputs within
# about 1e-6 relative), or bfloat16 (products on the CPU's bfloat16 units, bfloat16 copies of
# the float32 weights; the residual stream, the skip sum, the statistics, the encoder and the
# decoder stay float32), which ``Separator`` takes where ``bf16_inference`` says so.
# ``benchmarks/bench_separate.py`` measures both against Asteroid's ConvTasNet.

BF16_INFERENCE_MIN_CHANNELS = 128
"""The bfloat16 inference path pays only for products this wide (H, the blocks' channels):
measured on an AVX512-BF16 CPU, ``small`` (H = 128) runs faster in bfloat16 and ``tiny``
(H = 64) does not (``benchmarks/bench_separate.py``)."""


def use_fast_inference(x: Tensor) -> bool:
    """The inference path's condition: no gradients, a float32 CPU tensor, and no tracing,
    scripting or compilation (ONNX export traces the plain layers)."""
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
    )


_BF16_INFERENCE: ContextVar[bool] = ContextVar("tsmixit_bf16_inference", default=False)


@contextmanager
def allow_bf16_inference() -> Iterator[None]:
    """Inside this block a separator with a CPU bfloat16 inference path may take it where
    ``bf16_inference`` says so (``Separator`` separates inside it); elsewhere inference is
    float32."""
    token = _BF16_INFERENCE.set(True)
    try:
        yield
    finally:
        _BF16_INFERENCE.reset(token)


def bf16_inference(channels: int) -> bool:
    """Whether inference of a model whose blocks have ``channels`` channels takes the
    bfloat16 path: inside ``allow_bf16_inference``, products at least
    ``BF16_INFERENCE_MIN_CHANNELS`` wide, and the CPU flags, switch (``BF16_MODE_ENV``) and
    measurement of ``bf16_training_available``."""
    return (
        _BF16_INFERENCE.get()
        and channels >= BF16_INFERENCE_MIN_CHANNELS
        and bf16_training_available()
    )


def _gln_affine(y: Tensor, norm: torch.nn.GroupNorm) -> tuple[Tensor, Tensor]:
    """gLN of each example as a per-channel affine map, gLN(y) = a y + c, with
    a = gamma rstd, c = beta - gamma mu rstd, mu the mean of all of the example's values and
    rstd = 1 / sqrt(var + eps). The statistics are two float32 passes over y and no normalised
    copy is written: var = E[y^2] - mu^2, the squares summed per row and the rows in float64
    (a float32 sum of squares over millions of values loses digits), so var's relative error
    is about 1e-7 (1 + mu^2 / var), small for the activations of a PReLU.

    y: (batch, K, C), any floating dtype -> a (batch, 1, C), c (batch, 1, C) float32
    """
    count = y[0].numel()
    mean = y.sum(dim=(1, 2), dtype=torch.float32).double() / count  # (batch,)
    power = torch.linalg.vector_norm(y, dim=-1, dtype=torch.float32).double().square()
    var = (power.sum(dim=1) / count - mean.square()).clamp_min(0.0)  # (batch,)
    rstd = (var + norm.eps).rsqrt().float()[:, None, None]  # (batch, 1, 1)
    scale = norm.weight * rstd  # (batch, 1, C)
    return scale, norm.bias - scale * mean.float()[:, None, None]


def _accumulate(stream: Tensor, u: Tensor, weight: Tensor) -> None:
    """stream += u W^T in place, W per example: a float32 product adds into the stream
    itself, a bfloat16 one is added to it. stream: (batch, K, C_out) float32 (a view of
    columns is fine), u: (batch, K, C_in), W: (batch, C_out, C_in) float32."""
    if u.dtype == stream.dtype:
        stream.baddbmm_(u, weight.transpose(1, 2))
    else:
        stream.add_(torch.bmm(u, weight.transpose(1, 2).to(u.dtype)))


def _depthwise_of_gln(h: Tensor, out: Tensor, conv: torch.nn.Conv1d, pad: tuple[int, int],
                      scale: Tensor, shift: Tensor) -> Tensor:
    """``DepthwiseConv`` (taps w_p, bias b, dilation d, zeros outside) of the gLN output
    a h + c (``_gln_affine``) without forming it, written into ``out``: with
    s_p = p d - pad[0],

        y[k] = b + sum_p w_p (a h[k + s_p] + c)        (taps with 0 <= k + s_p < K)
             = (b + c sum_p w_p) + sum_p (a w_p) h[k + s_p] - c sum_{p: k + s_p outside} w_p,

    P shifted multiply-adds over the frames and a correction of the first and last frames,
    in h's dtype.

    h: (batch, K, H) time-major; out: like h; scale a, shift c: (batch, 1, H) -> out
    """
    frames = h.shape[1]
    taps = conv.weight[:, 0, :].t().contiguous()  # (P, H)
    # (P, batch, 1, H), rows contiguous: a strided broadcast operand halves addcmul's speed
    scaled = (scale * taps[:, None, None, :]).to(h.dtype)
    const = (conv.bias + shift * taps.sum(dim=0)).to(h.dtype)  # (batch, 1, H)
    shifts = [p * conv.dilation[0] - pad[0] for p in range(taps.shape[0])]
    centre = shifts.index(0) if 0 in shifts else None
    if centre is None:
        out.copy_(const.expand_as(out))
    else:
        torch.addcmul(const, h, scaled[centre], out=out)
    for p, s in enumerate(shifts):
        if p == centre:
            continue
        lo = min(frames, max(0, -s))  # frames k < lo read before the input
        hi = max(lo, min(frames, frames - s))  # frames k >= hi read after it
        if hi > lo:
            out[:, lo:hi].addcmul_(h[:, lo + s : hi + s], scaled[p])
        outside = (shift * taps[p]).to(h.dtype)  # (batch, 1, H)
        if lo > 0:
            out[:, :lo].sub_(outside)
        if hi < frames:
            out[:, hi:].sub_(outside)
    return out


def mask_network_inference(net: torch.nn.Module, w: Tensor,
                           dtype: torch.dtype = torch.float32) -> Tensor:
    """``tsmixit.models.conv_tasnet.MaskNetwork.forward`` (gLN) without gradients,
    time-major, products and activations in ``dtype`` (see the section's comment).

    One float32 stream (batch, K, B + Sc) holds the residual stream x (columns :B) beside the
    skip sum (columns B:), so that each block's residual and skip products are one product
    into both; the constants of their biases and of the folded gLN shifts are kept apart as
    ``carry`` (batch, 1, B + Sc), added to the stream only where needed: inside the next
    block's first product, W (x + carry) + b = W x + (W carry + b), and once to the skip sum.

    w: (batch, K, N_in) float32 -> masks (batch, K, C, N) in ``dtype``
    """
    batch, frames, B = w.shape[0], w.shape[1], net.bottleneck.out_channels
    stream = w.new_zeros(batch, frames, B + net.mask_conv.in_channels)  # (batch, K, B + Sc)
    x, skip = stream[..., :B], stream[..., B:]
    scale, shift = _gln_affine(w, net.in_norm)  # (batch, 1, N_in)
    weight = net.bottleneck.weight[..., 0]  # (B, N_in)
    _accumulate(x, w.to(dtype), weight * scale)  # (W diag(a)) w, per example
    carry = F.pad(shift @ weight.t() + net.bottleneck.bias, (0, skip.shape[2]))  # (b, 1, B+Sc)
    blocks = [block for blocks in net.repeats for block in blocks]
    h = w.new_empty(batch, frames, blocks[0].in_conv.out_channels, dtype=dtype)  # (batch, K, H)
    y = torch.empty_like(h)  # (batch, K, H)
    for block in blocks:
        w_in = block.in_conv.weight[..., 0]  # (H, B)
        bias = (carry[..., :B] @ w_in.t() + block.in_conv.bias).to(dtype)  # (batch, 1, H)
        torch.baddbmm(bias, x.to(dtype), w_in.t().to(dtype).expand(batch, -1, -1), out=h)
        F.leaky_relu_(h, float(block.act_norm1.act.weight))
        scale, shift = _gln_affine(h, block.act_norm1.norm)  # (batch, 1, H)
        _depthwise_of_gln(h, y, block.depthwise, block.depthwise.pad, scale, shift)
        F.leaky_relu_(y, float(block.act_norm2.act.weight))
        scale, shift = _gln_affine(y, block.act_norm2.norm)  # (batch, 1, H)
        convs = [block.skip_conv] if block.res_conv is None else [block.res_conv, block.skip_conv]
        weight = torch.cat([conv.weight[..., 0] for conv in convs])  # (B + Sc or Sc, H)
        columns = slice(B if block.res_conv is None else 0, None)
        # W (a y + c) + b = (W diag(a)) y + (W c + b), W diag(a) per example
        _accumulate(stream[..., columns], y, weight * scale)
        carry[..., columns] += shift @ weight.t() + torch.cat([conv.bias for conv in convs])
    act = F.leaky_relu_(skip.add_(carry[..., B:]), float(net.out_act.weight))  # (batch, K, Sc)
    conv = net.mask_conv
    masks = F.linear(act.to(dtype), conv.weight[..., 0].to(dtype), conv.bias.to(dtype))
    masks = masks.view(batch, frames, net.n_sources, net.N)  # (batch, K, C, N)
    if net.mask_activation == "relu":
        return masks.relu_()
    if net.mask_activation == "sigmoid":
        return masks.sigmoid_()
    return torch.softmax(masks, dim=2)


def encode_frames(x: Tensor, weight: Tensor, hop: int) -> Tensor:
    """The encoder ``Conv1d(1, N, L, stride=hop, bias=False)`` time-major: frames of x as
    rows times U^T. x: (batch, T_pad), weight U: (N, 1, L) -> (batch, K, N), K frames."""
    frames = x.unfold(-1, weight.shape[-1], hop)  # (batch, K, L), overlapping views
    return torch.matmul(frames, weight[:, 0, :].t())  # (batch, K, N)


def decode_frames(masked: Tensor, weight: Tensor) -> Tensor:
    """The decoder ``ConvTranspose1d(N, 1, L, stride=L/2, bias=False)`` of time-major input:
    one product to frames of L samples, then sample k L/2 + j gets frames[k, j] (j < L).

    masked: (batch, K, C, N), weight V: (N, 1, L) -> (batch, C, (K + 1) L/2)
    """
    batch, frames, channels = masked.shape[:3]
    hop = weight.shape[-1] // 2
    out = torch.matmul(masked, weight[:, 0, :])  # (batch, K, C, L)
    samples = out.new_zeros(batch, frames + 1, channels, hop)  # (batch, K+1, C, hop)
    samples[:, :frames] = out[..., :hop]
    samples[:, 1:] += out[..., hop:]
    return samples.permute(0, 2, 1, 3).reshape(batch, channels, -1)  # (batch, C, T_pad)

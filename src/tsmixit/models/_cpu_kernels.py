"""Hand-written CPU backward passes for the layers a separator repeats most: PReLU, PReLU
followed by a one-group norm (gLN), and the same-length depthwise convolution.

Notation: x (batch, C, K) is a layer's input, C channels over K frames; a is the PReLU's one
shared slope; gamma, beta (C,) are the norm's per-channel scale and shift; w (C, 1, P) and
b (C,) are the depthwise filters (P taps) and biases, d their dilation; grad is dL/d(output),
shaped like the output. Each autograd function keeps the forward pass of torch and replaces
its backward pass; the layers in ``tsmixit.models.conv_tasnet`` call them only when training
on the CPU (gradients on, CPU tensors) and use plain torch operations otherwise (inference,
ONNX export, GPU).

Why by hand: torch's generic CPU backward kernels for PReLU and for depthwise convolutions
are slower than the few fused operations below (``benchmarks/bench_cpu_kernels.py`` prints
both), and the PReLU + norm pair can recompute its PReLU instead of keeping it. Under CPU
autocast every function runs in float32.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

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

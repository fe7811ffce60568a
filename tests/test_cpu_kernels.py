"""The CPU kernels of ``tsmixit.models._cpu_kernels``: the bfloat16 training path against the
float32 layers on fixed inputs (forward and gradients), and its dispatch.

Tolerances: bfloat16 keeps 8 significant bits, so one rounding moves a value by up to 2^-9
(0.2 %) of itself. A layer rounds its input, its weights and its output once each (sums
accumulate in float32), about 0.5 % relative (L2) at most; the whole mask network stacks
some 30 such layers, about 1-2 % on the output and the gradients (measured: 0.9 % and 2.2 %
for ``tiny``). The bounds below leave a margin of about 2-3x. PReLU slopes are left out of
the per-tensor gradient bounds of the whole network: each is a sum over every activation
whose terms cancel, so any perturbation moves it a lot (0.1 % noise on the weights flips the
sign of the first block's slope gradient in float32 alone); they enter the overall bound.

The inference path (no gradients) is checked against torch's own layers (the model with the
path switched off): float32 within 1e-5 relative (measured about 1e-6 for tiny, small and
paper); the bfloat16 inference path within 35 dB SI-SNR of float32 on random weights (measured
about 40 dB at random initialisation, 54-60 dB for trained weights, benchmarks/bench_separate.py).
"""

import pytest
import torch
import torch.nn.functional as F

from tsmixit.models import _cpu_kernels as ck
from tsmixit.models.conv_tasnet import ConvTasNet, DepthwiseConv

BF16 = torch.bfloat16


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of a against the reference b."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def grads(fn, inputs, upstream):
    """Gradients of sum(fn(*inputs) * upstream) with respect to every input."""
    for t in inputs:
        t.grad = None
    out = fn(*inputs)
    out.backward(upstream.to(out.dtype))
    return out.detach(), [t.grad.clone() for t in inputs]


def leaf(*shape, scale=1.0, shift=0.0):
    return (torch.randn(*shape) * scale + shift).requires_grad_(True)


# ---- single layers ------------------------------------------------------------------------


def test_pointwise_bf16_equals_float32_conv():
    x, w, b = leaf(3, 48, 500), leaf(40, 48, scale=0.2), leaf(40)
    g = torch.randn(3, 40, 500)
    ref, ref_grads = grads(lambda x, w, b: F.conv1d(x, w.unsqueeze(-1), b), [x, w, b], g)
    out, got = grads(lambda x, w, b: ck.PointwiseBF16Function.apply(x, w, b)[0], [x, w, b], g)
    assert out.dtype == BF16
    assert rel(out, ref) < 1e-2
    for a, r in zip(got, ref_grads, strict=True):
        assert a.dtype == torch.float32  # float32 parameters get float32 gradients
        assert rel(a, r) < 1e-2


def test_pointwise_bf16_two_outputs_share_one_product():
    """Residual and skip convolutions of one input: the same as two separate layers."""
    x = leaf(2, 32, 300)
    w1, b1, w2, b2 = leaf(16, 32), leaf(16), leaf(24, 32), leaf(24)
    g1, g2 = torch.randn(2, 16, 300), torch.randn(2, 24, 300)
    one, two = ck.PointwiseBF16Function.apply(x, w1, b1, w2, b2)
    (one.float() * g1).sum().add((two.float() * g2).sum()).backward()
    together = [t.grad.clone() for t in (x, w1, b1, w2, b2)]
    for t in (x, w1, b1, w2, b2):
        t.grad = None
    (ck.PointwiseBF16Function.apply(x, w1, b1)[0].float() * g1).sum().backward()
    (ck.PointwiseBF16Function.apply(x, w2, b2)[0].float() * g2).sum().backward()
    apart = [t.grad for t in (x, w1, b1, w2, b2)]
    assert torch.equal(one, ck.PointwiseBF16Function.apply(x, w1, b1)[0])
    for a, b in zip(together, apart, strict=True):  # dL/dx: one bfloat16 sum against two
        assert rel(a, b) < 1e-2


def test_prelu_group_norm_bf16_equals_float32():
    x, a = leaf(3, 32, 400, shift=0.1), torch.full((1,), 0.25, requires_grad=True)
    gamma, beta = leaf(32, shift=1.0), leaf(32)
    g = torch.randn(3, 32, 400)

    def fp32(x, a, gamma, beta):
        return ck.PReLUGroupNormFunction.apply(x, a, gamma, beta, 1e-8)

    def bf16(x, a, gamma, beta):
        return ck.PReLUGroupNormBF16Function.apply(x.to(BF16), a, gamma, beta, 1e-8)

    ref, ref_grads = grads(fp32, [x, a, gamma, beta], g)
    out, got = grads(bf16, [x, a, gamma, beta], g)
    assert out.dtype == BF16
    assert rel(out, ref) < 1e-2
    for name, a_, r in zip(["x", "a", "gamma", "beta"], got, ref_grads, strict=True):
        assert a_.dtype == torch.float32
        assert rel(a_, r) < 2e-2, name


def test_prelu_bf16_equals_float32():
    x, a = leaf(2, 16, 300), torch.full((1,), 0.1, requires_grad=True)
    g = torch.randn(2, 16, 300)
    ref, ref_grads = grads(F.prelu, [x, a], g)
    out, got = grads(lambda x, a: ck.PReLUBF16Function.apply(x.to(BF16), a), [x, a], g)
    assert rel(out, ref) < 1e-2
    for a_, r in zip(got, ref_grads, strict=True):
        assert rel(a_, r) < 1e-2


@pytest.mark.parametrize(("P", "dilation", "pad"), [
    (3, 1, (1, 1)), (3, 4, (4, 4)), (3, 8, (16, 0)), (2, 2, (1, 1)), (5, 2, (4, 4)),
])  # fmt: skip
def test_depthwise_bf16_equals_float32(P, dilation, pad):
    """Non-causal and causal padding, odd and even kernels (no tap at shift 0 for P = 2)."""
    x, w, b = leaf(2, 24, 200), leaf(24, 1, P, scale=0.5), leaf(24)
    g = torch.randn(2, 24, 200)

    def fp32(x, w, b):
        return ck.DepthwiseFunction.apply(x, w, b, dilation, pad)

    def bf16(x, w, b):
        return ck.DepthwiseBF16Function.apply(x.to(BF16), w, b, dilation, pad)

    ref, ref_grads = grads(fp32, [x, w, b], g)
    out, got = grads(bf16, [x, w, b], g)
    assert out.shape == ref.shape
    assert rel(out, ref) < 1e-2
    for a, r in zip(got, ref_grads, strict=True):
        assert rel(a, r) < 1e-2


def test_decode_overlap_add_equals_transposed_convolution():
    decoder = torch.nn.ConvTranspose1d(32, 1, 16, stride=8, bias=False)
    masked = leaf(3, 32, 77)
    g = torch.randn(3, 1, 78 * 8)
    ref, ref_grads = grads(decoder, [masked], g)
    out, got = grads(lambda m: ck.decode_overlap_add(m, decoder.weight), [masked], g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[0], ref_grads[0], rtol=1e-5, atol=1e-6)


# ---- the whole model ----------------------------------------------------------------------


def train_pass(model, x, autocast):
    """Forward under CPU bfloat16 autocast or not, backward of a fixed loss: output, grads."""
    model.zero_grad()
    with torch.autocast("cpu", dtype=BF16, enabled=autocast):
        y = model(x)
    (y * torch.linspace(-1, 1, y.shape[-1])).pow(2).sum().backward()
    return y.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.fixture
def bf16_on(monkeypatch):
    """Force the dispatch onto the bfloat16 path, whatever this CPU has (numerics only)."""
    monkeypatch.setattr(ck, "bf16_training_available", lambda: True)


@pytest.mark.parametrize("kwargs", [{}, {"n_channels": 2}, {"consistency": "uniform"},
                                    {"mask_activation": "sigmoid"}])
def test_conv_tasnet_bf16_path_equals_float32(bf16_on, kwargs):
    """Output within 3e-2 (L2, relative), all gradients together within 6e-2 and aligned
    (cosine > 0.998), each weight tensor but the PReLU slopes within 0.2 (measured 0.9 %,
    2.2 %, 0.99976 and at most 0.07 on ``tiny``)."""
    torch.manual_seed(0)
    model = ConvTasNet.from_preset("tiny", **kwargs).train()
    x = torch.randn(2, kwargs.get("n_channels", 1), 3001).squeeze(1)
    ref, ref_grads = train_pass(model, x, autocast=False)
    out, got = train_pass(model, x, autocast=True)
    assert out.dtype == torch.float32
    assert rel(out, ref) < 3e-2
    flat = torch.cat([got[k].flatten() for k in ref_grads])
    flat_ref = torch.cat([ref_grads[k].flatten() for k in ref_grads])
    assert rel(flat, flat_ref) < 6e-2
    assert F.cosine_similarity(flat, flat_ref, dim=0) > 0.998
    for k in ref_grads:
        if not k.endswith("act.weight"):
            assert rel(got[k], ref_grads[k]) < 0.2, k


def test_conv_tasnet_bf16_path_with_checkpointing(bf16_on):
    torch.manual_seed(0)
    model = ConvTasNet.from_preset("tiny").train()
    x = torch.randn(2, 2001)
    plain_out, plain = train_pass(model, x, autocast=True)
    model.separator.checkpointing = True
    ckpt_out, ckpt = train_pass(model, x, autocast=True)
    assert torch.equal(plain_out, ckpt_out)
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-6, atol=1e-6)


def test_dispatch_keeps_float32_without_bf16_instructions(monkeypatch):
    """No AVX512-BF16/AMX flags: autocast training runs the exact float32 layers (bit for bit
    what training without autocast gives), whatever the environment variable says."""
    monkeypatch.setattr(ck, "cpu_bf16_flags", lambda: frozenset())
    for mode in ("auto", "on"):
        monkeypatch.setenv(ck.BF16_MODE_ENV, mode)
        assert not ck.bf16_training_available()
    torch.manual_seed(0)
    model = ConvTasNet.from_preset("tiny").train()
    x = torch.randn(2, 2001)
    ref, ref_grads = train_pass(model, x, autocast=False)
    with torch.autocast("cpu", dtype=BF16):
        assert not ck.use_bf16_training(x)
    out, got = train_pass(model, x, autocast=True)
    assert torch.equal(out, ref)
    for k in ref_grads:
        assert torch.equal(got[k], ref_grads[k]), k


def test_dispatch_measures_and_obeys_the_switch(monkeypatch):
    monkeypatch.setattr(ck, "cpu_bf16_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(ck, "bf16_matmul_speedup", lambda: 1.1)  # bf16 not faster here
    monkeypatch.delenv(ck.BF16_MODE_ENV, raising=False)
    assert not ck.bf16_training_available()
    monkeypatch.setenv(ck.BF16_MODE_ENV, "on")
    assert ck.bf16_training_available()
    monkeypatch.setattr(ck, "bf16_matmul_speedup", lambda: 3.0)
    monkeypatch.setenv(ck.BF16_MODE_ENV, "auto")
    assert ck.bf16_training_available()
    monkeypatch.setenv(ck.BF16_MODE_ENV, "off")
    assert not ck.bf16_training_available()


def test_bf16_path_only_while_training_on_cpu_under_bf16_autocast(bf16_on):
    x = torch.randn(1, 100)
    assert not ck.use_bf16_training(x)  # no autocast
    with torch.autocast("cpu", dtype=BF16):
        assert ck.use_bf16_training(x)
        with torch.no_grad():
            assert not ck.use_bf16_training(x)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not ck.use_bf16_training(x)


@pytest.mark.parametrize("kwargs", [{}, {"norm": "cLN", "causal": True}])
def test_autocast_elsewhere_runs_exact_float32(bf16_on, kwargs):
    """Inference under autocast, and a cLN model even in training, get the float32 layers
    with autocast off: the same bits as without autocast."""
    torch.manual_seed(0)
    model = ConvTasNet.from_preset("tiny", **kwargs)
    x = torch.randn(2, 1601)
    with torch.no_grad():
        ref = model.eval()(x)
        with torch.autocast("cpu", dtype=BF16):
            assert torch.equal(model(x), ref)
    if kwargs:
        model.train()
        ref, ref_grads = train_pass(model, x, autocast=False)
        out, got = train_pass(model, x, autocast=True)
        assert torch.equal(out, ref)
        for k in ref_grads:
            assert torch.equal(got[k], ref_grads[k]), k


def test_cpu_flags_and_measurement_are_sane():
    assert ck.cpu_bf16_flags() <= {"avx512_bf16", "amx_bf16"}
    assert ck.bf16_matmul_speedup() > 0.0


def test_conv_tasnet_declares_the_bf16_path():
    """What the training code reads to choose bf16-mixed (only separators that have the path)."""
    assert ConvTasNet.supports_cpu_bf16 is True


# ---- the inference path -------------------------------------------------------------------


def torch_layers(model, x):
    """The model's output through torch's own layers (the inference path switched off)."""
    fast = ck.use_fast_inference
    ck.use_fast_inference = lambda x: False
    try:
        with torch.no_grad():
            return model(x)
    finally:
        ck.use_fast_inference = fast


def perturbed(model):
    """Non-trivial norm scales and shifts and biases, so that every fold is exercised."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def speechlike(batch, frames, seed=0):
    """Lowpassed noise under a syllable-rate envelope, (batch, T), about 0.1 RMS."""
    gen = torch.Generator().manual_seed(seed)
    noise = F.avg_pool1d(torch.randn(batch, 1, frames + 7, generator=gen), 8, stride=1)[:, 0]
    t = torch.arange(frames) / 8000
    return 0.3 * noise * (0.5 + 0.5 * torch.sin(2 * torch.pi * 4 * t) ** 2)


def si_snr_db(est, ref):
    """SI-SNR of est against ref per row, dB: (..., T) -> (...)."""
    est, ref = est - est.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
    target = (est * ref).sum(-1, keepdim=True) / ref.square().sum(-1, keepdim=True) * ref
    return 10 * torch.log10(target.square().sum(-1) / (est - target).square().sum(-1))


@pytest.mark.parametrize("kwargs", [
    {}, {"n_channels": 2}, {"mask_activation": "sigmoid"},
    {"mask_activation": "softmax", "n_sources": 3}, {"consistency": "energy"},
    {"P": 2, "X": 3},  # even kernel, dilation 2: no tap at shift 0
    {"P": 4}, {"Sc": 24},
])
@pytest.mark.parametrize("frames", [1, 37, 2001])
def test_inference_path_equals_torch_layers(kwargs, frames):
    """Two different examples (per-example statistics); 1 and 37 samples leave taps of the
    dilated convolutions outside the input (the edge corrections)."""
    torch.manual_seed(0)
    model = perturbed(ConvTasNet.from_preset("tiny", **kwargs))
    x = torch.randn(2, kwargs.get("n_channels", 1), frames).squeeze(1)
    x[1] *= 3.0
    ref = torch_layers(model, x)
    with torch.inference_mode():
        out = model(x)
    assert out.shape == ref.shape
    assert rel(out, ref) < 1e-5
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_inference_path_only_without_gradients_and_not_when_tracing(monkeypatch):
    """With gradients (training) and under tracing (ONNX export) the network runs its layers;
    float64 input too."""
    def refuse(*args):
        raise AssertionError("the inference path ran")

    monkeypatch.setattr(ck, "mask_network_inference", refuse)
    model = ConvTasNet.from_preset("tiny").eval()
    x = torch.randn(1, 400)
    model(x).sum().backward()
    with torch.no_grad():
        torch.jit.trace(model, x, check_trace=False)  # its check reruns it untraced
        model.double()(x.double())
    with torch.no_grad(), pytest.raises(AssertionError, match="inference path ran"):
        model.float()(x)


@pytest.mark.parametrize("frames, offset", [(1, 0.0), (37, 2.0), (8000, 3.0)])
def test_gln_affine_is_the_group_norm(frames, offset):
    """a y + c against torch's GroupNorm(1, C) in float64, two examples of other scales, the
    second with a mean up to 6 deviations (E[y^2] - mu^2 cancels there); 8000 x 512 values is
    where a float32 sum of squares would be 1e-4 off."""
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(1, 512, eps=1e-8)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(512) + 0.5)
        norm.bias.copy_(torch.randn(512))
        y = torch.randn(2, frames, 512) * torch.tensor([2.0, 0.5])[:, None, None] + offset
        y = F.leaky_relu(y, 0.25)  # (batch, K, C)
        scale, shift = ck._gln_affine(y, norm)
        want = norm.double()(y.double().transpose(1, 2)).transpose(1, 2)  # (batch, K, C)
    assert scale.shape == shift.shape == (2, 1, 512)
    torch.testing.assert_close((y * scale + shift).double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("P, dilation, causal", [(3, 1, False), (3, 4, False), (2, 2, False),
                                                 (4, 1, False), (3, 2, True)])
@pytest.mark.parametrize("frames", [1, 3, 40])
def test_depthwise_of_gln_equals_the_convolution_of_the_norm(P, dilation, causal, frames):
    """Against the brute force: a h + c formed, zero-padded, convolved by torch."""
    conv = DepthwiseConv(5, P, dilation, causal)
    with torch.no_grad():
        conv.bias.copy_(torch.randn(5))
    scale, shift = torch.randn(2, 1, 5), torch.randn(2, 1, 5)  # per example
    h = torch.randn(2, frames, 5)  # (batch, K, H)
    out = torch.full_like(h, float("nan"))  # every value must be written
    with torch.no_grad():
        got = ck._depthwise_of_gln(h, out, conv, conv.pad, scale, shift)
        normed = (h * scale + shift).transpose(1, 2)  # (batch, H, K)
        want = F.conv1d(F.pad(normed, conv.pad), conv.weight, conv.bias, dilation=dilation,
                        groups=5).transpose(1, 2)
    assert got is out
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_encode_and_decode_frames_equal_the_convolutions():
    encoder = torch.nn.Conv1d(1, 12, 16, stride=8, bias=False)
    decoder = torch.nn.ConvTranspose1d(12, 1, 16, stride=8, bias=False)
    x = torch.randn(2, 8 * 30 + 8)  # (batch, T_pad): 30 frames
    with torch.no_grad():
        w = ck.encode_frames(x, encoder.weight, 8)  # (batch, K, N)
        torch.testing.assert_close(w, encoder(x[:, None]).transpose(1, 2), rtol=1e-5,
                                   atol=1e-6)
        masked = torch.randn(2, 30, 3, 12)  # (batch, K, C, N)
        want = decoder(masked.permute(0, 2, 3, 1).reshape(6, 12, 30)).view(2, 3, -1)
        torch.testing.assert_close(ck.decode_frames(masked, decoder.weight), want, rtol=1e-5,
                                   atol=1e-6)


@pytest.fixture
def bf16_inference_on(monkeypatch):
    """The bfloat16 inference path for any width, whatever this CPU has (numerics only)."""
    monkeypatch.setattr(ck, "bf16_training_available", lambda: True)
    monkeypatch.setattr(ck, "BF16_INFERENCE_MIN_CHANNELS", 1)


@pytest.mark.parametrize("kwargs", [{}, {"n_channels": 2, "mask_activation": "softmax"}])
def test_bf16_inference_within_tolerance_of_float32(bf16_inference_on, kwargs):
    torch.manual_seed(0)
    model = ConvTasNet.from_preset("tiny", **kwargs).eval()
    x = speechlike(2, 8000)
    if kwargs:
        x = torch.stack([x, speechlike(2, 8000, seed=1)], dim=1)  # (batch, mics, T)
    with torch.inference_mode():
        ref = model(x)
        with ck.allow_bf16_inference():
            out = model(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    snr = si_snr_db(out, ref)
    assert (snr > 35.0).all(), snr
    assert (snr < 80.0).all(), snr  # it did run in bfloat16


def test_bf16_inference_only_where_allowed_wide_and_switched_on(monkeypatch):
    """Outside ``allow_bf16_inference``, for narrow products, without the CPU flags or with
    the switch off, inference is float32: the same bits as the float32 path."""
    monkeypatch.setattr(ck, "cpu_bf16_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(ck, "bf16_matmul_speedup", lambda: 3.0)
    monkeypatch.setenv(ck.BF16_MODE_ENV, "auto")
    assert not ck.bf16_inference(512)
    with ck.allow_bf16_inference():
        assert ck.bf16_inference(ck.BF16_INFERENCE_MIN_CHANNELS)
        assert not ck.bf16_inference(ck.BF16_INFERENCE_MIN_CHANNELS - 1)
        monkeypatch.setenv(ck.BF16_MODE_ENV, "off")
        assert not ck.bf16_inference(512)
        monkeypatch.setenv(ck.BF16_MODE_ENV, "on")
        monkeypatch.setattr(ck, "cpu_bf16_flags", lambda: frozenset())
        assert not ck.bf16_inference(512)
    assert not ck.bf16_inference(512)  # the context resets
    model = ConvTasNet.from_preset("tiny").eval()  # H = 64: below the width
    x = torch.randn(1, 900)
    monkeypatch.setattr(ck, "cpu_bf16_flags", lambda: frozenset({"avx512_bf16"}))
    with torch.inference_mode():
        ref = model(x)
        with ck.allow_bf16_inference():
            assert torch.equal(model(x), ref)

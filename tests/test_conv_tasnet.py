import pytest
import torch

from tsmixit.errors import AudioError, ConfigError
from tsmixit.models import _cpu_kernels
from tsmixit.models.conv_tasnet import (
    PRESETS,
    ConvTasNet,
    CumulativeLayerNorm,
    DepthwiseConv,
    MaskNetwork,
    PReLU,
    PReLUNorm,
    make_norm,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hand_count(n_sources, N, L, B, H, P, X, R, Sc=None, n_channels=1, S=30):
    """Parameter count from the layer sizes of Fig. 1 (weights + biases, norms 2 per channel)."""
    Sc = B if Sc is None else Sc
    feat = N + (S if n_channels > 1 else 0)
    encoders = N * L + (S * n_channels * L if n_channels > 1 else 0)  # no biases
    decoder = N * L
    bottleneck = 2 * feat + feat * B + B
    block = (B * H + H) + 1 + 2 * H + (H * P + H) + 1 + 2 * H + (H * Sc + Sc)
    residual = H * B + B  # every block but the last
    head = 1 + Sc * n_sources * N + n_sources * N
    return encoders + decoder + bottleneck + X * R * block + (X * R - 1) * residual + head


def test_paper_preset_has_about_5_05_million_parameters():
    count = n_params(ConvTasNet.from_preset("paper"))
    assert abs(count - 5.05e6) / 5.05e6 < 0.02
    assert count == hand_count(2, **PRESETS["paper"])


@pytest.mark.parametrize("preset", ["authors", "small", "tiny"])
def test_preset_parameter_counts_match_the_layer_sizes(preset):
    assert n_params(ConvTasNet.from_preset(preset)) == hand_count(2, **PRESETS[preset])


def test_small_and_tiny_sizes():
    assert 300_000 <= n_params(ConvTasNet.from_preset("small")) <= 400_000
    assert n_params(ConvTasNet.from_preset("tiny")) <= 60_000


def test_multichannel_and_four_output_counts():
    model = ConvTasNet.from_preset("tiny", n_sources=4, n_channels=6, S=12, Sc=16)
    hp = {**PRESETS["tiny"], "n_channels": 6, "S": 12, "Sc": 16}
    assert n_params(model) == hand_count(4, **hp)


@pytest.mark.parametrize("length", [1, 7, 8, 9, 7999, 8001])
def test_output_length_equals_input_length(length):
    model = ConvTasNet.from_preset("tiny", n_sources=3)
    out = model(torch.randn(2, length))
    assert out.shape == (2, 3, length)
    assert torch.isfinite(out).all()


def test_channel_dimension_of_one_is_accepted():
    model = ConvTasNet.from_preset("tiny").eval()
    x = torch.randn(2, 1000)
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)))


def test_gln_matches_hand_computation():
    x = torch.randn(3, 5, 11, dtype=torch.float64)
    norm = make_norm("gLN", 5).double()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    mean = x.mean(dim=(1, 2), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(1, 2), keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-8) * norm.weight[:, None] + norm.bias[:, None]
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cln_matches_hand_computation(dtype):
    x = (torch.randn(2, 4, 9, dtype=torch.float64) * 3 + 1).to(dtype)
    norm = CumulativeLayerNorm(4).to(dtype)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    expected = torch.empty_like(x)
    for k in range(x.shape[-1]):
        past = x[:, :, : k + 1].double()
        mean = past.mean(dim=(1, 2), keepdim=True)
        var = ((past - mean) ** 2).mean(dim=(1, 2), keepdim=True)
        frame = (x[:, :, k : k + 1].double() - mean) / torch.sqrt(var + 1e-8)
        expected[:, :, k : k + 1] = (frame * norm.weight + norm.bias).to(dtype)
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("slope", [0.25, -0.3, 0.0])
def test_prelu_fast_backward_matches_torch(slope):
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 5, 7, dtype=torch.float64)
    ours, ref = PReLU().double(), torch.nn.PReLU().double()
    ours.weight.data.fill_(slope)
    ref.weight.data.fill_(slope)
    ours(x).backward(grad)
    gx, ga = x.grad.clone(), ours.weight.grad.clone()
    x.grad = None
    ref(x).backward(grad)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(ga, ref.weight.grad)


@pytest.mark.parametrize("norm", ["gLN", "cLN"])
def test_prelu_norm_matches_torch_modules(norm):
    pair = PReLUNorm(norm, 6).double()
    torch.nn.init.normal_(pair.norm.weight)
    torch.nn.init.normal_(pair.norm.bias)
    x = torch.randn(2, 6, 30, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 6, 30, dtype=torch.float64)
    params = (x, pair.act.weight, pair.norm.weight, pair.norm.bias)
    ref_norm = torch.nn.GroupNorm(1, 6, eps=1e-8).double() if norm == "gLN" else pair.norm
    ref_norm.load_state_dict(pair.norm.state_dict())
    expected = ref_norm(torch.nn.functional.prelu(x, pair.act.weight))
    ref_grads = torch.autograd.grad(expected, (x, pair.act.weight, *ref_norm.parameters()), grad)
    out = pair(x)
    torch.testing.assert_close(out, expected)
    for ours, ref in zip(torch.autograd.grad(out, params, grad), ref_grads, strict=True):
        torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize(
    "P, dilation, causal", [(3, 1, False), (3, 4, True), (4, 2, False), (3, 64, False)]
)
def test_depthwise_fast_backward_matches_torch(P, dilation, causal):
    conv = DepthwiseConv(5, P, dilation, causal).double()
    x = torch.randn(2, 5, 40, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 5, 40, dtype=torch.float64)
    total = (P - 1) * dilation
    left = total if causal else total // 2
    # Reference: torch's convolution on the explicitly padded input.
    expected = torch.nn.functional.conv1d(
        torch.nn.functional.pad(x, (left, total - left)),
        conv.weight,
        conv.bias,
        dilation=dilation,
        groups=5,
    )
    ref_grads = torch.autograd.grad(expected, (x, conv.weight, conv.bias), grad)
    out = conv(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected)
    for ours, ref in zip(
        torch.autograd.grad(out, (x, conv.weight, conv.bias), grad), ref_grads, strict=True
    ):
        torch.testing.assert_close(ours, ref)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected)


def test_causal_model_ignores_the_future():
    L, t0 = 16, 1200
    model = ConvTasNet.from_preset("tiny", causal=True, norm="cLN", L=L)
    x = torch.randn(2, 2000)
    y = x.clone()
    y[:, t0:] = torch.randn(2, 2000 - t0)
    # Output sample t reads frames starting at or before t, which end before t + L.
    past = slice(0, t0 - L + 1)
    with torch.no_grad():
        out_x, out_y = model(x), model(y)
    torch.testing.assert_close(out_x[..., past], out_y[..., past], rtol=0, atol=1e-6)
    assert (out_x[..., t0:] - out_y[..., t0:]).abs().max() > 1e-3
    # The same check fails for the non-causal model: the test can see leaks.
    full = ConvTasNet.from_preset("tiny")
    with torch.no_grad():
        leak = (full(x)[..., past] - full(y)[..., past]).abs().max()
    assert leak > 1e-3


@pytest.mark.parametrize("weights", ["uniform", "energy"])
def test_consistency_makes_outputs_sum_to_the_mixture(weights):
    model = ConvTasNet.from_preset("tiny", n_sources=4, consistency=weights)
    x = torch.randn(2, 1001)
    torch.testing.assert_close(model(x).sum(dim=1), x, rtol=0, atol=1e-5)
    multi = ConvTasNet.from_preset("tiny", n_channels=3, consistency=weights)
    xm = torch.randn(2, 3, 999)
    torch.testing.assert_close(multi(xm).sum(dim=1), xm[:, 0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("mics", [2, 4, 8])
def test_multichannel_shapes(mics):
    model = ConvTasNet.from_preset("tiny", n_channels=mics, n_sources=3)
    for length in (1, 803):
        assert model(torch.randn(2, mics, length)).shape == (2, 3, length)


def test_wrong_channel_count_fails_clearly():
    model = ConvTasNet.from_preset("tiny", n_channels=4)
    with pytest.raises(AudioError, match="model built for 4 microphones got 2"):
        model(torch.randn(1, 2, 800))
    with pytest.raises(AudioError, match="model built for 4 microphones got 1"):
        model(torch.randn(1, 800))
    mono = ConvTasNet.from_preset("tiny")
    with pytest.raises(AudioError, match="model built for 1 microphone got 2"):
        mono(torch.randn(1, 2, 800))
    with pytest.raises(AudioError, match=r"\(batch, time\)"):
        mono(torch.randn(800))
    with pytest.raises(AudioError, match="floating-point"):
        mono(torch.ones(1, 800, dtype=torch.int16))
    with pytest.raises(AudioError, match="empty"):
        mono(torch.randn(1, 0))


def test_spatial_encoder_is_wired_in():
    model = ConvTasNet.from_preset("tiny", n_channels=4).eval()
    x = torch.randn(1, 4, 1600)
    other_mic1 = x.clone()
    other_mic1[:, 1] = torch.randn(1600)
    with torch.no_grad():
        out = model(x)
        assert (model(other_mic1) - out).abs().max() > 1e-4
        model.spatial_encoder.weight.zero_()
        assert (model(x) - out).abs().max() > 1e-4
        # Without spatial features, only the reference microphone matters.
        torch.testing.assert_close(model(other_mic1), model(x))


def test_mask_network_keeps_the_state_dict_keys():
    model = ConvTasNet.from_preset("tiny", n_channels=2)
    assert isinstance(model.separator, MaskNetwork)
    keys = list(model.state_dict())
    assert keys[:3] == ["encoder.weight", "spatial_encoder.weight", "separator.in_norm.weight"]
    assert "separator.repeats.1.3.skip_conv.weight" in keys
    assert "separator.repeats.1.3.res_conv.weight" not in keys  # the last block has none
    assert keys[-3:] == ["separator.mask_conv.weight", "separator.mask_conv.bias",
                         "decoder.weight"]


def test_hparams_rebuild_the_same_model():
    model = ConvTasNet.from_preset("tiny", n_sources=4, n_channels=2, consistency="energy")
    clone = ConvTasNet(**model.hparams)
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 2, 900)
    torch.testing.assert_close(clone(x), model(x))
    assert model.hparams["n_sources"] == 4 and model.hparams["N"] == PRESETS["tiny"]["N"]


def test_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 1200)
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = ConvTasNet.from_preset("tiny", checkpointing=flag)
        model(x).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, ckpt in zip(*grads, strict=True):
        torch.testing.assert_close(plain, ckpt)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"L": 15}, "L must be even"),
        ({"N": 0}, "N must be a positive integer"),
        ({"norm": "BN"}, "norm must be"),
        ({"mask_activation": "tanh"}, "mask_activation"),
        ({"consistency": "loud"}, "consistency"),
        ({"causal": True}, "needs norm='cLN'"),
        ({"causal": True, "norm": "cLN", "consistency": "energy"}, "energy"),
    ],
)
def test_impossible_hyperparameters_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ConvTasNet.from_preset("tiny", **kwargs)


def test_unknown_preset_or_argument():
    with pytest.raises(ConfigError, match="unknown Conv-TasNet preset 'huge'"):
        ConvTasNet.from_preset("huge")
    with pytest.raises(ConfigError, match="'K'"):
        ConvTasNet.from_preset("tiny", K=3)


@pytest.mark.parametrize("norm, causal", [("gLN", False), ("cLN", True)])
def test_trains_under_cpu_bfloat16_autocast(norm, causal):
    model = ConvTasNet.from_preset("tiny", norm=norm, causal=causal)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1000))
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_inference_without_gradients_equals_the_training_forward(preset):
    """The time-major inference path (no gradients) against the forward pass that training
    runs (gradients on) on one fixed input: within 1e-5 relative (measured about 1e-6)."""
    torch.manual_seed(0)
    model = ConvTasNet.from_preset(preset).eval()
    x = torch.randn(2, 4001) * torch.tensor([[0.1], [1.0]])
    want = model(x).detach()
    with torch.inference_mode():
        got = model(x)
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_cumulative_norm_model_keeps_its_layers_without_gradients(monkeypatch):
    """cLN has no folded form: without gradients the causal model runs its layers (the
    inference path is never entered), the same bits as the training forward."""
    def refuse(*args):
        raise AssertionError("the inference path ran")

    monkeypatch.setattr(_cpu_kernels, "mask_network_inference", refuse)
    torch.manual_seed(0)
    model = ConvTasNet.from_preset("tiny", norm="cLN", causal=True).eval()
    x = torch.randn(2, 1500)
    with torch.no_grad():
        got = model(x)
    assert torch.equal(got, model(x).detach())

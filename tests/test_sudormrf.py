"""SuDoRM-RF and SuDoRM-RF++: the published sizes, the frame padding (toy training:
test_separators.py)."""

import copy

import pytest
import torch

from tsmixit.models.conv_tasnet import DepthwiseConv, PReLU
from tsmixit.models.sudormrf import SuDoRMRF


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "preset, published",
    [
        # Tzinis, Wang & Smaragdis, MLSP 2020, Table 2 (also the image Selection_062.png of
        # github.com/etzinis/sudo_rm_rf): SuDoRM-RF 1.0x, 0.5x, 0.25x: 2.66, 1.42, 0.79 M.
        ("1.0x", 2.66e6),
        ("0.5x", 1.42e6),
        ("0.25x", 0.79e6),
        # The authors' README (github.com/etzinis/sudo_rm_rf), "Improved sudo rm-rf, 16
        # U-ConvBlocks, 512 enc. bases" trained on WSJ0-2mix: 5.02 M.
        ("improved", 5.02e6),
    ],
)
def test_published_presets_have_the_published_sizes(preset, published):
    count = n_params(SuDoRMRF.from_preset(preset))
    assert abs(count - published) / published < 0.02, count


def test_counts_equal_the_authors_code():
    # Counted by instantiating the authors' classes (sudormrf.SuDORMRF with
    # upsampling_depth=5, improved_sudormrf.SuDORMRF): 2,662,022 for 1.0x, of which a
    # GroupNorm(1, 512) (1,024 parameters, ``ln_mask_in``) that their forward never uses;
    # 5,016,353 for the improved model, as their notebook prints (5.016 M).
    assert n_params(SuDoRMRF.from_preset("1.0x")) == 2_662_022 - 1_024
    assert n_params(SuDoRMRF.from_preset("improved")) == 5_016_353


def test_small_and_tiny_sizes():
    assert 0.25e6 <= n_params(SuDoRMRF.from_preset("small")) <= 0.45e6
    assert n_params(SuDoRMRF.from_preset("tiny")) <= 40_000


@pytest.mark.parametrize("variant", ["original", "improved"])
@pytest.mark.parametrize("length", [1, 9, 160, 161, 4003])
def test_frames_are_a_multiple_of_two_to_the_q(variant, length):
    model = SuDoRMRF.from_preset("tiny", variant=variant, Q=3)
    frames = []
    model.blocks.register_forward_hook(lambda _m, _i, out: frames.append(out.shape[-1]))
    out = model(torch.randn(1, length))
    assert out.shape == (1, 2, length)
    assert frames[0] % 8 == 0


def test_one_output_original_uses_a_sigmoid_mask():
    model = SuDoRMRF.from_preset("tiny", variant="original", n_sources=1).eval()
    x = torch.randn(2, 1000)
    with torch.no_grad():
        assert model(x).shape == (2, 1, 1000)
        masks = model._masks(torch.randn(2, model.hparams["B"], 7))
    assert masks.shape == (2, 1, model.N, 7) and ((masks > 0) & (masks < 1)).all()


def plain_torch_copy(model: SuDoRMRF) -> SuDoRMRF:
    """The same model with torch's own PReLU and depthwise layers in place of the ones with
    hand-written CPU backward passes (same parameters)."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        for name, child in list(module.named_children()):
            if type(child) is PReLU:
                layer = torch.nn.PReLU(child.weight.numel())
            elif type(child) is DepthwiseConv:
                H = child.in_channels
                layer = torch.nn.Conv1d(H, H, 5, padding=2, groups=H)
            else:
                continue
            layer = layer.to(child.weight.dtype)
            layer.load_state_dict(child.state_dict())
            setattr(module, name, layer)
    return plain


@pytest.mark.parametrize("variant", ["improved", "original"])
def test_cpu_training_layers_give_torchs_gradients(variant):
    torch.manual_seed(0)
    model = SuDoRMRF.from_preset("tiny", variant=variant).double()
    plain = plain_torch_copy(model)
    assert not any(type(m) in (PReLU, DepthwiseConv) for m in plain.modules())
    assert any(type(m) is DepthwiseConv for m in model.modules())
    x, target = torch.randn(2, 1000, dtype=torch.float64), torch.randn(2, 2, 1000,
                                                                       dtype=torch.float64)
    grads = []
    for m in (model, plain):
        loss = ((m(x) - target) ** 2).mean()
        grads.append(torch.autograd.grad(loss, list(m.parameters())))
    names = [n for n, _ in model.named_parameters()]
    for name, got, want in zip(names, *grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), name

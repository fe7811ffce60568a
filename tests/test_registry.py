"""The separator registry: every registered class meets the interface; unknown names fail
clearly."""

import pytest
import torch

from tsmixit.errors import ConfigError
from tsmixit.models.registry import (
    ARCHITECTURES,
    DEFAULT_ARCH,
    SeparatorModel,
    build_separator,
    separator_class,
)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_separator_meets_the_interface(arch):
    cls = separator_class(arch)
    assert "tiny" in cls.presets
    model = cls.from_preset("tiny", n_sources=3).eval()
    assert isinstance(model, SeparatorModel)
    assert (model.n_sources, model.n_channels) == (3, 1)
    x = torch.randn(2, 1000)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 3, 1000)
        torch.testing.assert_close(model(x[:, None]), out)  # (B, 1, T) as (B, T)
    rebuilt = build_separator(arch, **model.hparams).eval()
    assert type(rebuilt) is cls and rebuilt.hparams == model.hparams
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out)
    multi = cls.from_preset("tiny", n_sources=2, n_channels=3)
    assert multi.n_channels == 3 and multi(torch.randn(1, 3, 800)).shape == (1, 2, 800)


def test_default_arch_is_registered():
    assert separator_class(DEFAULT_ARCH) is ARCHITECTURES[DEFAULT_ARCH]


@pytest.mark.parametrize("arch", ["dprnn_typo", "ConvTasNet", None])
def test_unknown_arch_names_the_choices(arch):
    with pytest.raises(ConfigError, match=rf"model.arch={arch!r}.*'conv_tasnet'"):
        build_separator(arch, n_sources=2)

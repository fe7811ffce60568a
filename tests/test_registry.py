"""The separator registry: every registered class meets the interface; unknown names fail
clearly."""

import pytest

from tsmixit.errors import ConfigError
from tsmixit.models.registry import (
    ARCHITECTURES,
    DEFAULT_ARCH,
    build_separator,
    separator_class,
)


def test_default_arch_is_registered():
    assert separator_class(DEFAULT_ARCH) is ARCHITECTURES[DEFAULT_ARCH]


@pytest.mark.parametrize("arch", ["dprnn_typo", "ConvTasNet", None])
def test_unknown_arch_names_the_choices(arch):
    with pytest.raises(ConfigError, match=rf"model.arch={arch!r}.*'conv_tasnet'"):
        build_separator(arch, n_sources=2)

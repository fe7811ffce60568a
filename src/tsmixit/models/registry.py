"""The separator registry: ``model.arch`` names a class, and every class meets one interface.

Notation: a separator maps a mixture x (B, C, T), C = ``n_channels`` microphones (a
single-channel model also takes (B, T)), to ``n_sources`` = S waveforms s_hat (B, S, T), the
source images at microphone 0. ``hparams`` holds every constructor argument, so that
``cls(**model.hparams)`` rebuilds the architecture (checkpoints and model files store it);
``from_preset(name, **overrides)`` builds one of the class's named ``presets``.

Adding a separator is one module in ``tsmixit/models`` and one line in ``ARCHITECTURES``.
"""

from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn

from tsmixit.errors import ConfigError
from tsmixit.models.conv_tasnet import ConvTasNet
from tsmixit.models.dprnn import DPRNN
from tsmixit.models.sudormrf import SuDoRMRF
from tsmixit.models.tf_gridnet import TFGridNet

#: The architecture a config or checkpoint gets when it names none.
DEFAULT_ARCH = "conv_tasnet"

#: ``model.arch`` -> separator class.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "conv_tasnet": ConvTasNet,
    "dprnn": DPRNN,
    "sudormrf": SuDoRMRF,
    "tf_gridnet": TFGridNet,
}


@runtime_checkable
class SeparatorModel(Protocol):
    """What every registered separator (an ``nn.Module``) provides; its ``presets`` include
    "tiny" (tests and smoke runs).

    forward: (B, n_channels, T), or (B, T) when n_channels == 1 -> (B, n_sources, T)
    """

    presets: ClassVar[dict[str, dict[str, Any]]]
    n_sources: int
    n_channels: int
    hparams: dict[str, Any]

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SeparatorModel": ...

    def __call__(self, mixture: Tensor) -> Tensor: ...


def separator_class(arch: str) -> type[nn.Module]:
    """The class registered as `arch`; ConfigError naming the choices for any other name."""
    try:
        return ARCHITECTURES[arch]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown separator architecture model.arch={arch!r}; choose one of "
            f"{sorted(ARCHITECTURES)}"
        ) from None


def build_separator(arch: str, **hparams: Any) -> nn.Module:
    """A new separator of architecture `arch` built from its constructor arguments."""
    return separator_class(arch)(**hparams)


"""What every separator shares: building a preset (`build_preset`), and the input check its
forward starts with: a floating-point mixture of
(batch, time) or (batch, C, time) with C = the model's ``n_channels`` microphones and at
least one sample, returned as (batch, C, time); AudioError naming the model and the fix.
"""

import inspect
from typing import Any

import torch
from torch import Tensor

from tsmixit.errors import AudioError, ConfigError

#: Separators with a multi-microphone form, named in the hint for single-channel models.
MULTI_CHANNEL = "conv_tasnet, tf_gridnet"


def as_channels(mixture: Tensor, n_channels: int, model: str) -> Tensor:
    """(batch, time) or (batch, n_channels, time) -> (batch, n_channels, time), checked."""
    if not torch.is_tensor(mixture) or not mixture.is_floating_point():
        got = f"a {mixture.dtype} tensor" if torch.is_tensor(mixture) else type(mixture).__name__
        raise AudioError(f"{model} expects a floating-point tensor, got {got}")
    if mixture.dim() == 2:
        mixture = mixture.unsqueeze(1)  # (batch, 1, time)
    elif mixture.dim() != 3:
        raise AudioError(f"{model} expects (batch, time) or (batch, channels, time), "
                         f"got shape {tuple(mixture.shape)}")
    got = mixture.shape[1]
    if got != n_channels:
        if n_channels == 1:
            raise AudioError(f"model built for 1 microphone got {got}; select one channel "
                             f"(e.g. mic 0) or use a multi-channel model ({MULTI_CHANNEL})")
        raise AudioError(f"model built for {n_channels} microphones got {got}; give all "
                         f"{n_channels} channels as (batch, channels, time)")
    if mixture.shape[-1] < 1:
        raise AudioError(f"{model} got an empty input (0 samples)")
    return mixture


def build_preset(cls: type, name: str, overrides: dict[str, Any], model: str) -> Any:
    """`cls` built from its preset `name` (one of ``cls.presets``) with `overrides`;
    ConfigError naming the model and the choices for an unknown preset or argument."""
    if name not in cls.presets:
        raise ConfigError(f"unknown {model} preset {name!r}; choose one of {list(cls.presets)}")
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConfigError(f"unknown {model} argument(s) {unknown}; valid ones are "
                          f"{sorted(allowed)}")
    return cls(**{**cls.presets[name], **overrides})

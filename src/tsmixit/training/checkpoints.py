"""The one reader of training checkpoints (Lightning ``.ckpt`` files of a
`tsmixit.training.systems.SeparationSystem`).

Layout, written by `SeparationSystem`: ``state_dict`` holds the separator's tensors under
``MODEL_PREFIX`` (the module attribute ``model``), and ``hyper_parameters[HPARAMS_KEY]``
the keyword arguments that rebuild it through the model registry, of the architecture
``hyper_parameters["arch"]``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tsmixit.errors import CheckpointError
from tsmixit.models.folder import read_model_folder
from tsmixit.models.registry import DEFAULT_ARCH, build_separator
from tsmixit.training.systems import HPARAMS_KEY, MODEL_PREFIX


def load_checkpoint(path: str | Path) -> dict:
    """torch.load a training checkpoint (tensors and containers only); CheckpointError
    naming the path when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; rerun its stage (delete "
                              f"{path.parent.parent}/summary.json) or start with --fresh")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means corrupt
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint ({type(error).__name__}: "
            f"{error}); delete it to restart that stage from scratch, or rerun with --fresh"
        ) from error
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"checkpoint {path} lacks state_dict/hyper_parameters; delete it "
                              "to restart that stage, or rerun with --fresh")
    return ckpt


def checkpoint_model(ckpt: dict, path: str | Path
                     ) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """(architecture, separator hyper-parameters, separator state dict) of a loaded
    checkpoint."""
    arch = ckpt["hyper_parameters"].get("arch", DEFAULT_ARCH)
    hparams = ckpt["hyper_parameters"].get(HPARAMS_KEY)
    if not isinstance(hparams, dict):
        raise CheckpointError(f"checkpoint {path} was not written by a tsmixit training stage "
                              f"(no hyper_parameters.{HPARAMS_KEY})")
    state = {k[len(MODEL_PREFIX):]: v for k, v in ckpt["state_dict"].items()
             if k.startswith(MODEL_PREFIX)}
    return arch, hparams, state


def load_separator(path: str | Path, ckpt: dict | None = None) -> nn.Module:
    """The separator of a training checkpoint (`ckpt`: the checkpoint, if already loaded)
    or of a model folder (a pretrained stage's model), in eval mode."""
    if ckpt is None and Path(path).is_dir():
        return read_model_folder(Path(path))[0]
    arch, hparams, state = checkpoint_model(load_checkpoint(path) if ckpt is None else ckpt,
                                            path)
    model = build_separator(arch, **hparams)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit its model ({error})"
        ) from error
    return model.eval()

"""The model folder: a separator's weights in safetensors plus a JSON config.

A model folder holds ``model.safetensors`` (tensors only, no code) and ``config.json``
(the separator's class name and hyper-parameters, sample rate, number of outputs K, input
channels C, the training summary and the weights' SHA-256). Only classes of the model
registry are ever built from a file, and safetensors is a plain tensor container: reading
one never runs code.

The separator that ships inside the package (``tsmixit/pretrained/``: model.safetensors,
config.json and its MODEL_CARD.md, made by ``tsmixit pretrain``) goes by the name
``pretrained`` wherever a model path is taken (``--model pretrained``, ``load_model``,
``model.init``); a file or folder of that name in the working directory comes first.
"""

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tsmixit.errors import ModelFileError, TsmixitError
from tsmixit.files import atomic_path, write_json_atomic
from tsmixit.models.registry import ARCHITECTURES

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "tsmixit-model"
FORMAT_VERSION = 1
PRETRAINED_NAME = "pretrained"
PRETRAINED_DIR = Path(__file__).parent.parent / "pretrained"


def _model_class(name: str) -> type[nn.Module]:
    """The registered separator class config.json names by its class name ("ConvTasNet")."""
    classes = {cls.__name__: cls for cls in ARCHITECTURES.values()}
    if name not in classes:
        raise ModelFileError(
            f"model class {name!r} is not one tsmixit builds ({', '.join(classes)}); "
            "the config.json was not written by tsmixit: re-export the model."
        )
    return classes[name]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(
    model: nn.Module,
    out_dir: str | os.PathLike,
    sample_rate: int,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write `out_dir`/model.safetensors and `out_dir`/config.json; returns `out_dir`.

    Each file is written atomically, weights first: config.json (written last) records the
    weights' SHA-256, so a folder whose weights and config do not belong together is refused
    on load.
    """
    out_dir = Path(out_dir)
    class_name = type(model).__name__
    _model_class(class_name)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    hparams = dict(model.hparams)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": class_name,
        "hparams": hparams,
        "sample_rate": int(sample_rate),
        "n_outputs": int(hparams["n_sources"]),
        "n_channels": int(hparams.get("n_channels", 1)),
        "training": summary or {},
        "weights_sha256": sha256(out_dir / WEIGHTS_NAME),
    }
    write_json_atomic(out_dir / CONFIG_NAME, config)
    return out_dir


def _build(class_name: str, hparams: dict, state: dict[str, torch.Tensor], source: Path):
    """The separator `class_name`(**hparams) holding the weights `state`, in eval mode."""
    cls = _model_class(class_name)
    try:
        model = cls(**hparams)
    except (TypeError, ValueError, TsmixitError) as err:
        raise ModelFileError(
            f"{source}: the architecture settings do not build a {class_name} ({err}); "
            "the file comes from another tsmixit version: re-export it."
        ) from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelFileError(
            f"{source}: the weights do not fit the configured {class_name} ({err}); "
            "re-export the model."
        ) from err
    return model.eval()


def read_model_folder(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The separator of a model folder (eval mode) and its config.json, every check made."""
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise ModelFileError(
            f"{folder}: not a tsmixit model folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
            "export one with `tsmixit export` or point to a run's model/ folder."
        )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(
            f"{config_path}: not valid JSON ({err}); re-export the model."
        ) from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelFileError(
            f"{config_path}: not a tsmixit model config (missing \"format\": \"{FORMAT}\"); "
            "re-export the model."
        )
    for key in ("class", "hparams", "sample_rate"):
        if key not in config:
            raise ModelFileError(f"{config_path}: missing key {key!r}; re-export the model.")
    expected = config.get("weights_sha256")
    if expected and sha256(weights_path) != expected:
        fix = ("the package's pretrained model is damaged: reinstall tsmixit (pip install "
               "--force-reinstall tsmixit)" if folder == PRETRAINED_DIR
               else "the folder mixes files of two exports: re-export the model")
        raise ModelFileError(
            f"{weights_path}: does not match {config_path} (SHA-256 differs); {fix}."
        )
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(
            f"{weights_path}: not a valid safetensors file ({err}); re-export the model."
        ) from err
    return _build(config["class"], config["hparams"], state, weights_path), config


def resolve_model_path(path: str | os.PathLike) -> Path:
    """`path`, or for the name ``pretrained`` (when no such file is here) the package's
    shipped model folder. ModelFileError when the name is asked for and none ships."""
    path = Path(path)
    if path.exists() or str(path) != PRETRAINED_NAME:
        return path
    if not (PRETRAINED_DIR / CONFIG_NAME).is_file():
        raise ModelFileError(
            f"no pretrained model ships with this tsmixit ({PRETRAINED_DIR} holds no "
            f"{CONFIG_NAME}); train one with `make pretrain` (tsmixit pretrain --config "
            "configs/pretrain.yaml) and pass --model runs/pretrain/model.")
    return PRETRAINED_DIR


def model_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a model folder's weights (as its config.json records it): what a
    recipe starting from the model fingerprints."""
    folder = resolve_model_path(path)
    recorded = json.loads((folder / CONFIG_NAME).read_text()).get("weights_sha256")
    return recorded or sha256(folder / WEIGHTS_NAME)

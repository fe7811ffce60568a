"""Self-contained model files: weights in safetensors plus a JSON config, and ONNX export.

A model folder holds ``model.safetensors`` (tensors only, no code) and ``config.json``
(the separator's class name and hyper-parameters, sample rate, number of outputs K, input
channels C, the training summary and the weights' SHA-256). Only classes of the model
registry (`tsmixit.models.registry`) are ever built from a file. Loading never unpickles:
safetensors is a plain tensor container, and a Lightning ``.ckpt`` is read only by
`tsmixit.training.checkpoints` through ``torch.load(weights_only=True)``, whose restricted
unpickler refuses any object that is not a tensor or a plain container, so a crafted file
cannot run code. Every loader returns a `tsmixit.inference.Separator`.

The separator that ships inside the package (``tsmixit/pretrained/``: model.safetensors,
config.json and its MODEL_CARD.md, made by ``tsmixit pretrain``) loads by the name
``pretrained`` wherever a model path is taken (``--model pretrained``, ``load_model``); a
file or folder of that name in the working directory comes first.
"""

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tsmixit.errors import CheckpointError, ConfigError, ModelFileError, TsmixitError
from tsmixit.files import atomic_path, write_json_atomic
from tsmixit.inference import Separator
from tsmixit.models.registry import ARCHITECTURES

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "tsmixit-model"
FORMAT_VERSION = 1
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")
PRETRAINED_NAME = "pretrained"
PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def _model_class(name: str) -> type[nn.Module]:
    """The registered separator class config.json names by its class name ("ConvTasNet")."""
    classes = {cls.__name__: cls for cls in ARCHITECTURES.values()}
    if name not in classes:
        raise ModelFileError(
            f"model class {name!r} is not one tsmixit builds ({', '.join(classes)}); "
            "the config.json was not written by tsmixit: re-export the model."
        )
    return classes[name]


def _sha256(path: Path) -> str:
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
        "weights_sha256": _sha256(out_dir / WEIGHTS_NAME),
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


def _load_folder(folder: Path) -> Separator:
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
    if expected and _sha256(weights_path) != expected:
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
    model = _build(config["class"], config["hparams"], state, weights_path)
    return Separator(model, config["sample_rate"], config)


def _load_checkpoint(path: Path) -> Separator:
    """A tsmixit training checkpoint, read by `tsmixit.training.checkpoints` (tensors and
    plain containers only); its config names the separator's class and hyper-parameters."""
    from tsmixit.training.checkpoints import load_checkpoint, load_separator

    refused = ("only safetensors model folders and weights-only tsmixit training checkpoints "
               "are loaded, never pickled code: export the model with `tsmixit export`")
    try:
        ckpt = load_checkpoint(path)
        hyper = ckpt["hyper_parameters"]
        sample_rate = hyper.get("sample_rate") if isinstance(hyper, dict) else None
        if not isinstance(sample_rate, int):
            raise ModelFileError(f"{path}: hyper_parameters.sample_rate is missing; {refused}.")
        model = load_separator(path, ckpt)
    except (CheckpointError, ConfigError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: refused to load ({err}); {refused}.") from err
    config = {"class": type(model).__name__, "hparams": dict(model.hparams),
              "sample_rate": sample_rate, "training": {"checkpoint": str(path)}}
    return Separator(model, sample_rate, config)


def inference_device(name: str = "auto") -> torch.device:
    """The device to run a separator on: "auto" (the GPU when there is one, else the CPU),
    "cpu", "cuda" or "cuda:N". Raises ModelFileError for a device this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ModelFileError(f"device {name!r}: not supported; use auto, cpu or cuda[:N].")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ModelFileError(f"device {name!r}: this machine has {torch.cuda.device_count()} "
                             "CUDA GPU(s); use --device cpu (or auto).")
    return device


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> Separator:
    """Load a separator from a model folder, its config.json or model.safetensors, a
    weights-only Lightning checkpoint (.ckpt/.pt/.pth) or the name ``pretrained`` (the model
    shipped in the package) onto `device`. Never runs pickled code. Raises ModelFileError
    for anything that is not a tsmixit model.
    """
    separator = _load_any(Path(path))
    separator.model.to(device)
    return separator


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


def _load_any(path: Path) -> Separator:
    path = resolve_model_path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: does not exist; pass a model folder (config.json + "
                             f"{WEIGHTS_NAME}) or a .ckpt checkpoint.")
    if path.is_dir():
        return _load_folder(path)
    if path.name in (CONFIG_NAME, WEIGHTS_NAME):
        return _load_folder(path.parent)
    if path.suffix in CHECKPOINT_SUFFIXES:
        return _load_checkpoint(path)
    raise ModelFileError(
        f"{path}: not a model (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, one "
        "of those two files, or a .ckpt checkpoint)."
    )


def export_onnx(
    separator: Separator,
    path: str | os.PathLike,
    *,
    seconds: float = 2.0,
    opset: int = 18,
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[str, float | int]:
    """Export the network to ONNX with dynamic batch and time axes, then check it: run
    onnxruntime and PyTorch on a random input of another length than the traced one and
    require max |difference| <= `atol`. Returns {"max_abs_diff", "check_frames"}.

    Input "mixture": (batch, time) or (batch, channels, time); output "sources":
    (batch, K, time). The sample rate and K are stored in the ONNX metadata.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    model = separator.model.cpu().eval()
    gen = torch.Generator().manual_seed(seed)
    n_trace = int(seconds * separator.sample_rate)
    lead = (1,) if separator.n_channels == 1 else (1, separator.n_channels)
    dummy = torch.randn(*lead, n_trace, generator=gen)
    time_axis = len(lead)
    with atomic_path(path) as tmp:
        # Without gradients the network uses plain torch ops only (its training-time custom
        # autograd functions are not exportable).
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=["mixture"],
                output_names=["sources"],
                dynamic_axes={"mixture": {0: "batch", time_axis: "time"},
                              "sources": {0: "batch", 2: "time"}},
                opset_version=opset,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
        meta = {"sample_rate": separator.sample_rate, "n_outputs": separator.n_outputs,
                "n_channels": separator.n_channels, "format": FORMAT}
        for key, value in meta.items():
            prop = proto.metadata_props.add()
            prop.key, prop.value = key, str(value)
        onnx.save(proto, str(tmp))
        check_frames = n_trace + n_trace // 3 + 7
        check = torch.randn(*lead, check_frames, generator=gen)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(["sources"], {"mixture": check.numpy()})[0]
        with torch.inference_mode():
            want = model(check).numpy()
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        if not diff <= atol:
            raise ModelFileError(
                f"{path}: the ONNX model differs from PyTorch by {diff:.3g} (> {atol:g}) on a "
                f"{check_frames}-sample input; the export is not written."
            )
    return {"max_abs_diff": diff, "check_frames": check_frames}

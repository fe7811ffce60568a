"""Loading a separator for use, and ONNX export.

`load_model` reads a model folder (`tsmixit.models.folder`: safetensors weights plus a JSON
config; ``pretrained``, the folder shipped in the package) or a training checkpoint, and
returns a `tsmixit.inference.Separator`. Loading never unpickles: safetensors is a plain
tensor container, and a Lightning ``.ckpt`` is read only by `tsmixit.training.checkpoints`
through ``torch.load(weights_only=True)``, whose restricted unpickler refuses any object that
is not a tensor or a plain container, so a crafted file cannot run code.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from tsmixit.errors import CheckpointError, ConfigError, ModelFileError
from tsmixit.files import atomic_path
from tsmixit.inference import Separator
from tsmixit.models.folder import (
    CONFIG_NAME,
    FORMAT,
    WEIGHTS_NAME,
    read_model_folder,
    resolve_model_path,
    save_model,
)

__all__ = ["export_onnx", "inference_device", "load_model", "save_model"]
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")


def _separator(folder: Path) -> Separator:
    model, config = read_model_folder(folder)
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


def _load_any(path: Path) -> Separator:
    path = resolve_model_path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: does not exist; pass a model folder (config.json + "
                             f"{WEIGHTS_NAME}) or a .ckpt checkpoint.")
    if path.is_dir():
        return _separator(path)
    if path.name in (CONFIG_NAME, WEIGHTS_NAME):
        return _separator(path.parent)
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

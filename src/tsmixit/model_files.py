"""Self-contained model files: weights in safetensors plus a JSON config, and ONNX export.

A model folder holds ``model.safetensors`` (tensors only, no code) and ``config.json``
(architecture hyper-parameters, sample rate, number of outputs K, input channels C, the
training summary and the weights' SHA-256). Loading never unpickles: safetensors is a plain
tensor container, and a Lightning ``.ckpt`` is accepted only through
``torch.load(weights_only=True)``, whose restricted unpickler refuses any object that is not
a tensor or a plain container, so a crafted file cannot run code.
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

from tsmixit.audio import resample
from tsmixit.errors import ModelFileError, TsmixitError
from tsmixit.files import atomic_path, write_json_atomic

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "tsmixit-model"
FORMAT_VERSION = 1
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")
#: Model classes a config may name; nothing else is ever constructed from a file.
MODEL_CLASSES = ("ConvTasNet",)


class ChannelNote(UserWarning):
    """A multi-channel input was mixed down for a single-channel model."""


def _model_class(name: str) -> type[nn.Module]:
    if name not in MODEL_CLASSES:
        raise ModelFileError(
            f"model class {name!r} is not one tsmixit builds ({', '.join(MODEL_CLASSES)}); "
            "the config.json was not written by tsmixit: re-export the model."
        )
    from tsmixit.models.conv_tasnet import ConvTasNet

    return {"ConvTasNet": ConvTasNet}[name]


class Separator:
    """A trained separator ready for inference: y_hat = f(x), K outputs at the input's rate.

    Attributes: model (the nn.Module, eval mode), sample_rate (Hz the model was trained at),
    n_outputs (K), n_channels (C the model takes), config (the config.json contents).
    """

    def __init__(self, model: nn.Module, sample_rate: int, config: dict[str, Any]):
        self.model = model.eval()
        self.sample_rate = int(sample_rate)
        self.config = config
        self.n_outputs = int(model.hparams["n_sources"])
        self.n_channels = int(model.hparams.get("n_channels", 1))

    def __repr__(self) -> str:
        return (
            f"Separator({type(self.model).__name__}, {self.sample_rate} Hz, "
            f"{self.n_channels} channel(s) in, {self.n_outputs} outputs)"
        )

    def prepare_channels(self, wav: np.ndarray) -> tuple[np.ndarray, str | None]:
        """Fit a (C, T) input to the model's channel count; returns (wav, note or None).

        Several channels into a 1-channel model are averaged (with a note); a multi-channel
        model needs exactly its channel count, in its microphone order.
        """
        n_in = wav.shape[0]
        if n_in == self.n_channels:
            return wav, None
        if self.n_channels == 1:
            note = f"{n_in}-channel input mixed down to mono for a single-channel model"
            return wav.mean(axis=0, keepdims=True), note
        raise ModelFileError(
            f"the model takes {self.n_channels} microphone channels, the input has {n_in}; "
            f"pass a {self.n_channels}-channel recording in the training array's mic order."
        )

    @torch.inference_mode()
    def forward_model_rate(self, wav: np.ndarray) -> np.ndarray:
        """Run the network on a (C, T) float32 input at the model's rate -> (K, T)."""
        device = next(self.model.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).to(device)
        x = x[0][None] if self.n_channels == 1 else x[None]  # (1, T) or (1, C, T)
        return self.model(x)[0].float().cpu().numpy()  # (K, T)

    def separate(
        self, waveform: np.ndarray | torch.Tensor, sample_rate: int
    ) -> np.ndarray:
        """Separate one recording in a single pass: (T,) or (C, T) at `sample_rate` -> (K, T)
        float32 at the same rate. Resampled in and out with soxr when the rates differ.
        For long recordings use `tsmixit.separate.separate_files` (bounded memory).
        """
        wav = waveform.detach().cpu().numpy() if torch.is_tensor(waveform) else waveform
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim == 1:
            wav = wav[None]
        if wav.ndim != 2 or wav.shape[1] == 0:
            raise ModelFileError(
                f"expected a waveform of shape (T,) or (C, T), got {tuple(wav.shape)}"
            )
        if not np.isfinite(wav).all():
            raise ModelFileError("the waveform contains NaN or infinite samples")
        wav, note = self.prepare_channels(wav)
        if note:
            warnings.warn(note, ChannelNote, stacklevel=2)
        n_frames = wav.shape[1]
        est = self.forward_model_rate(resample(wav, sample_rate, self.sample_rate))
        est = resample(est, self.sample_rate, sample_rate)  # (K, T')
        return _fit_length(est, n_frames)


def _fit_length(wav: np.ndarray, n_frames: int) -> np.ndarray:
    """Crop or zero-pad (K, T') to (K, n_frames): resampling may be off by a sample."""
    if wav.shape[1] >= n_frames:
        return np.ascontiguousarray(wav[:, :n_frames])
    return np.pad(wav, ((0, 0), (0, n_frames - wav.shape[1])))


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
        raise ModelFileError(
            f"{weights_path}: does not match {config_path} (SHA-256 differs); the folder "
            "mixes files of two exports: re-export the model."
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
    """A Lightning checkpoint through the restricted unpickler (tensors and containers only).

    It must hold ``state_dict`` with the separator under the prefix ``model.`` and
    ``hyper_parameters`` with ``model_hparams`` (the constructor arguments) and
    ``sample_rate``, as tsmixit's training systems save them.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "refused"
        raise ModelFileError(
            f"{path}: refused to load: the checkpoint holds objects other than tensors and "
            f"plain containers, or is not a checkpoint ({type(err).__name__}); only "
            "safetensors models and weights-only checkpoints are loaded, never pickled code."
        ) from err
    hyper = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(hyper, dict) or not isinstance(state, dict) or "model_hparams" not in hyper:
        raise ModelFileError(
            f"{path}: not a tsmixit training checkpoint (needs state_dict and "
            "hyper_parameters.model_hparams); export the model with `tsmixit export`."
        )
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    model = _build("ConvTasNet", dict(hyper["model_hparams"]), weights, path)
    sample_rate = hyper.get("sample_rate")
    if not isinstance(sample_rate, int):
        raise ModelFileError(f"{path}: hyper_parameters.sample_rate is missing; re-export.")
    config = {"class": "ConvTasNet", "hparams": dict(hyper["model_hparams"]),
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
    """Load a separator from a model folder, its config.json or model.safetensors, or a
    weights-only Lightning checkpoint (.ckpt/.pt/.pth) onto `device`. Never runs pickled
    code. Raises ModelFileError for anything that is not a tsmixit model.
    """
    separator = _load_any(Path(path))
    separator.model.to(device)
    return separator


def _load_any(path: Path) -> Separator:
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

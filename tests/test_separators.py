"""Every registered separator meets one interface: the shared checks and toy training,
parametrised over the registry (the architectures' own checks and published sizes live in
test_conv_tasnet.py, test_dprnn.py, test_sudormrf.py and test_tf_gridnet.py)."""

import inspect
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tsmixit.errors import AudioError, ConfigError
from tsmixit.losses import pit, si_snr
from tsmixit.model_files import export_onnx, load_model, save_model
from tsmixit.models.registry import ARCHITECTURES, SeparatorModel, separator_class
from tsmixit.training.config import config_from_dict

SR = 8000
ARCHS = sorted(ARCHITECTURES)
NEW = ["dprnn", "sudormrf", "tf_gridnet"]  # conv_tasnet's model file tests: test_model_files


def tiny(arch: str, **overrides) -> torch.nn.Module:
    return separator_class(arch).from_preset("tiny", **overrides)


@pytest.mark.parametrize("arch", ARCHS)
def test_registered_class_meets_the_interface(arch):
    cls = separator_class(arch)
    assert "tiny" in cls.presets
    model = tiny(arch, n_sources=3)
    assert isinstance(model, SeparatorModel)
    assert (model.n_sources, model.n_channels) == (3, 1)
    # hparams holds every constructor argument and rebuilds the same architecture.
    assert set(model.hparams) == set(inspect.signature(cls.__init__).parameters) - {"self"}
    rebuilt = cls(**model.hparams)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    # (B, T) reads as (B, 1, T); the same weights give the same outputs.
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1000)
    with torch.no_grad():
        out = model.eval()(x)
        assert out.shape == (2, 3, 1000)
        torch.testing.assert_close(model(x[:, None]), out)
        assert torch.equal(rebuilt.eval()(x), out)


@pytest.mark.parametrize("n_sources", [1, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_output_length_equals_odd_input_lengths(arch, n_sources):
    model = tiny(arch, n_sources=n_sources).eval()
    with torch.no_grad():
        for length in (1, 7, 1001, 2047):
            out = model(torch.randn(2, length))
            assert out.shape == (2, n_sources, length) and out.dtype == torch.float32
            assert torch.isfinite(out).all()
        x = torch.randn(2, 999)
        torch.testing.assert_close(model(x), model(x.unsqueeze(1)))  # (B, T) == (B, 1, T)


@pytest.mark.parametrize("weights", ["uniform", "energy"])
@pytest.mark.parametrize("arch", ARCHS)
def test_outputs_sum_to_the_mixture_with_consistency(arch, weights):
    model = tiny(arch, n_sources=4, consistency=weights).eval()
    x = torch.randn(3, 1777) * 0.3
    with torch.no_grad():
        out = model(x)
    assert (out.sum(dim=1) - x).abs().max() < 1e-5


@pytest.mark.parametrize("arch", NEW)
def test_model_file_saves_loads_and_separates(tmp_path, arch):
    model = tiny(arch, n_sources=3, consistency="uniform").eval()
    save_model(model, tmp_path / "m", SR, {"stage": "student"})
    separator = load_model(tmp_path / "m")
    assert type(separator.model) is type(model) and separator.n_outputs == 3
    x = torch.randn(2, 3001)
    with torch.inference_mode():
        assert torch.equal(separator.model(x), model(x))
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    got = separator.separate(wav, 16000)  # resampled to 8 kHz and back
    assert got.shape == (3, 16000) and np.isfinite(got).all()


@pytest.mark.parametrize(
    "arch, overrides",
    [("dprnn", {}), ("sudormrf", {}), ("sudormrf", {"variant": "original"}),
     ("tf_gridnet", {}), ("tf_gridnet", {"n_channels": 2})],
)
def test_onnx_export_matches_pytorch(tmp_path, arch, overrides):
    model = tiny(arch, n_sources=3, consistency="uniform", **overrides)
    save_model(model, tmp_path / "m", SR)
    separator = load_model(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check = export_onnx(separator, tmp_path / "m.onnx", seconds=0.25)
    assert check["max_abs_diff"] <= 1e-4
    # Independently: batch of 2, another length than the traced and the checked ones.
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    channels = overrides.get("n_channels", 1)
    x = torch.randn(2, 4321) if channels == 1 else torch.randn(2, channels, 4321)
    got = session.run(["sources"], {"mixture": x.numpy()})[0]
    with torch.inference_mode():
        want = separator.model(x).numpy()
    assert got.shape == (2, 3, 4321)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_unknown_architecture_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"wavenet.*'dprnn'.*'sudormrf'.*'tf_gridnet'"):
        separator_class("wavenet")
    def config(**model):
        return config_from_dict({"train": {"max_steps": 1}, "model": model})

    with pytest.raises(ConfigError, match="wavenet"):
        config(arch="wavenet")
    with pytest.raises(ConfigError, match="model.preset"):
        config(arch="dprnn", preset="1.0x")
    with pytest.raises(ConfigError, match="model.options.N"):
        config(arch="tf_gridnet", options={"N": 64})
    assert config(arch="sudormrf", preset="1.0x").model.arch == "sudormrf"


@pytest.mark.parametrize("arch", ARCHS)
def test_unknown_preset_and_argument_are_refused(arch):
    cls = separator_class(arch)
    with pytest.raises(ConfigError, match="huge"):
        cls.from_preset("huge")
    with pytest.raises(ConfigError, match="'bogus'"):
        cls.from_preset("tiny", bogus=3)
    with pytest.raises(ConfigError, match="n_sources"):
        cls.from_preset("tiny", n_sources=0)


@pytest.mark.parametrize(
    "arch, overrides, name",
    [
        ("dprnn", {"L": 3}, "L"), ("dprnn", {"K": 7}, "K"), ("dprnn", {"H": 0}, "H"),
        ("dprnn", {"mask_activation": "tanh"}, "mask_activation"),
        ("sudormrf", {"L": 1}, "L"), ("sudormrf", {"Q": -1}, "Q"), ("sudormrf", {"R": 0}, "R"),
        ("sudormrf", {"variant": "v3"}, "variant"),
        ("sudormrf", {"consistency": "mean"}, "consistency"),
        ("tf_gridnet", {"n_fft": 127}, "n_fft"), ("tf_gridnet", {"hop": 100}, "hop"),
        ("tf_gridnet", {"D": 18, "L": 4}, "L"), ("tf_gridnet", {"I": 80}, "I"),
        ("tf_gridnet", {"I": 2, "J": 3}, "J"), ("tf_gridnet", {"E": 0}, "E"),
        ("tf_gridnet", {"eps": 0.0}, "eps"),
    ],
)
def test_impossible_sizes_are_refused_by_name(arch, overrides, name):
    with pytest.raises(ConfigError, match=rf"\b{name}\b"):
        tiny(arch, **overrides)


@pytest.mark.parametrize("arch", ["dprnn", "sudormrf"])
def test_multichannel_input_only_where_the_family_has_a_published_form(arch):
    with pytest.raises(ConfigError, match=r"n_channels=2.*conv_tasnet.*tf_gridnet"):
        tiny(arch, n_channels=2)
    model = tiny(arch)
    with pytest.raises(AudioError, match="1 microphone got 2"):
        model(torch.randn(1, 2, 800))


@pytest.mark.parametrize("arch", NEW)
def test_bad_inputs_are_refused(arch):
    model = tiny(arch)
    for bad in (torch.zeros(1, 100, dtype=torch.int16), torch.zeros(1, 1, 1, 100),
                torch.zeros(2, 0)):
        with pytest.raises(AudioError):
            model(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_forward_matches_cpu(arch):
    model = tiny(arch, n_sources=3, consistency="uniform").eval()
    x = torch.randn(2, 3001)
    with torch.no_grad():
        want = model(x)
        got = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def two_tones(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, 2, length): a low tone (200-400 Hz) and a high tone (1.5-2.5 kHz) at 8 kHz."""
    t = torch.arange(length) / SR
    low = 200 + 200 * torch.rand(batch, 1, generator=generator)
    high = 1500 + 1000 * torch.rand(batch, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(batch, 2, 1, generator=generator)
    amp = 0.5 + torch.rand(batch, 2, 1, generator=generator)
    freqs = torch.cat([low, high], dim=1).unsqueeze(-1)  # (batch, 2, 1)
    return amp * torch.sin(2 * math.pi * freqs * t + phase)


# (arch, preset overrides, learning rate, steps, SI-SNR gain required on held-out mixtures in
# dB). TF-GridNet's complex spectral mapping starts from nothing and learns slower than the
# time-domain models' masks: it is held to 5 dB.
TOY_TRAINING = [
    ("conv_tasnet", {}, 3e-3, 200, 15.0),
    ("dprnn", {}, 3e-3, 150, 10.0),
    ("sudormrf", {"variant": "improved"}, 3e-3, 150, 10.0),
    ("sudormrf", {"variant": "original"}, 3e-3, 150, 10.0),
    ("tf_gridnet", {}, 1e-2, 150, 5.0),
]


@pytest.mark.parametrize("arch, overrides, lr, steps, gain_db", TOY_TRAINING)
def test_training_on_two_tones_raises_held_out_si_snr(arch, overrides, lr, steps, gain_db):
    # `steps` of PIT, batch 4 x 0.25 s, then the SI-SNR of 8 held-out mixtures' estimates
    # against their tones, over that of the mixture itself.
    model = tiny(arch, **overrides)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    test = two_tones(8, 2000, torch.Generator().manual_seed(1))
    mixture = test.sum(dim=1)
    baseline = si_snr(mixture.unsqueeze(1).expand_as(test), test).mean()
    for _ in range(steps):
        sources = two_tones(4, 2000, g)
        loss, _ = pit(model(sources.sum(dim=1)), sources)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
    with torch.no_grad():
        test_loss, _ = pit(model.eval()(mixture), test)
    gain = -test_loss.mean() - baseline
    assert gain > gain_db, (float(baseline), float(gain))


@pytest.mark.parametrize("arch", [a for a in ARCHS
                                  if getattr(separator_class(a), "supports_cpu_bf16", False)])
def test_declared_bf16_training_path_stays_close_to_float32(arch):
    """A separator that declares a CPU bf16 path (`train.precision: auto` then trains it in
    bf16-mixed; benchmarks/bench_bf16_separators.py measures where that pays) trains under
    CPU bf16 autocast close to float32 on a fixed input: outputs within 5 % of their peak
    (bf16 keeps 8 mantissa bits; the measured error is 1-2 %), the SI-SNR loss within
    0.5 dB, and a gradient pointing the same way (cosine > 0.95)."""
    torch.manual_seed(0)
    model = tiny(arch).train()
    t = torch.arange(4000) / SR
    sources = torch.stack([torch.sin(2 * math.pi * 220 * t),
                           0.7 * torch.sign(torch.sin(2 * math.pi * 330 * t))])[None]
    mixture = sources.sum(1)  # (1, T)

    def run(bf16: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            est = model(mixture)
        loss = pit(est.float(), sources)[0].mean()
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return est.float().detach(), loss.detach(), grad

    exact, exact_loss, exact_grad = run(False)
    fast, fast_loss, fast_grad = run(True)
    assert float((fast - exact).abs().max() / exact.abs().max()) < 0.05
    assert abs(float(fast_loss - exact_loss)) < 0.5
    assert float(torch.nn.functional.cosine_similarity(fast_grad, exact_grad, dim=0)) > 0.95


def test_bf16_training_path_holds_where_onednn_lacks_bf16_kernels():
    """On a CPU without AVX-512 oneDNN has no bf16 LSTM kernel and refuses an LSTM fed
    float32 under bf16 autocast; ONEDNN_MAX_CPU_ISA=AVX2 makes this CPU such a one (read at
    start-up, hence a fresh process), and the closeness test above must pass there too."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "test_declared_bf16_training_path_stays_close_to_float32"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]

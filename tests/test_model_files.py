"""Model files: safetensors round trip, refusal of pickled code, ONNX export."""

import json
import shutil
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tsmixit import load_model as package_load_model
from tsmixit.audio import resample
from tsmixit.errors import ModelFileError
from tsmixit.inference import ChannelNote
from tsmixit.model_files import export_onnx, load_model, save_model
from tsmixit.models.conv_tasnet import ConvTasNet

SR = 8000


class WritesMarker:
    """Unpickling this object runs code: it calls exec, which creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    model = ConvTasNet.from_preset("tiny", n_sources=3, consistency="uniform")
    save_model(model, folder, SR, {"stage": "student", "best_val_si_snri": 7.5})
    return model, folder


def test_round_trip_gives_identical_outputs(saved):
    model, folder = saved
    x = torch.randn(2, 3001)
    with torch.inference_mode():
        want = model.eval()(x)
    for path in (folder, folder / "config.json", folder / "model.safetensors"):
        separator = load_model(path)
        with torch.inference_mode():
            assert torch.equal(separator.model(x), want)
    config = json.loads((folder / "config.json").read_text())
    assert config["sample_rate"] == SR and config["n_outputs"] == 3
    assert config["n_channels"] == 1 and config["class"] == "ConvTasNet"
    assert config["training"]["best_val_si_snri"] == 7.5
    assert package_load_model(folder).n_outputs == 3


def test_separate_resamples_in_and_out_and_feeds_mic_0(saved):
    model, folder = saved
    separator = load_model(folder)
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    got = separator.separate(wav, 16000)
    assert got.shape == (3, 16000)
    with torch.inference_mode():
        at_model = model(torch.from_numpy(resample(wav, 16000, SR))[None])[0].numpy()
    np.testing.assert_allclose(got, resample(at_model, SR, 16000)[:, :16000], atol=1e-6)
    other = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    stereo = np.stack([wav, other])
    with pytest.warns(ChannelNote, match="fed microphone 0"):
        fed = separator.separate(torch.from_numpy(stereo), 16000)
    np.testing.assert_allclose(fed, got, atol=1e-6)  # microphone 0 alone, not the average
    assert np.abs(fed - separator.separate(stereo.mean(0), 16000)).max() > 1e-3


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path, saved):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": WritesMarker(marker), "hyper_parameters": {}}, evil)
    # The file is really dangerous: a plain unpickling runs its code.
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ModelFileError, match="refused"):
        load_model(evil)
    assert not marker.exists()
    # The same pickle posing as safetensors weights next to a valid config.
    _, folder = saved
    fake = tmp_path / "fake"
    fake.mkdir()
    config = json.loads((folder / "config.json").read_text())
    torch.save(WritesMarker(marker), fake / "model.safetensors")
    config.pop("weights_sha256")
    (fake / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="safetensors"):
        load_model(fake)
    assert not marker.exists()


def test_paths_that_are_not_models(tmp_path, saved):
    _, folder = saved
    (tmp_path / "empty").mkdir()
    (tmp_path / "audio.wav").write_bytes(b"RIFF")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"format": "tsmixit-model", "class": '
                                                   '"os.system", "hparams": {}, "sample_rate": 8}')
    shutil.copy(folder / "model.safetensors", tmp_path / "bad")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "config.json").write_text((folder / "config.json").read_text())
    other = ConvTasNet.from_preset("tiny", n_sources=3)
    with torch.no_grad():  # other weights than `saved`'s even where both start from one seed
        other.encoder.weight.add_(1.0)
    save_model(other, tmp_path / "other", SR)
    shutil.copy(tmp_path / "other" / "model.safetensors", mixed)
    cases = {"missing": "does not exist", "empty": "not a tsmixit model folder",
             "audio.wav": "not a model", "bad": "not one tsmixit builds", "mixed": "SHA-256"}
    for name, phrase in cases.items():
        with pytest.raises(ModelFileError, match=phrase):
            load_model(tmp_path / name)


def test_lightning_checkpoint_loads_weights_only(tmp_path):
    import lightning as L

    from tsmixit.models.conv_tasnet import PRESETS
    from tsmixit.training.systems import MixITTeacher

    system = MixITTeacher(dict(PRESETS["tiny"], n_sources=4), SR)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.strategy.connect(system)
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    separator = load_model(tmp_path / "teacher.ckpt")
    assert (separator.sample_rate, separator.n_outputs) == (SR, 4)
    x = torch.randn(1, 2000)
    with torch.inference_mode():
        assert torch.equal(separator.model(x), system.model.eval()(x))


def test_checkpoints_of_another_layout_are_refused(tmp_path):
    layouts = {
        "list": {"state_dict": {}, "hyper_parameters": []},
        "no_hparams": {"state_dict": {}, "hyper_parameters": {"sample_rate": SR}},
        "bogus": {"state_dict": {}, "hyper_parameters": {"sample_rate": SR,
                                                         "model_hparams": {"bogus": 1}}},
        "no_weights": {"state_dict": {}, "hyper_parameters": {
            "sample_rate": SR, "model_hparams": ConvTasNet.from_preset("tiny").hparams}},
    }
    for name, ckpt in layouts.items():
        torch.save(ckpt, tmp_path / f"{name}.ckpt")
        with pytest.raises(ModelFileError, match="weights-only tsmixit training checkpoints"):
            load_model(tmp_path / f"{name}.ckpt")


@pytest.mark.parametrize("n_channels", [1, 2])
def test_onnx_export_matches_pytorch(tmp_path, n_channels):
    model = ConvTasNet.from_preset("tiny", n_sources=2, n_channels=n_channels)
    save_model(model, tmp_path / "m", SR)
    separator = load_model(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check = export_onnx(separator, tmp_path / "m.onnx", seconds=0.5)
    assert check["max_abs_diff"] <= 1e-4
    # Independently: another length, batch of 2, straight from onnxruntime.
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    shape = (2, 5555) if n_channels == 1 else (2, n_channels, 5555)
    x = torch.randn(*shape)
    got = session.run(None, {"mixture": x.numpy()})[0]
    with torch.inference_mode():
        np.testing.assert_allclose(got, model.eval()(x).numpy(), atol=1e-4)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["sample_rate"] == str(SR) and meta["n_outputs"] == "2"


def test_the_name_pretrained_loads_the_shipped_folder(tmp_path, saved, monkeypatch):
    from tsmixit.models import folder as model_folder

    model, folder = saved
    monkeypatch.chdir(tmp_path)  # no file called "pretrained" here
    shipped = tmp_path / "package" / "pretrained"
    monkeypatch.setattr(model_folder, "PRETRAINED_DIR", shipped)
    with pytest.raises(ModelFileError, match="no pretrained model ships.*make pretrain"):
        load_model("pretrained")
    shutil.copytree(folder, shipped)
    x = torch.randn(1, 2001)
    with torch.inference_mode():
        assert torch.equal(package_load_model("pretrained").model(x), model.eval()(x))
    # A damaged package: the weights no longer match the hash in config.json.
    weights = shipped / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelFileError, match="damaged: reinstall tsmixit"):
        load_model("pretrained")
    # A folder of that name in the working directory comes first.
    shutil.copytree(folder, tmp_path / "pretrained")
    assert load_model("pretrained").n_outputs == 3

"""The `tsmixit` command: errors become one line and an exit code; batches report failures."""

import json

import numpy as np
import soundfile as sf
import torch

from tsmixit.cli import _recipe_summary, main
from tsmixit.model_files import save_model
from tsmixit.models.conv_tasnet import ConvTasNet
from tsmixit.training.config import parse_overrides

SR = 8000


def test_set_values_keep_their_yaml_types():
    assert parse_overrides(["train.lr=5e-4", "model.preset=tiny", "a.b=[0, 1]", "c=null"]) == {
        "train.lr": 5e-4, "model.preset": "tiny", "a.b": [0, 1], "c": None,
    }


def test_bad_config_key_is_one_error_naming_it(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  max_stepz: 10\n")
    assert main(["recipe", "--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.max_stepz" in err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_separate_reports_failures_and_separates_the_rest(tmp_path, capsys):
    model = ConvTasNet.from_preset("tiny", n_sources=2)
    save_model(model, tmp_path / "model", SR, {})
    good = tmp_path / "in" / "good.wav"
    good.parent.mkdir()
    wav = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1
    sf.write(good, wav, SR)
    sf.write(tmp_path / "in" / "silent.wav", np.zeros(SR, np.float32), SR)

    code = main(["separate", "--model", str(tmp_path / "model"), str(tmp_path / "in"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 1
    assert "silent.wav" in capsys.readouterr().err
    s1, _ = sf.read(tmp_path / "out" / "good_s1.wav", dtype="float32")
    s2, _ = sf.read(tmp_path / "out" / "good_s2.wav", dtype="float32")
    with torch.no_grad():
        expected = model(torch.from_numpy(wav)[None])[0].numpy()  # (2, T)
    # Same model, one chunk: equal up to float32 noise (padding enters gLN statistics).
    np.testing.assert_allclose(np.stack([s1, s2]), expected, atol=1e-4)


def test_recipe_summary_shows_stage_times_results_and_claims(tmp_path):
    report = {
        "rows": [{"label": "MixIT teacher (top-2)", "si_snri": 4.25, "sdri": 5.5,
                  "active_outputs": 3.1, "run": None}],
        "claims": [{"status": "holds", "claim": "The teacher over-separates", "detail": "x"}],
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    text = _recipe_summary(
        {"run_dir": str(tmp_path), "stages": {"teacher": {"steps": 2400, "train_seconds": 391.6},
                                              "label": {"label_seconds": 36.7}},
         "report": str(tmp_path / "report.md"), "model": str(tmp_path / "model")},
        1234.0,
    )
    assert "teacher" in text and "2400" in text and "392" in text and "1234" in text
    assert any(line.split() == ["label", "37"] for line in text.splitlines())
    assert "MixIT teacher (top-2)" in text and "4.25" in text and "5.50" in text
    assert "holds: The teacher over-separates" in text
    assert f"tsmixit separate --model {tmp_path / 'model'}" in text


def test_unknown_import_option_names_the_valid_ones(tmp_path, capsys):
    (tmp_path / "tt" / "mix").mkdir(parents=True)
    code = main(["corpus", "import", "wsj0-2mix", str(tmp_path), "--out",
                 str(tmp_path / "m.jsonl"), "--set", "labeled_fraction=0.1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "labeled_fraction" in err and "labelled_fraction" in err


def test_separate_on_a_device_this_machine_lacks_is_one_clear_error(tmp_path, capsys):
    save_model(ConvTasNet.from_preset("tiny", n_sources=2), tmp_path / "model", SR, {})
    sf.write(tmp_path / "a.wav", np.full(SR, 0.1, np.float32), SR)
    args = ["separate", "--model", str(tmp_path / "model"), str(tmp_path / "a.wav"),
            "--out", str(tmp_path / "out"), "--device"]
    for device in ("tpu", "mps"):
        assert main([*args, device]) == 2
        assert f"device {device!r}" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*args, "cuda"]) == 2
        assert "0 CUDA GPU(s); use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

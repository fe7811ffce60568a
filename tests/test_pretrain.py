"""Pretraining: one supervised stage, exported with a model card naming its scores."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import make_corpus, tiny_overrides
from tsmixit.model_files import load_model
from tsmixit.pretrain import pretrain
from tsmixit.training.config import load_config


def test_pretraining_exports_a_model_with_its_card(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n_train=8)
    missing = tmp_path / "not-here"
    config = load_config(None, tiny_overrides(corpus, steps=4, **{
        "stages.distill.rounds": 0, "stages.finetune.enabled": "false",
        "stages.supervised_fraction.enabled": "false", "eval.extra_sets": f"['{missing}']"}))
    result = pretrain(config, tmp_path / "run", embedded_preset="tiny")
    separator = load_model(result["model"])
    assert separator.sample_rate == 8000
    card = (tmp_path / "run" / "model" / "MODEL_CARD.md").read_text()
    scores = json.loads((tmp_path / "run" / "eval" / "supervised_full.json").read_text())
    assert f"| corpus test split | {scores['mean']['si_snri_topk']:.2f} |" in card
    # The embedded corpus (here the tiny preset's) is scored as an extra set.
    embedded = json.loads((tmp_path / "run" / "eval" / "sets" / "embedded"
                           / "supervised_full.json").read_text())
    assert f"| embedded | {embedded['mean']['si_snri_topk']:.2f} |" in card
    assert f"Not scored (not on the machine): {missing}" in card
    assert "4 steps" in card and "## Voice sources and licences" in card
    assert list(result["stages"]) == ["supervised_full"]  # no teacher, no student
    # Pretraining on from a released model (model.init): the card names it and its hash.
    again = pretrain(dataclasses.replace(config, model=dataclasses.replace(
        config.model, init=result["model"])), tmp_path / "run2", embedded_preset="tiny")
    assert list(again["stages"]) == ["pretrained", "supervised_full"]
    digest = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert (f"- initialised from: {result['model']} (weights sha256 "
            f"{digest['weights_sha256']})") in Path(again["card"]).read_text()


def test_release_now_exports_the_best_checkpoint_so_far(tmp_path, monkeypatch):
    from tsmixit.errors import TrainingError
    from tsmixit.pretrain import release_now
    from tsmixit.training.checkpoints import load_checkpoint, load_separator

    corpus = make_corpus(tmp_path / "corpus", n_train=8)
    config = load_config(None, tiny_overrides(corpus, steps=6, **{
        "stages.distill.rounds": 0, "stages.finetune.enabled": "false",
        "stages.supervised_fraction.enabled": "false", "train.val_every": 3}))
    with pytest.raises(TrainingError, match="no checkpoint to release yet"):
        release_now(config, tmp_path / "run", embedded_preset="tiny")
    pretrain(config, tmp_path / "run", embedded_preset="tiny")
    best = tmp_path / "run" / "supervised_full" / "checkpoints" / "best.ckpt"
    for stale in ("model", "eval"):  # what the release must write again
        shutil.rmtree(tmp_path / "run" / stale)
    monkeypatch.chdir(tmp_path)  # a run folder named relative to the working directory
    result = release_now(config, "run", embedded_preset="tiny")
    steps = int(load_checkpoint(best)["global_step"])
    card = (tmp_path / "run" / "model" / "MODEL_CARD.md").read_text()
    assert f"{steps} steps" in card
    scores = json.loads((tmp_path / "run" / "eval" / "supervised_full.json").read_text())
    assert f"| corpus test split | {scores['mean']['si_snri_topk']:.2f} |" in card
    assert (tmp_path / "run" / "eval" / "sets" / "embedded" / "supervised_full.json").is_file()
    x = torch.randn(1, 4000)
    with torch.inference_mode():
        torch.testing.assert_close(load_model(result["model"]).model(x),
                                   load_separator(best).eval()(x))


def test_card_scores_the_test_split_per_pair_of_voice_sources(tmp_path):
    from tsmixit.pretrain import scores_by_voice_sources

    (tmp_path / "eval").mkdir()
    (tmp_path / "corpus").mkdir()
    speakers = {"test": [{"id": "tt000f"}, {"id": "tt-kokoro000f", "source": "kokoro"},
                         {"id": "tt-recordings000m", "source": "recordings"}]}
    pairs = [("tt000f", "tt-kokoro000f", 4.0), ("tt-kokoro000f", "tt000f", 6.0),
             ("tt-kokoro000f", "tt-kokoro000f", 7.0), ("tt-kokoro000f", "tt000f", 11.0),
             ("tt-recordings000m", "tt-kokoro000f", 1.5), ("tt000f", "tt000f", 9.0)]
    rows = [{"id": f"test_{i}", "speakers": [a, b]} for i, (a, b, _) in enumerate(pairs)]
    scores = [{"id": f"test_{i}", "si_snri_topk": v} for i, (_, _, v) in enumerate(pairs)]
    (tmp_path / "corpus" / "speakers.json").write_text(json.dumps(speakers))
    (tmp_path / "corpus" / "manifest.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval" / "supervised_full.json").write_text(json.dumps({"per_mixture": scores}))
    assert scores_by_voice_sources(tmp_path) == {
        ("espeak", "espeak"): (1, 9.0), ("espeak", "kokoro"): (3, 6.0),
        ("kokoro", "kokoro"): (1, 7.0), ("kokoro", "recordings"): (1, 1.5)}
    (tmp_path / "corpus" / "speakers.json").unlink()
    assert scores_by_voice_sources(tmp_path) == {}

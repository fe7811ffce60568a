"""The real-voice test set: mixtures of two real people checked against their decoded
prompts (cut, level, sum), deterministic and idempotent, refused where it does not belong,
read by the WSJ0-2mix importer, and scored by the recipe with eval.real_voices."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import make_corpus, tiny_overrides
from tsmixit.cli import _recipe_summary, main
from tsmixit.corpus import real_voices
from tsmixit.corpus.real_voices import RealVoicePackagesError, build_real_voice_set
from tsmixit.corpus.voices import VoiceSourceError, recordings
from tsmixit.data.importers import open_test_set
from tsmixit.errors import ConfigError, ManifestError
from tsmixit.recipe import run_recipe
from tsmixit.training import splits
from tsmixit.training.config import load_config

APT = "apt-get install -y asterisk-prompt-es-co asterisk-prompt-fr-armelle"
N = 6


def _installed() -> bool:
    return all((recordings.DPKG_INFO / f"{p}.list").exists()
               for p in recordings.DEV_SET_PACKAGES)


needs_packages = pytest.mark.skipif(
    not _installed(), reason=f"the real-voice packages are not installed: {APT} (make voices-apt)")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_real_voice_set(tmp_path_factory.mktemp("rv") / "set", N, progress=False)


def _record(folder: Path) -> dict:
    return json.loads((folder / "real_voices.json").read_text())


def _pcm(path: Path) -> np.ndarray:
    assert sf.info(path).subtype == "PCM_16" and sf.info(path).samplerate == 8000
    return sf.read(path, dtype="int16")[0].astype(np.int64)


def _trimmed(prompt: str) -> np.ndarray:
    """A prompt decoded and trimmed by hand: from 80 samples before its first sample above
    -40 dB re. its peak to 80 after its last (the recipe the module documents)."""
    x = sf.read(prompt, format="RAW", subtype="GSM610", samplerate=8000, channels=1,
                dtype="float64")[0]
    loud = np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max())
    return x[max(loud[0] - 80, 0): loud[-1] + 80]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@needs_packages
def test_each_mixture_is_two_prompts_of_the_two_voices_cut_levelled_and_summed(built):
    record = _record(built)
    ids = [m["id"] for m in record["mixtures"]]
    assert len(ids) == N and record["n_mixtures"] == N and record["seed"] == 3
    for sub in ("mix", "s1", "s2"):
        assert sorted(p.stem for p in (built / "tt" / sub).iterdir()) == ids
    listed = {v: Path(f"/var/lib/dpkg/info/{pkg}.list").read_text().split("\n")
              for v, (pkg, _, _) in real_voices.VOICES.items()}
    for m in record["mixtures"]:
        assert {m["s1"], m["s2"]} == {"es_co", "armelle"}  # two different people
        mix, s1, s2 = (_pcm(built / "tt" / sub / f"{m['id']}.wav") for sub in ("mix", "s1", "s2"))
        assert len(mix) == len(s1) == len(s2) == m["frames"]
        np.testing.assert_array_equal(mix, s1 + s2)  # exact: mix is the sum of the integers
        level = 10 * np.log10(np.sum(s1.astype(float) ** 2) / np.sum(s2.astype(float) ** 2))
        assert -5 <= level <= 5 and level == pytest.approx(m["relative_level_db"], abs=0.01)
        prompts = [_trimmed(p) for p in m["prompts"]]
        assert m["prompts"][0] in listed[m["s1"]] and m["prompts"][1] in listed[m["s2"]]
        assert all(len(p) >= 1.5 * 8000 for p in prompts)
        assert m["frames"] == min(len(p) for p in prompts)  # "min" mode
        for source, prompt in zip((s1, s2), prompts, strict=True):
            y = prompt[: m["frames"]]
            gain = source @ y / (y @ y)
            residual = np.sum((source - gain * y) ** 2) / np.sum(source.astype(float) ** 2)
            assert residual < 1e-6  # the prompt itself, scaled (16-bit rounding only)
    assert np.abs(np.concatenate([_pcm(p) for p in (built / "tt" / "mix").iterdir()])).max() \
        == pytest.approx(0.9 * 32768, abs=1)
    for voice in ("es_co", "armelle"):
        assert record["voices"][voice]["licence"]  # lines of its copyright file
    assert "GNU General Public License" in record["voices"]["es_co"]["licence"][-1]
    assert "Michel Gutierrez" in " ".join(record["voices"]["armelle"]["licence"])


@needs_packages
def test_the_same_seed_gives_the_same_bytes_and_a_prefix_of_a_larger_set(built, tmp_path,
                                                                          capsys):
    (tmp_path / "again").mkdir()  # an empty folder is built into
    again = build_real_voice_set(tmp_path / "again", N, progress=False)
    assert _tree(again) == _tree(built)
    assert main(["corpus", "real-voices", "--out", str(tmp_path / "two"), "--n", "2"]) == 0
    assert "2 mixtures of two real voices" in capsys.readouterr().out
    two = _tree(tmp_path / "two")
    assert {k for k in two if k.startswith("tt/")} == {
        f"tt/{sub}/{m['id']}.wav" for m in _record(built)["mixtures"][:2]
        for sub in ("mix", "s1", "s2")}
    assert all(two[k] == _tree(built)[k] for k in two if k.startswith("tt/"))
    assert not list(tmp_path.glob(".*partial*"))


@needs_packages
def test_a_finished_set_is_returned_at_once_and_anything_else_is_refused(built, tmp_path,
                                                                        monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in built.rglob("*")}

    def no_audio(*args):
        raise AssertionError("a finished set must not be read again")

    monkeypatch.setattr(real_voices, "_decode", no_audio)
    assert build_real_voice_set(built, N, progress=False) == built
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*")} == before

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ManifestError, match=f"{other}: holds something other.*remove it"):
        build_real_voice_set(other, N)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    copy = shutil.copytree(built, tmp_path / "copy")
    with pytest.raises(ManifestError, match="another real-voice test set.*n_mixtures, seed"):
        build_real_voice_set(copy, N + 1, seed=4)
    (copy / "tt" / "s2" / f"{_record(built)['mixtures'][3]['id']}.wav").unlink()
    with pytest.raises(ManifestError, match="incomplete.*tt/s2/0003_"):
        build_real_voice_set(copy, N)


@needs_packages
def test_the_wsj0_2mix_importer_reads_it_as_a_test_set(built):
    record = _record(built)
    test = open_test_set(built)
    assert [r["id"] for r in test.rows] == [f"test/{m['id']}" for m in record["mixtures"]]
    assert [r["num_frames"] for r in test.rows] == [m["frames"] for m in record["mixtures"]]
    assert all(r["labelled"] and r["n_speakers"] == 2 and r["sample_rate"] == 8000
               for r in test.rows)


def test_without_the_packages_one_error_names_them_and_the_fix(tmp_path, monkeypatch, capsys):
    assert {p for p, _, _ in real_voices.VOICES.values()} == set(recordings.DEV_SET_PACKAGES)
    monkeypatch.setattr(recordings, "DPKG_INFO", tmp_path / "info")
    with pytest.raises(RealVoicePackagesError, match=f"make voices-apt.*{APT}") as error:
        build_real_voice_set(tmp_path / "set")
    assert isinstance(error.value, VoiceSourceError)
    assert "not installed: asterisk-prompt-es-co, asterisk-prompt-fr-armelle" in str(error.value)
    assert not (tmp_path / "set").exists()
    assert main(["corpus", "real-voices", "--out", str(tmp_path / "set")]) == 2
    assert capsys.readouterr().err.startswith("error: the real-voice test set needs")


def test_a_corrupt_prompt_is_one_error_naming_it(tmp_path, monkeypatch):
    """Packages faked in a dpkg folder of their own: one prompt is not whole GSM frames."""
    info = tmp_path / "dpkg" / "info"
    info.mkdir(parents=True)
    status = []
    for package, _, _ in real_voices.VOICES.values():
        prompt = tmp_path / package / "p.gsm"
        doc = tmp_path / "doc" / package / "copyright"
        for folder in (prompt.parent, doc.parent):
            folder.mkdir(parents=True)
        prompt.write_bytes(bytes(33 * 10 + (5 if "es-co" in package else 0)))
        doc.write_text("Copyright (C) 2006 Someone\n\nRedistribution is fine.\n")
        (info / f"{package}.list").write_text(f"{prompt}\n{doc}\n")
        status.append(f"Package: {package}\nStatus: install ok installed\nVersion: 1.0\n")
    (tmp_path / "dpkg" / "status").write_text("\n".join(status))
    monkeypatch.setattr(recordings, "DPKG_INFO", info)
    bad = tmp_path / "asterisk-prompt-es-co" / "p.gsm"
    with pytest.raises(VoiceSourceError, match=f"{bad}: 335 bytes.*--reinstall -y "
                                               "asterisk-prompt-es-co"):
        build_real_voice_set(tmp_path / "set", 2, progress=False)
    assert not (tmp_path / "set").exists() and not list(tmp_path.glob(".set.partial*"))


def test_the_recipe_refuses_real_voices_it_cannot_score_before_training(tmp_path):
    stereo = make_corpus(tmp_path / "stereo", n_train=4, channels=2)
    config = load_config(None, tiny_overrides(stereo, **{"eval.real_voices": "true"}))
    with pytest.raises(ConfigError, match="eval.real_voices.*8000 Hz with one microphone"):
        run_recipe(config, tmp_path / "run")
    mono = make_corpus(tmp_path / "mono", n_train=4)
    (tmp_path / "real-voices").mkdir()
    config = load_config(None, tiny_overrides(mono, **{
        "eval.real_voices": "true", "eval.extra_sets": f"['{tmp_path / 'real-voices'}']"}))
    with pytest.raises(ConfigError, match="named 'real-voices' like the set of eval.real_v"):
        run_recipe(config, tmp_path / "run")
    assert not list((tmp_path / "run").glob("*/summary.json"))


@needs_packages
def test_the_recipe_scores_the_set_and_without_its_packages_says_how_to_add_it(
        tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", n_train=8)
    config = load_config(None, tiny_overrides(corpus, steps=2, **{"eval.real_voices": "true"}))
    run, stages = tmp_path / "run", ["supervised_full", "eval"]
    warned = []
    with monkeypatch.context() as away:
        away.setattr(recordings, "DPKG_INFO", tmp_path / "nowhere")
        away.setattr(splits.log, "warning", lambda text, *args: warned.append(text % args))
        first = run_recipe(config, run, stages=stages)
    assert len(warned) == 1 and "eval.real_voices" in warned[0] and APT in warned[0]
    assert first["eval_sets"] == {} and not (run / "real-voices").exists()
    summary = _recipe_summary(first, 1.0)
    assert "make voices-apt" in summary and "rerun the same command (it only evaluates)" in summary

    scored = (run / "eval" / "supervised_full.json").stat().st_mtime_ns
    again = run_recipe(config, run, stages=stages)  # the packages are back
    assert again["stages"] == first["stages"]  # nothing retrained, nothing else rescored
    assert (run / "eval" / "supervised_full.json").stat().st_mtime_ns == scored
    assert "real_voices_missing" not in again
    scores = json.loads((run / "eval" / "sets" / "real-voices" / "supervised_full.json")
                        .read_text())
    record = _record(run / "real-voices")
    assert record["n_mixtures"] == 120 and record["seed"] == 3  # the defaults
    assert [m["id"] for m in scores["per_mixture"]] == [
        f"test/{m['id']}" for m in record["mixtures"][:4]]  # eval.max_mixtures = 4
    assert again["eval_sets"]["real-voices"]["supervised_full"] == scores["mean"]

"""The embedded corpus: speakers, determinism, mixing rule, levels, noise, rooms, resume.

Sums are checked before any quantisation of the mixture: the utterances and noise clips are
16-bit FLAC, but mixtures and sources are rendered on the fly in float from those same
samples, so mixture = sum of sources (+ noise) holds to float precision (1e-6). Only the
materialised 16-bit wav folders are quantised; that test allows 16-bit rounding.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import butter, sosfiltfilt

from tsmixit.corpus import build_corpus, make_config
from tsmixit.data.manifest import Manifest
from tsmixit.errors import ConfigError

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("tiny"), "tiny", seed=0, progress=False)


@pytest.fixture(scope="module")
def spatial(tmp_path_factory) -> Path:
    """Reverberant, 3 microphones, all noise types, 1-3 speakers."""
    return build_corpus(tmp_path_factory.mktemp("spatial"), "tiny", seed=3, progress=False,
                        reverb=True, n_mics=3, noise=True, speakers=(6, 3, 3),
                        speaker_proportions=(0.2, 0.5, 0.3), mixtures=(16, 6, 6))


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _flac(path: str) -> np.ndarray:
    return sf.read(path, dtype="float64")[0]


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    return x[..., :n] if x.shape[-1] >= n else np.pad(x, [(0, 0)] * (x.ndim - 1) +
                                                     [(0, n - x.shape[-1])])


def _f0(x: np.ndarray, sr: int) -> float:
    """Median F0 (Hz) over voiced 40 ms frames: the unbiased autocorrelation peak in
    55-450 Hz of the signal low-passed at 800 Hz (which keeps formants from winning)."""
    x = sosfiltfilt(butter(4, 800, fs=sr, output="sos"), x)
    n, f0s = int(0.04 * sr), []
    loud = np.sqrt(np.mean(x**2))
    for start in range(0, len(x) - n, n // 2):
        w = x[start:start + n] - x[start:start + n].mean()
        if np.sqrt(np.mean(w**2)) < 0.5 * loud:
            continue
        ac = np.correlate(w, w, "full")[n - 1:] / (n - np.arange(n))
        lo, hi = int(sr / 450), int(sr / 55)
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            f0s.append(sr / lag)
    return float(np.median(f0s))


def test_splits_are_speaker_disjoint_and_both_genders(tiny):
    manifest = Manifest.load(tiny)
    info = json.loads((tiny.parent / "speakers.json").read_text())
    by_split = {s: {r_spk for r in manifest.select(split=s) for r_spk in r["speakers"]}
                for s in SPLITS}
    from_paths = {s: {Path(p["audio"]).parent.name for r in manifest.select(split=s)
                      for p in r["parts"]} for s in SPLITS}
    assert by_split == from_paths
    for a in SPLITS:
        assert by_split[a] <= {sp["id"] for sp in info[a]}
        assert {sp["gender"] for sp in info[a]} == {"m", "f"}
        for b in SPLITS:
            if a < b:
                assert not by_split[a] & by_split[b]
                assert not {sp["variant"] for sp in info[a]} & {sp["variant"] for sp in info[b]}
    assert [len(info[s]) for s in SPLITS] == [6, 2, 2]
    assert len(manifest) == 40


def test_speech_is_audible_with_plausible_pitch(tiny):
    info = json.loads((tiny.parent / "speakers.json").read_text())
    f0 = {"m": [], "f": []}
    for speaker in info["train"] + info["valid"]:
        files = sorted((tiny.parent / "utterances" / speaker["id"]).glob("*.flac"))
        x = np.concatenate([_flac(str(f)) for f in files])
        assert 20 * np.log10(np.sqrt(np.mean(x**2))) > -30  # not silent (peak is 0.9)
        f0[speaker["gender"]].append(_f0(x, 8000))
    assert all(60 <= v <= 170 for v in f0["m"]), f0
    assert all(140 <= v <= 330 for v in f0["f"]), f0
    assert np.median(f0["f"]) > 1.4 * np.median(f0["m"])


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    again = build_corpus(tmp_path / "again", "tiny", seed=0, progress=False)
    assert _tree_digest(again.parent) == _tree_digest(tiny.parent)
    other = build_corpus(tmp_path / "other", "tiny", seed=1, progress=False)
    a, b = _tree_digest(tiny.parent), _tree_digest(other.parent)
    assert a["manifest.jsonl"] != b["manifest.jsonl"]
    assert a["speakers.json"] != b["speakers.json"]
    shared = set(a) & set(b)
    assert sum(a[k] == b[k] for k in shared if k.endswith(".flac")) == 0


def test_mixture_is_sum_of_sources_levels_peak_and_labels(tiny):
    manifest = Manifest.load(tiny)
    ratios = []
    for i, row in enumerate(manifest.rows):
        T = row["num_frames"]
        mixture = manifest.load_mixture(i)  # (1, T)
        sources = manifest.load_sources(i, allow_unlabelled=True)  # (2, T)
        # independent rendering from the FLAC files and the row's gains
        dry = [p["gain"] * _fit(_flac(p["audio"]), T) for p in row["parts"]]
        lengths = [sf.info(p["audio"]).frames for p in row["parts"]]
        assert min(lengths) == T  # "min" mode
        np.testing.assert_allclose(sources, np.stack(dry), atol=1e-6)
        np.testing.assert_allclose(mixture[0], sources.sum(0), atol=1e-6)
        peak = max(np.abs(mixture).max(), np.abs(sources).max())
        assert peak == pytest.approx(0.9, abs=1e-6)
        e1, e2 = np.sum(sources[0] ** 2), np.sum(sources[1] ** 2)
        ratio = 10 * np.log10(e1 / e2)
        assert ratio == pytest.approx(row["levels_db"][0] - row["levels_db"][1], abs=1e-3)
        ratios.append(ratio)
    assert min(ratios) >= -5 and max(ratios) <= 5 and max(ratios) - min(ratios) > 4
    labelled = [r["labelled"] for r in manifest.select(split="train")]
    assert sum(labelled) == round(0.25 * 24)
    assert all(r["labelled"] for s in ("valid", "test") for r in manifest.select(split=s))


def test_reverberant_noisy_rows(spatial):
    manifest = Manifest.load(spatial)
    rirs = np.load(spatial.parent / "rooms.npz")["rirs"]  # (n_rirs, C, L)
    assert rirs.shape[1] == 3
    rows = manifest.rows
    assert {r["n_speakers"] for r in rows} == {1, 2, 3}
    kinds = {Path(p["audio"]).stem.rsplit("_", 1)[1] for r in rows for p in r["parts"]
             if p["role"] == "noise"}
    assert kinds == {"white", "pink", "speech", "babble"}
    for i, row in enumerate(rows):
        T = row["num_frames"]
        mixture = manifest.load_mixture(i)  # (3, T)
        sources = manifest.load_sources(i, allow_unlabelled=True)  # (k, T)
        assert mixture.shape == (3, T) and sources.shape == (row["n_speakers"], T)
        assert not np.allclose(mixture[0], mixture[1], atol=1e-3)  # the mics differ
        # independent rendering: direct-form convolution per microphone
        expect = np.zeros((3, T))
        for p in row["parts"]:
            dry = _flac(p["audio"])
            image = np.stack([np.convolve(dry, h)[:T] for h in rirs[p["rir"]]])  # (3, <=T)
            expect[:, : image.shape[1]] += p["gain"] * image
        np.testing.assert_allclose(mixture, expect, atol=1e-5)
        src = [p for p in row["parts"] if p["role"] == "source"]
        for k, p in enumerate(src):  # sources are the images at microphone 0
            img = np.convolve(_flac(p["audio"]), rirs[p["rir"], 0])[:T]
            np.testing.assert_allclose(sources[k], p["gain"] * _fit(img, T), atol=1e-5)
        noise0 = mixture[0].astype(np.float64) - sources.sum(0)
        snr = 10 * np.log10(np.sum(sources.sum(0) ** 2) / np.sum(noise0**2))
        assert snr == pytest.approx(row["snr_db"], abs=0.01)
        assert 5 <= row["snr_db"] <= 20
        assert max(np.abs(mixture).max(), np.abs(sources).max()) <= 0.9 + 1e-6
    info = json.loads((spatial.parent / "speakers.json").read_text())
    held_out = {s["id"] for s in info["babble"]}
    assert held_out and not held_out & {s for r in rows for s in r["speakers"]}


def test_max_mode_16k_and_materialize(tmp_path):
    path = build_corpus(tmp_path / "c", "tiny", seed=2, progress=False, sample_rate=16000,
                        mode="max", mixtures=(4, 2, 2), materialize=True)
    manifest = Manifest.load(path)
    for i, row in enumerate(manifest.rows):
        assert row["sample_rate"] == 16000
        assert row["num_frames"] == max(sf.info(p["audio"]).frames for p in row["parts"])
        folder = path.parent / "wav16k" / "max" / {"train": "tr", "valid": "cv",
                                                   "test": "tt"}[row["split"]]
        mix, sr = sf.read(folder / "mix" / f"{row['id']}.wav")
        s1 = sf.read(folder / "s1" / f"{row['id']}.wav")[0]
        s2 = sf.read(folder / "s2" / f"{row['id']}.wav")[0]
        assert sr == 16000
        np.testing.assert_allclose(mix, manifest.load_mixture(i)[0], atol=1 / 32768)
        np.testing.assert_allclose(mix, s1 + s2, atol=3 / 32768)  # 16-bit rounding of each


def test_resume_and_settings_guard(tiny, tmp_path):
    work = tmp_path / "resume"
    shutil.copytree(tiny.parent, work)
    (work / "manifest.jsonl").unlink()
    shutil.rmtree(work / "utterances" / "tr000m", ignore_errors=True)
    shutil.rmtree(work / "utterances" / "tr000f", ignore_errors=True)
    kept = work / "utterances" / "cv000f"
    kept = kept if kept.exists() else work / "utterances" / "cv000m"
    stamp = {p: os.stat(p).st_mtime_ns for p in kept.glob("*.flac")}
    build_corpus(work, "tiny", seed=0, progress=False)
    assert _tree_digest(work) == _tree_digest(tiny.parent)
    assert {p: os.stat(p).st_mtime_ns for p in kept.glob("*.flac")} == stamp
    with pytest.raises(ConfigError, match="labelled_fraction"):
        build_corpus(work, "tiny", seed=0, progress=False, labelled_fraction=0.5)


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"n_mics": 9, "reverb": True}, "n_mics"),
        ({"n_mics": 2}, "n_mics"),
        ({"sample_rate": 44100}, "sample_rate"),
        ({"noise": ["rain"]}, "noise"),
        ({"labelled_fraction": 1.5}, "labelled_fraction"),
        ({"mixtures": (10, 2)}, "mixtures"),
        ({"mode": "mid"}, "mode"),
        ({"colour": 1}, "colour"),
        ({"speaker_proportions": (0, 0, 1)}, "speakers"),
        ({"kokoro": (-1, 0, 0)}, "kokoro"),
        ({"recordings": (1, 2)}, "recordings"),
        ({"augment": 1.5}, "augment"),
        ({"speakers": (0, 2, 2)}, "speakers"),  # no training speaker from any source
        ({"realistic_share": 0.5}, "realistic_share"),  # no realistic voice to draw
        ({"kokoro": (1, 0, 0), "realistic_share": 1.5}, "realistic_share"),
    ],
)
def test_bad_settings_name_the_setting(overrides, name):
    with pytest.raises(ConfigError, match=name):
        make_config("tiny", **overrides)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="demo-spatial"):
        make_config("huge")


def test_demo_preset_meets_the_issue():
    demo = make_config("demo")
    assert demo.speakers[0] >= 60 and demo.speakers[1] >= 10 and demo.speakers[2] >= 10
    assert demo.mixtures[0] >= 5000 and demo.labelled_fraction == 0.1
    spatial = make_config("demo-spatial")
    assert spatial.reverb and spatial.n_mics == 4


def test_realistic_settings_leave_old_fingerprints_alone():
    """Corpora without realistic voices keep the corpus.json they always had (so their
    folders are resumed, not rebuilt); the realistic settings enter it when set."""
    old_keys = {"sample_rate", "speakers", "utterances", "words", "mixtures", "mode",
                "level_db", "speaker_proportions", "labelled_fraction", "noise", "snr_db",
                "noise_clips", "babble_speakers", "reverb", "n_mics", "rooms", "positions",
                "rt60", "max_order", "peak"}
    for preset in ("tiny", "demo", "demo-spatial"):
        assert set(make_config(preset).fingerprint()) == old_keys
        assert set(make_config(preset, cache_dir="/x", workers=1).fingerprint()) == old_keys
    realistic = make_config("tiny", kokoro=(2, 1, 1), augment=0.5).fingerprint()
    assert realistic["kokoro"] == [2, 1, 1] and realistic["augment"] == 0.5
    assert "piper" not in realistic and "cache_dir" not in realistic


def test_same_speaker_mixtures_repeat_the_first_speaker_with_another_utterance():
    """With same_speaker = q, about q of the 2-speaker plans hold two different utterances of
    one speaker and the rest two speakers; 3-speaker plans repeat only the first; q = 0 never
    repeats a speaker; a speaker pool too small for it is refused by name."""
    from tsmixit.corpus.mixing import sample_plans

    by_speaker = {f"sp{i}": [f"sp{i}_u{j}" for j in range(3)] for i in range(6)}
    frames = {u: 8000 + 10 * i for i, u in enumerate(sorted(sum(by_speaker.values(), [])))}

    def plans(k_shares, q):
        return sample_plans(np.random.default_rng(1), by_speaker, frames, 2000, k_shares,
                            "min", 5.0, None, 4, 0, (5.0, 20.0), None, q)

    def speakers(plan):
        return [u.split("_")[0] for u in plan.utterances]

    two = plans((0.0, 1.0, 0.0), 0.3)
    same = [len(set(speakers(p))) == 1 for p in two]
    assert np.mean(same) == pytest.approx(0.3, abs=0.04)
    assert all(len(set(p.utterances)) == 2 for p in two)  # never one utterance twice
    three = plans((0.0, 0.0, 1.0), 0.3)
    assert all(speakers(p)[0] != speakers(p)[2] and speakers(p)[1] != speakers(p)[2]
               for p in three)
    assert np.mean([speakers(p)[0] == speakers(p)[1] for p in three]) == \
        pytest.approx(0.3, abs=0.04)
    assert not any(len(set(speakers(p))) == 1 for p in plans((0.0, 1.0, 0.0), 0.0))
    with pytest.raises(ConfigError, match="same_speaker"):
        make_config("tiny", same_speaker=0.2, utterances=(1, 4))
    assert make_config("tiny", same_speaker=0.2).fingerprint()["same_speaker"] == 0.2


def test_pretrain_preset():
    c = make_config("pretrain")
    assert c.has_realistic_voices() and c.sample_rate == 8000
    assert c.speakers[0] >= 200 and c.piper >= 40 and c.kokoro[0] >= 36
    assert c.recordings[1] > 0 and c.recordings[2] > 0  # held-out real people
    assert 0 < c.augment < 1 and c.labelled_fraction == 1.0
    assert 0.5 < c.realistic_share < 1  # most sources realistic


def test_speaker_weights_set_the_share_of_each_group():
    """Draws follow the weights: one speaker a mixture, the realistic group's share is the
    asked one; two without replacement, each speaker's chance of being drawn is the one
    enumerated by hand over ordered pairs, P(i first) + sum_j P(j first) w_i / (1 - w_j)."""
    from types import SimpleNamespace

    from tsmixit.corpus.build import _speaker_weights
    from tsmixit.corpus.mixing import sample_plans

    espeak = [SimpleNamespace(id=f"tr{i:03d}m") for i in range(3)]  # only ids are read
    realistic = [SimpleNamespace(id=f"tr-kokoro{i:03d}f") for i in range(2)]
    weights = _speaker_weights(0.75, espeak, realistic)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert sum(w for s, w in weights.items() if "kokoro" in s) == pytest.approx(0.75)
    assert _speaker_weights(0.0, espeak, realistic) is None
    assert _speaker_weights(0.75, espeak, []) is None

    by_speaker = {s: [f"{s}_u"] for s in weights}
    frames = {u[0]: 8000 for u in by_speaker.values()}

    def drawn(k_shares, n, w):
        plans = sample_plans(np.random.default_rng(0), by_speaker, frames, n, k_shares, "min",
                             5.0, None, 4, 0, (5.0, 20.0), w)
        return [u.split("_")[0] for p in plans for u in p.utterances]

    one = drawn((1.0, 0.0, 0.0), 4000, weights)
    assert np.mean(["kokoro" in s for s in one]) == pytest.approx(0.75, abs=0.03)
    two = drawn((0.0, 1.0, 0.0), 4000, weights)
    for s, w in weights.items():
        p = w + sum(v * w / (1 - v) for t, v in weights.items() if t != s)
        assert two.count(s) / 4000 == pytest.approx(p, abs=0.04), s
    # without weights the draws are the unweighted ones, bit for bit
    assert drawn((0.0, 1.0, 0.0), 50, None) == [
        u.split("_")[0] for p in sample_plans(np.random.default_rng(0), by_speaker, frames, 50,
                                              (0.0, 1.0, 0.0), "min", 5.0, None, 4, 0,
                                              (5.0, 20.0)) for u in p.utterances]

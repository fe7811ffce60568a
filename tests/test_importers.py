"""tsmixit.data.importers: every corpus layout, its rows, and the errors that name the file."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import pcm_noise, write_pcm16
from tsmixit.audio import AUDIO_SUFFIXES, ResampleWarning
from tsmixit.data.importers import (
    import_folder,
    import_librimix,
    import_spatialized_wsj0_2mix,
    import_wsj0_2mix,
)
from tsmixit.data.manifest import Manifest
from tsmixit.errors import AudioError, ManifestError


def _wsj_tree(
    root: Path, rate_dir="wav8k", mode="min", sr=8000, channels=1, splits=("tr", "cv", "tt"),
    n=4, with_sources=True,
) -> Path:
    base = root / rate_dir / mode
    for split in splits:
        for k in range(n):
            name = f"{split}_{k:02d}.wav"
            frames = 400 + 10 * k
            write_pcm16(base / split / "mix" / name, pcm_noise(frames, channels, seed=k), sr)
            if with_sources:
                for s in ("s1", "s2"):
                    wav = pcm_noise(frames, channels, seed=100 + k)
                    write_pcm16(base / split / s / name, wav, sr)
    return base


# ---- WSJ0-2mix ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["root", "rate", "mode"])
def test_wsj0_2mix_import_finds_the_layout_at_any_level(tmp_path, level):
    base = _wsj_tree(tmp_path / "wsj")
    path = {"root": tmp_path / "wsj", "rate": base.parent, "mode": base}[level]
    manifest = import_wsj0_2mix(path)
    assert len(manifest) == 12
    assert {r["split"] for r in manifest} == {"train", "valid", "test"}
    row = next(r for r in manifest if r["id"] == "valid/cv_02")
    assert row["labelled"] and row["num_frames"] == 420 and row["n_speakers"] == 2
    assert row["mixture"] == str(base / "cv" / "mix" / "cv_02.wav")
    i = manifest.rows.index(row)
    np.testing.assert_array_equal(manifest.load_mixture(i), pcm_noise(420, seed=2))
    np.testing.assert_array_equal(manifest.load_sources(i)[1], pcm_noise(420, seed=102)[0])


def test_wsj0_2mix_max_16k_mode_and_unlabelled_mix_only(tmp_path):
    _wsj_tree(tmp_path, rate_dir="wav16k", mode="max", sr=16000, with_sources=False)
    manifest = import_wsj0_2mix(tmp_path, sample_rate=16000, mode="max")
    assert len(manifest) == 12
    assert all(not r["labelled"] and r["sources"] is None for r in manifest)
    assert manifest.rows[0]["sample_rate"] == 16000
    with pytest.raises(ManifestError, match="no WSJ0-2mix layout"):
        import_wsj0_2mix(tmp_path, mode="min")


def test_wsj0_2mix_labelled_fraction_is_seeded_and_train_only(tmp_path):
    _wsj_tree(tmp_path, n=10, splits=("tr", "cv"))
    first = import_wsj0_2mix(tmp_path, labelled_fraction=0.3, seed=1)
    again = import_wsj0_2mix(tmp_path, labelled_fraction=0.3, seed=1)
    other = import_wsj0_2mix(tmp_path, labelled_fraction=0.3, seed=2)
    labelled = [r["id"] for r in first.select(split="train", labelled=True)]
    assert len(labelled) == 3
    assert labelled == [r["id"] for r in again.select(split="train", labelled=True)]
    assert labelled != [r["id"] for r in other.select(split="train", labelled=True)]
    assert all(r["labelled"] for r in first.select(split="valid"))


def test_wsj0_2mix_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(ManifestError, match="nothing_here: folder not found"):
        import_wsj0_2mix(tmp_path / "nothing_here")
    base = _wsj_tree(tmp_path / "a", splits=("tr",))
    (base / "tr" / "s2" / "tr_01.wav").unlink()
    write_pcm16(base / "tr" / "s2" / "stray.wav", pcm_noise(400))
    with pytest.raises(ManifestError, match=r"tr_01\.wav.*stray\.wav"):
        import_wsj0_2mix(base)
    base = _wsj_tree(tmp_path / "b", splits=("tr",))
    write_pcm16(base / "tr" / "s1" / "tr_02.wav", pcm_noise(999))
    with pytest.raises(ManifestError, match=r"s1/tr_02\.wav: has 999 frames .* has 420"):
        import_wsj0_2mix(base)
    base = _wsj_tree(tmp_path / "c", splits=("tr",))
    shutil.rmtree(base / "tr" / "mix")
    with pytest.raises(ManifestError, match="tr: has no mix/ folder"):
        import_wsj0_2mix(base)
    base = _wsj_tree(tmp_path / "d", splits=("cv",))
    with pytest.raises(AudioError, match=r"cv_00\.wav: sample rate 8000 Hz, expected 16000"):
        import_wsj0_2mix(base, sample_rate=16000)
    base = _wsj_tree(tmp_path / "e", splits=("tt",), channels=2)
    with pytest.raises(AudioError, match=r"tt_00\.wav: has 2 channels.*spatialized"):
        import_wsj0_2mix(base)


def test_spatialized_import_selects_channels_with_the_first_as_reference(tmp_path):
    root = tmp_path / "2speakers_reverb"
    _wsj_tree(root, channels=4, splits=("tt",), n=2)
    manifest = import_spatialized_wsj0_2mix(tmp_path, channels=[2, 0])
    assert len(manifest) == 2 and manifest.rows[0]["channels"] == 2
    np.testing.assert_array_equal(manifest.load_mixture(1), pcm_noise(410, 4, seed=1)[[2, 0]])
    np.testing.assert_array_equal(manifest.load_sources(1)[0], pcm_noise(410, 4, seed=101)[2])
    full = import_spatialized_wsj0_2mix(tmp_path)
    assert full.load_mixture(0).shape == (4, 400)
    Manifest.load(full.save(tmp_path / "m.jsonl"))  # round trip validates
    with pytest.raises(AudioError, match=r"tt_00\.wav: has 4 channel.*\[7\]"):
        import_spatialized_wsj0_2mix(tmp_path, channels=[7])


# ---- LibriMix ----------------------------------------------------------------------------


def _librimix(tmp_path: Path, stale_prefix: str = "/old/machine/data") -> Path:
    lib = tmp_path / "Libri2Mix"
    lines = ["mixture_ID,mixture_path,source_1_path,source_2_path,noise_path,length"]
    for k in range(3):
        rel = [f"wav8k/min/dev/{d}/m{k}.wav" for d in ("mix_both", "s1", "s2", "noise")]
        for j, r in enumerate(rel):
            write_pcm16(lib / r, pcm_noise(300 + k, seed=10 * k + j))
        lines.append(f"m{k}," + ",".join(f"{stale_prefix}/Libri2Mix/{r}" for r in rel)
                     + f",{300 + k}")
    csv_path = tmp_path / "mixture_dev_mix_both.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def test_librimix_import_reroots_stale_paths_and_infers_the_split(tmp_path):
    csv_path = _librimix(tmp_path)
    manifest = import_librimix(csv_path, root=tmp_path / "Libri2Mix")
    assert [r["id"] for r in manifest] == ["valid/m0", "valid/m1", "valid/m2"]
    assert manifest.rows[2]["num_frames"] == 302 and manifest.rows[2]["n_speakers"] == 2
    np.testing.assert_array_equal(manifest.load_mixture(2), pcm_noise(302, seed=20))
    np.testing.assert_array_equal(manifest.load_sources(2), np.concatenate(
        [pcm_noise(302, seed=21), pcm_noise(302, seed=22)]))
    assert import_librimix(csv_path, root=tmp_path / "Libri2Mix", split="test")[0]["split"] \
        == "test"
    with pytest.raises(AudioError, match="m0.wav: does not exist.*pass root="):
        import_librimix(csv_path)


def test_librimix_bad_csv(tmp_path):
    bad = tmp_path / "mixture_train_x.csv"
    bad.write_text("mixture_ID,path\nm0,a.wav\n")
    with pytest.raises(ManifestError, match="mixture_train_x.csv: column 'mixture_path'"):
        import_librimix(bad)
    odd = tmp_path / "meta.csv"
    odd.write_text("mixture_ID,mixture_path,source_1_path\n")
    with pytest.raises(ManifestError, match="meta.csv: cannot tell the split"):
        import_librimix(odd)


# ---- folders of recordings ---------------------------------------------------------------


def test_folder_import_segments_resamples_and_splits(tmp_path):
    rec = tmp_path / "rec"
    mono = write_pcm16(rec / "a.wav", pcm_noise(8000 * 3 + 1000, seed=1))  # 3.125 s at 8 kHz
    write_pcm16(rec / "sub" / "b.flac", pcm_noise(16000 * 2, 2, seed=2), sr=16000)  # stereo 16 kHz
    with pytest.warns(ResampleWarning, match=r"1 recording\(s\).*b\.flac"):
        manifest = import_folder(rec, audio_dir=tmp_path / "audio", segment_seconds=1.0,
                                 valid_fraction=0.25, seed=0)
    ids = [r["id"] for r in manifest]
    assert ids == ["a/00000", "a/00001", "a/00002", "sub/b/00000", "sub/b/00001"]
    a_rows = manifest.rows[:3]
    assert all(r["mixture"] == str(mono) for r in a_rows)  # referenced, not copied
    assert [r["start"] for r in a_rows] == [0, 8000, 16000]
    np.testing.assert_array_equal(manifest.load_mixture(1), pcm_noise(25000, seed=1)[:, 8000:16000])
    b = manifest.rows[4]
    assert b["mixture"] == str(tmp_path / "audio" / "sub" / "b.wav")
    converted = sf.read(b["mixture"], dtype="float32")[0]
    assert converted.ndim == 1 and len(converted) == 16000  # mixed down, 8 kHz
    assert sum(r["split"] == "valid" for r in manifest) == 1
    assert all(not r["labelled"] and r["sources"] is None for r in manifest)
    # the tail of a (1000 frames) is shorter than half a segment: dropped
    with pytest.warns(ResampleWarning):
        with_tail = import_folder(rec, audio_dir=tmp_path / "audio", segment_seconds=1.0,
                                  min_segment_seconds=0.1)
    assert with_tail.rows[3]["num_frames"] == 1000


def test_folder_import_bad_inputs(tmp_path):
    with pytest.raises(ManifestError, match="missing: folder not found"):
        import_folder(tmp_path / "missing")
    rec = tmp_path / "rec"
    write_pcm16(rec / "quiet.wav", np.zeros((1, 8000), np.float32))
    with pytest.raises(AudioError, match="quiet.wav: the recording is silent"):
        import_folder(rec)
    (rec / "quiet.wav").unlink()
    write_pcm16(rec / "hi.wav", pcm_noise(16000), sr=16000)
    with pytest.raises(ManifestError, match="hi.wav: needs conversion.*audio_dir"):
        import_folder(rec)
    (rec / "hi.wav").unlink()
    (rec / "broken.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="broken.wav: cannot decode"):
        import_folder(rec)


def test_wsj0_2mix_single_split_folder_is_a_test_set(tmp_path):
    base = _wsj_tree(tmp_path, splits=("tt",), n=3)
    manifest = import_wsj0_2mix(base / "tt")
    assert [row["split"] for row in manifest.rows] == ["test"] * 3
    assert all(row["labelled"] for row in manifest.rows)
    mix, _ = sf.read(base / "tt" / "mix" / "tt_01.wav", dtype="float32")
    np.testing.assert_allclose(manifest.load_mixture(1)[0], mix)


def test_folder_import_takes_every_audio_suffix_and_nothing_else(tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    formats = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG", ".aif": "AIFF",
               ".aiff": "AIFF"}
    for k, suffix in enumerate(AUDIO_SUFFIXES):
        subtype = "VORBIS" if formats[suffix] == "OGG" else "PCM_16"
        sf.write(rec / f"r{k}{suffix}", pcm_noise(8000, seed=k).T, 8000,
                 format=formats[suffix], subtype=subtype)
    (rec / "notes.txt").write_text("not audio")
    manifest = import_folder(rec, segment_seconds=1.0, valid_fraction=0.0)
    assert [r["id"] for r in manifest] == [f"r{k}/00000" for k in range(len(AUDIO_SUFFIXES))]

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tsmixit.audio import ResampleWarning
from tsmixit.data.manifest import (
    Manifest,
    import_folder,
    import_librimix,
    import_spatialized_wsj0_2mix,
    import_wsj0_2mix,
)
from tsmixit.errors import AudioError, ManifestError


def _sig(frames: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """(C, T) float32 noise, exactly representable in 16-bit PCM."""
    q = np.random.default_rng(seed).integers(-8000, 8000, (channels, frames))
    return (q / 32768).astype(np.float32)


def _write(path: Path, wav: np.ndarray, sr: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav.T, sr, subtype="PCM_16")
    return path


def _wsj_tree(
    root: Path, rate_dir="wav8k", mode="min", sr=8000, channels=1, splits=("tr", "cv", "tt"),
    n=4, with_sources=True,
) -> Path:
    base = root / rate_dir / mode
    for split in splits:
        for k in range(n):
            name = f"{split}_{k:02d}.wav"
            frames = 400 + 10 * k
            _write(base / split / "mix" / name, _sig(frames, channels, seed=k), sr)
            if with_sources:
                for s in ("s1", "s2"):
                    _write(base / split / s / name, _sig(frames, channels, seed=100 + k), sr)
    return base


# ---- format ------------------------------------------------------------------------------


def test_save_load_round_trip_with_relative_paths_and_moved_folder(tmp_path):
    corpus = tmp_path / "corpus"
    mix = _write(corpus / "audio" / "m.wav", _sig(300))
    src = [_write(corpus / "audio" / f"s{k}.wav", _sig(300, seed=k)) for k in (1, 2)]
    row = {"id": "a", "split": "train", "labelled": True, "sample_rate": 8000, "channels": 1,
           "num_frames": 300, "n_speakers": 2, "mixture": str(mix),
           "sources": [str(s) for s in src], "speakers": ["x", "y"]}
    Manifest([row]).save(corpus / "manifest.jsonl")
    stored = json.loads((corpus / "manifest.jsonl").read_text())
    assert stored["mixture"] == "audio/m.wav" and stored["sources"][1] == "audio/s2.wav"
    assert stored["speakers"] == ["x", "y"]  # extra keys are kept
    shutil.move(corpus, tmp_path / "moved")
    loaded = Manifest.load(tmp_path / "moved" / "manifest.jsonl")
    assert loaded.rows[0]["mixture"] == str(tmp_path / "moved" / "audio" / "m.wav")
    np.testing.assert_array_equal(loaded.load_mixture(0), _sig(300))
    np.testing.assert_array_equal(loaded.load_sources(0)[1], _sig(300, seed=2)[0])
    np.testing.assert_array_equal(loaded.load_mixture(0, start=10, frames=5), _sig(300)[:, 10:15])


def test_save_names_files_under_root_relatively_and_the_rest_absolutely(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    inside = _write(run / "corpus" / "m.wav", _sig(300))
    outside = _write(data / "s1.wav", _sig(300, seed=1))
    (run / "linked").symlink_to(data)  # a dataset linked into the run stays relative
    row = {"id": "a", "split": "train", "labelled": True, "sample_rate": 8000, "channels": 1,
           "num_frames": 300, "n_speakers": 2, "mixture": str(inside),
           "sources": [str(outside), str(run / "linked" / "s1.wav")]}
    Manifest([row]).save(run / "label" / "manifest.jsonl", root=run)
    Manifest([row]).save(run / "label" / "alone.jsonl")
    stored = json.loads((run / "label" / "manifest.jsonl").read_text())
    assert stored["mixture"] == "../corpus/m.wav"
    assert stored["sources"] == [str(outside), "../linked/s1.wav"]
    alone = json.loads((run / "label" / "alone.jsonl").read_text())
    assert alone["mixture"] == str(inside)  # outside its folder: absolute

    shutil.move(run, tmp_path / "moved")
    loaded = Manifest.load(tmp_path / "moved" / "label" / "manifest.jsonl")
    np.testing.assert_array_equal(loaded.load_mixture(0), _sig(300))


def test_segment_rows_read_mixture_from_start_and_sources_from_sources_start(tmp_path):
    _write(tmp_path / "long.wav", _sig(1000))
    _write(tmp_path / "pseudo.wav", _sig(200, seed=9))
    row = {**_good_row(), "mixture": "long.wav", "start": 600, "num_frames": 200,
           "sources": ["pseudo.wav"], "sources_start": 0}
    manifest = Manifest([row], root=tmp_path)
    np.testing.assert_array_equal(manifest.load_mixture(0), _sig(1000)[:, 600:800])
    np.testing.assert_array_equal(manifest.load_sources(0, allow_unlabelled=True, start=50),
                                  _sig(200, seed=9)[:, 50:])


def _good_row() -> dict:
    return {"id": "a", "split": "train", "labelled": False, "sample_rate": 8000, "channels": 1,
            "num_frames": 10, "n_speakers": None, "mixture": "m.wav", "sources": None}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"split": "dev"}, "split"),
        ({"labelled": "yes"}, "labelled"),
        ({"num_frames": 0}, "num_frames"),
        ({"sample_rate": 8000.5}, "sample_rate"),
        ({"mixture": None}, "mixture"),
        ({"labelled": True}, "labelled"),  # labelled without sources
        ({"sources": []}, "sources"),
        ({"channel_map": [0, 1]}, "channel_map"),
        ({"sources": ["s.wav"], "sources_start": -1}, "sources_start"),
        ({"mixture": None, "parts": [{"audio": "u.flac", "offset": 0, "gain": 1.0,
                                      "role": "voice", "rir": None}]}, "parts[0].role"),
        ({"mixture": None, "parts": [{"audio": "u.flac", "offset": 0, "gain": 1.0,
                                      "role": "source", "rir": 3}]}, "parts[0].rir"),
    ],
)
def test_bad_row_names_manifest_line_and_field(tmp_path, change, field):
    good, bad = _good_row(), {**_good_row(), "id": "b", **change}
    if bad.get("mixture") is None:
        bad.pop("mixture")
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ManifestError) as info:
        Manifest.load(path, check_files=False)
    message = str(info.value)
    assert "bad.jsonl" in message and "line 2" in message and f"'{field}'" in message


def test_manifest_not_json_missing_file_and_duplicate_ids(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_good_row()) + "\n{oops\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl, line 2: not valid JSON"):
        Manifest.load(path)
    path.write_text(json.dumps(_good_row()) + "\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl.*missing, first .*m\.wav"):
        Manifest.load(path)
    with pytest.raises(ManifestError, match="appears twice"):
        Manifest([_good_row(), _good_row()])
    with pytest.raises(ManifestError, match="nowhere.jsonl: manifest not found"):
        Manifest.load(tmp_path / "nowhere.jsonl")


def test_manifest_sample_rate_disagreeing_with_file_is_refused(tmp_path):
    _write(tmp_path / "m.wav", _sig(10), sr=16000)
    manifest = Manifest([_good_row()], root=tmp_path)
    with pytest.raises(AudioError, match=r"m\.wav: sample rate 16000 Hz, expected 8000"):
        manifest.load_mixture(0)


# ---- rendered rows -----------------------------------------------------------------------


def test_rendered_rows_equal_the_hand_computed_sum(tmp_path):
    a, b, n = _sig(50, seed=1)[0], _sig(40, seed=2)[0], _sig(70, seed=3)[0]
    _write(tmp_path / "utt" / "a.flac", a[None])
    _write(tmp_path / "utt" / "b.flac", b[None])
    _write(tmp_path / "utt" / "n.flac", n[None])
    rirs = np.random.default_rng(4).normal(size=(2, 3, 6)).astype(np.float32)  # 2 rooms, 3 mics
    np.savez(tmp_path / "rooms.npz", rirs=rirs)
    T = 60
    parts = [
        {"audio": "utt/a.flac", "offset": 5, "gain": 0.7, "role": "source", "rir": 1},
        {"audio": "utt/b.flac", "offset": -3, "gain": 1.3, "role": "source", "rir": 0},
        {"audio": "utt/n.flac", "offset": 0, "gain": 0.1, "role": "noise", "rir": 1},
    ]
    row = {"id": "r", "split": "test", "labelled": True, "sample_rate": 8000, "channels": 3,
           "num_frames": T, "n_speakers": 2, "parts": parts, "rooms": "rooms.npz"}
    Manifest([row], root=tmp_path).save(tmp_path / "manifest.jsonl")
    manifest = Manifest.load(tmp_path / "manifest.jsonl")

    def image(x, rir, gain, offset):
        out = np.zeros((3, T))
        for c in range(3):
            full = gain * np.convolve(x.astype(np.float64), rirs[rir, c].astype(np.float64))
            for t, v in enumerate(full):
                if 0 <= t + offset < T:
                    out[c, t + offset] = v
        return out

    ia, ib, inoise = image(a, 1, 0.7, 5), image(b, 0, 1.3, -3), image(n, 1, 0.1, 0)
    mixture = manifest.load_mixture(0)
    sources = manifest.load_sources(0)
    assert mixture.shape == (3, T) and mixture.dtype == np.float32
    np.testing.assert_allclose(mixture, ia + ib + inoise, atol=1e-6)
    np.testing.assert_allclose(sources, np.stack([ia[0], ib[0]]), atol=1e-6)
    # A window renders only the input samples that reach it: every window, both ends included,
    # equals the hand-computed sum there, and so do mic 0 alone and the (mixture, sources) pair.
    expected_sources = np.stack([ia[0], ib[0]])
    for start in range(0, T, 7):
        for frames in (1, 6, 13, T - start):
            frames = min(frames, T - start)
            window = slice(start, start + frames)
            np.testing.assert_allclose(manifest.load_mixture(0, start, frames),
                                       (ia + ib + inoise)[:, window], atol=1e-6)
            x0, s = manifest.load_example(0, False, start, frames, reference_only=True)
            np.testing.assert_allclose(x0, (ia + ib + inoise)[:1, window], atol=1e-6)
            np.testing.assert_allclose(s, expected_sources[:, window], atol=1e-6)


def test_rendered_row_without_rir_is_the_same_on_every_microphone(tmp_path):
    a = _sig(30, seed=5)[0]
    _write(tmp_path / "a.flac", a[None])
    row = {"id": "r", "split": "train", "labelled": False, "sample_rate": 8000, "channels": 2,
           "num_frames": 40, "n_speakers": 1, "rooms": None,
           "parts": [{"audio": "a.flac", "offset": 4, "gain": 2.0, "role": "source",
                      "rir": None}]}
    manifest = Manifest([row], root=tmp_path)
    expected = np.zeros(40)
    expected[4:34] = 2.0 * a
    np.testing.assert_allclose(manifest.load_mixture(0), np.stack([expected] * 2), atol=1e-7)
    with pytest.raises(ManifestError, match="unlabelled"):
        manifest.load_sources(0)
    np.testing.assert_allclose(manifest.load_sources(0, allow_unlabelled=True)[0], expected)


def test_rendered_row_with_pseudo_target_files_reads_those_files(tmp_path):
    a = _sig(30, seed=5)
    _write(tmp_path / "a.flac", a)
    targets = [_write(tmp_path / f"pseudo{k}.wav", _sig(30, seed=k)) for k in (7, 8)]
    row = {"id": "r", "split": "train", "labelled": False, "sample_rate": 8000, "channels": 1,
           "num_frames": 30, "n_speakers": 2, "rooms": None,
           "sources": [str(t) for t in targets],
           "parts": [{"audio": "a.flac", "offset": 0, "gain": 1.0, "role": "source",
                      "rir": None}]}
    manifest = Manifest([row], root=tmp_path)
    np.testing.assert_array_equal(manifest.load_mixture(0), a)
    pseudo = np.concatenate([_sig(30, seed=7), _sig(30, seed=8)])  # (2, 30)
    np.testing.assert_array_equal(manifest.load_sources(0, allow_unlabelled=True, start=3),
                                  pseudo[:, 3:])
    # The (mixture, sources) pair too: the pseudo-targets, never the row's own parts.
    mixture, sources = manifest.load_example(0, allow_unlabelled=True, start=3, frames=20)
    np.testing.assert_array_equal(mixture, a[:, 3:23])
    np.testing.assert_array_equal(sources, pseudo[:, 3:23])


def test_select_by_split_and_label():
    rows = [{**_good_row(), "id": str(k), "split": s} for k, s in enumerate("ttv")]
    rows[0] |= {"labelled": True, "sources": ["s.wav"]}
    for row in rows:
        row["split"] = {"t": "train", "v": "valid"}[row["split"]]
    manifest = Manifest(rows)
    assert [r["id"] for r in manifest.select(split="train")] == ["0", "1"]
    assert [r["id"] for r in manifest.select(split="train", labelled=False)] == ["1"]
    with pytest.raises(ManifestError, match="unknown split"):
        manifest.select(split="dev")


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
    np.testing.assert_array_equal(manifest.load_mixture(i), _sig(420, seed=2))
    np.testing.assert_array_equal(manifest.load_sources(i)[1], _sig(420, seed=102)[0])


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
    _write(base / "tr" / "s2" / "stray.wav", _sig(400))
    with pytest.raises(ManifestError, match=r"tr_01\.wav.*stray\.wav"):
        import_wsj0_2mix(base)
    base = _wsj_tree(tmp_path / "b", splits=("tr",))
    _write(base / "tr" / "s1" / "tr_02.wav", _sig(999))
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
    np.testing.assert_array_equal(manifest.load_mixture(1), _sig(410, 4, seed=1)[[2, 0]])
    np.testing.assert_array_equal(manifest.load_sources(1)[0], _sig(410, 4, seed=101)[2])
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
            _write(lib / r, _sig(300 + k, seed=10 * k + j))
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
    np.testing.assert_array_equal(manifest.load_mixture(2), _sig(302, seed=20))
    np.testing.assert_array_equal(manifest.load_sources(2), np.concatenate(
        [_sig(302, seed=21), _sig(302, seed=22)]))
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
    mono = _write(rec / "a.wav", _sig(8000 * 3 + 1000, seed=1))  # 3.125 s at 8 kHz
    _write(rec / "sub" / "b.flac", _sig(16000 * 2, 2, seed=2), sr=16000)  # stereo 16 kHz
    with pytest.warns(ResampleWarning, match=r"1 recording\(s\).*b\.flac"):
        manifest = import_folder(rec, audio_dir=tmp_path / "audio", segment_seconds=1.0,
                                 valid_fraction=0.25, seed=0)
    ids = [r["id"] for r in manifest]
    assert ids == ["a/00000", "a/00001", "a/00002", "sub/b/00000", "sub/b/00001"]
    a_rows = manifest.rows[:3]
    assert all(r["mixture"] == str(mono) for r in a_rows)  # referenced, not copied
    assert [r["start"] for r in a_rows] == [0, 8000, 16000]
    np.testing.assert_array_equal(manifest.load_mixture(1), _sig(25000, seed=1)[:, 8000:16000])
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
    _write(rec / "quiet.wav", np.zeros((1, 8000), np.float32))
    with pytest.raises(AudioError, match="quiet.wav: the recording is silent"):
        import_folder(rec)
    (rec / "quiet.wav").unlink()
    _write(rec / "hi.wav", _sig(16000), sr=16000)
    with pytest.raises(ManifestError, match="hi.wav: needs conversion.*audio_dir"):
        import_folder(rec)
    (rec / "hi.wav").unlink()
    (rec / "broken.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="broken.wav: cannot decode"):
        import_folder(rec)


def test_file_with_unexpected_channel_count_is_refused_on_load(tmp_path):
    _write(tmp_path / "m.wav", _sig(10, channels=2))
    manifest = Manifest([_good_row()], root=tmp_path)
    with pytest.raises(AudioError, match=r"m\.wav: has 2 channel\(s\), expected 1"):
        manifest.load_mixture(0)


def test_wsj0_2mix_single_split_folder_is_a_test_set(tmp_path):
    base = _wsj_tree(tmp_path, splits=("tt",), n=3)
    manifest = import_wsj0_2mix(base / "tt")
    assert [row["split"] for row in manifest.rows] == ["test"] * 3
    assert all(row["labelled"] for row in manifest.rows)
    mix, _ = sf.read(base / "tt" / "mix" / "tt_01.wav", dtype="float32")
    np.testing.assert_allclose(manifest.load_mixture(1)[0], mix)

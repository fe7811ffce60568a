"""tsmixit.data.manifest: the row schema and its checks, load and save, relative paths,
selection, and the loading of file rows."""

import json
import shutil

import numpy as np
import pytest

from conftest import pcm_noise, write_pcm16
from tsmixit.data.manifest import Manifest, pseudo_labelled
from tsmixit.errors import AudioError, ManifestError


def _good_row() -> dict:
    return {"id": "a", "split": "train", "labelled": False, "sample_rate": 8000, "channels": 1,
            "num_frames": 10, "n_speakers": None, "mixture": "m.wav", "sources": None}


# ---- format ------------------------------------------------------------------------------


def test_save_load_round_trip_with_relative_paths_and_moved_folder(tmp_path):
    corpus = tmp_path / "corpus"
    mix = write_pcm16(corpus / "audio" / "m.wav", pcm_noise(300))
    src = [write_pcm16(corpus / "audio" / f"s{k}.wav", pcm_noise(300, seed=k)) for k in (1, 2)]
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
    np.testing.assert_array_equal(loaded.load_mixture(0), pcm_noise(300))
    np.testing.assert_array_equal(loaded.load_sources(0)[1], pcm_noise(300, seed=2)[0])
    np.testing.assert_array_equal(loaded.load_mixture(0, start=10, frames=5),
                                  pcm_noise(300)[:, 10:15])


def test_save_names_files_under_root_relatively_and_the_rest_absolutely(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    inside = write_pcm16(run / "corpus" / "m.wav", pcm_noise(300))
    outside = write_pcm16(data / "s1.wav", pcm_noise(300, seed=1))
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
    np.testing.assert_array_equal(loaded.load_mixture(0), pcm_noise(300))



def test_segment_rows_read_mixture_and_sources_from_start(tmp_path):
    write_pcm16(tmp_path / "long.wav", pcm_noise(1000))
    write_pcm16(tmp_path / "long_source.wav", pcm_noise(1000, seed=9))
    row = {**_good_row(), "mixture": "long.wav", "start": 600, "num_frames": 200,
           "sources": ["long_source.wav"]}
    manifest = Manifest([row], root=tmp_path)
    np.testing.assert_array_equal(manifest.load_mixture(0), pcm_noise(1000)[:, 600:800])
    np.testing.assert_array_equal(manifest.load_sources(0, allow_unlabelled=True, start=50),
                                  pcm_noise(1000, seed=9)[:, 650:800])


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
    write_pcm16(tmp_path / "m.wav", pcm_noise(10), sr=16000)
    manifest = Manifest([_good_row()], root=tmp_path)
    with pytest.raises(AudioError, match=r"m\.wav: sample rate 16000 Hz, expected 8000"):
        manifest.load_mixture(0)


def test_file_with_unexpected_channel_count_is_refused_on_load(tmp_path):
    write_pcm16(tmp_path / "m.wav", pcm_noise(10, channels=2))
    manifest = Manifest([_good_row()], root=tmp_path)
    with pytest.raises(AudioError, match=r"m\.wav: has 2 channel\(s\), expected 1"):
        manifest.load_mixture(0)


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


def test_a_pseudo_labelled_row_reads_the_teachers_outputs_and_hides_true_sources(tmp_path):
    for name in ("long.wav", "s1.wav", "s2.wav", "seg_mix.wav", "p0.wav", "p1.wav"):
        write_pcm16(tmp_path / name, pcm_noise(800, channels=2 if name == "long.wav" else 1))
    segment = {"id": "long#1", "split": "train", "labelled": True, "sample_rate": 8000,
               "channels": 1, "num_frames": 400, "n_speakers": 2,
               "mixture": str(tmp_path / "long.wav"), "start": 400, "channel_map": [1],
               "sources": [str(tmp_path / "s1.wav"), str(tmp_path / "s2.wav")], "speaker": "a"}
    outputs = [str(tmp_path / "p0.wav"), str(tmp_path / "p1.wav")]
    row = pseudo_labelled(segment, outputs, "teacher/checkpoints/best.ckpt", 3,
                          mixture=str(tmp_path / "seg_mix.wav"), channels=1)
    assert row["labelled"] is False and row["sources"] == outputs
    assert row["pseudo_label"] == {"teacher": "teacher/checkpoints/best.ckpt",
                                   "active_outputs": 3}
    assert row["mixture"] == str(tmp_path / "seg_mix.wav")
    assert "start" not in row and "channel_map" not in row and row["speaker"] == "a"
    manifest = Manifest([row])  # a valid row
    np.testing.assert_array_equal(manifest.load_mixture(0)[0],
                                  pcm_noise(800)[0][:400])
    whole = pseudo_labelled({**segment, "start": 0}, outputs, "t.ckpt", 2)
    assert whole["mixture"] == segment["mixture"] and whole["start"] == 0
    assert segment["labelled"] is True  # the input row is not changed

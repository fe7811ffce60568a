"""`tsmixit serve` through Starlette's test client: separation equal to `tsmixit separate`,
the drawings against brute force, the run's results, bad input with the CLI's messages, the
upload limit, path traversal, concurrent uploads, clean-up, and survival of bad requests."""

import io
import json
import re
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from matplotlib import image
from starlette.testclient import TestClient
from torch import nn

from conftest import utterance
from tsmixit.audio import resample
from tsmixit.cli import main
from tsmixit.evaluation.evaluate import example_name
from tsmixit.evaluation.report import write_report
from tsmixit.inference import Separator
from tsmixit.model_files import save_model
from tsmixit.models.conv_tasnet import ConvTasNet
from tsmixit.serve import ServedModel, create_app, load_models
from tsmixit.serve.display import FRAMES_PER_BLOCK, draw, fft_size
from tsmixit.serve.jobs import safe_filename
from tsmixit.training.run_folder import LAYOUT

SR = 8000
CHUNK = ["--chunk-seconds", "1", "--overlap-seconds", "0.25"]


def _mixture(seconds: float, rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """(T, C) two speech-like voices summed; further channels are delayed copies."""
    rng = np.random.default_rng(seed)
    mono = utterance(rng, seconds) + utterance(rng, seconds)  # (T,) at 8 kHz
    if rate != SR:
        mono = resample(mono, SR, rate)
    return np.stack([np.roll(mono, 7 * c) for c in range(channels)], axis=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_model(ConvTasNet.from_preset("tiny", n_sources=2, consistency="uniform"),
               root / "two", SR, {"stage": "student"})
    save_model(ConvTasNet.from_preset("tiny", n_sources=3), root / "three", SR)
    return {"two": root / "two", "three": root / "three"}


def _app(models, tmp_path, **options):
    served = load_models([models["two"], models["three"]], "cpu")
    options = {"chunk_seconds": 1.0, "overlap_seconds": 0.25, "max_upload_mb": 0.5,
               **options}
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return create_app(served, work_dir=work, **options), work


@pytest.fixture()
def client(models, tmp_path):
    app, work = _app(models, tmp_path)
    with TestClient(app) as test_client:
        test_client.work = work
        yield test_client
    assert list(work.iterdir()) == []  # the server's folder is gone after shut-down


def _upload(client, data: bytes, filename: str, model: str = "two") -> dict:
    response = client.post("/api/separate", params={"model": model, "filename": filename},
                           content=data)
    assert response.status_code == 202, response.text
    return response.json()


def _wait(client, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']}")


def _cli_separate(model: Path, folder: Path, name: str, monkeypatch, capsys) -> tuple[int, str]:
    """`tsmixit separate` on folder/name, named as the user types it (relative)."""
    monkeypatch.chdir(folder)
    capsys.readouterr()
    code = main(["separate", "--model", str(model), name, "--out", "cli_out",
                 "--device", "cpu", *CHUNK])
    return code, capsys.readouterr().err


def _job_folders(work: Path) -> list[Path]:
    return [p for root in work.iterdir() for p in root.iterdir()]


# ---- the drawings ------------------------------------------------------------------------


def _brute_peaks(x: np.ndarray, width: int) -> np.ndarray:
    w = min(width, x.size)
    cols = np.arange(x.size) * w // x.size
    return np.array([[x[cols == c].min(), x[cols == c].max()] for c in range(w)])


def _brute_levels(x: np.ndarray, rate: int, width: int) -> np.ndarray:
    n = fft_size(rate)
    hop = n // 4
    window = np.hanning(n + 2)[1:-1]
    padded = np.pad(x, (0, max(0, n - x.size))).astype(np.float64)
    frames = [padded[m:m + n] for m in range(0, padded.size - n + 1, hop)]
    power = np.array([np.abs(np.fft.rfft(f * window)[: n // 2]) ** 2 for f in frames])
    power /= window.sum() ** 2  # (M, N / 2)
    cols = np.arange(len(frames)) * min(width, len(frames)) // len(frames)
    mean = np.array([power[cols == c].mean(axis=0) for c in range(cols.max() + 1)])
    group = max(1, (n // 2) // 256)
    rows = mean.reshape(mean.shape[0], -1, group).mean(axis=2)
    return 10 * np.log10(rows.T + 1e-20)


@pytest.mark.parametrize(("seconds", "rate", "width"),
                         [(0.01, 8000, 800), (10.0, 8000, 300), (1.3, 44100, 800)])
def test_drawing_matches_brute_force_from_file_and_array(tmp_path, seconds, rate, width):
    x = _mixture(seconds, rate, seed=3)[:, 0] if seconds >= 0.1 else (
        np.random.default_rng(0).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1)
    sf.write(tmp_path / "x.wav", x, rate, subtype="FLOAT")
    from_file, from_array = draw(tmp_path / "x.wav", width=width), draw(x, rate, width=width)
    if seconds == 10.0:  # several blocks of the streaming pass
        assert x.size > 2 * FRAMES_PER_BLOCK * fft_size(rate) // 4
    np.testing.assert_array_equal(from_file.peaks, _brute_peaks(x, width))
    np.testing.assert_allclose(from_file.levels, _brute_levels(x, rate, width), atol=1e-3)
    np.testing.assert_array_equal(from_file.levels, from_array.levels)
    assert from_file.png == from_array.png
    picture = image.imread(io.BytesIO(from_file.png))
    assert picture.shape[:2] == from_file.levels.shape
    assert from_file.seconds == pytest.approx(seconds, abs=1 / rate)


def test_a_full_scale_sinusoid_peaks_near_minus_6_db():
    t = np.arange(SR) / SR
    drawing = draw(np.sin(2 * np.pi * 1000 * t).astype(np.float32), SR, width=10)
    row = 1000 * fft_size(SR) // SR  # the 1 kHz bin
    assert drawing.levels[row].mean() == pytest.approx(-6.0, abs=0.1)


def test_uploaded_names_are_reduced_to_a_safe_base_name():
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Users\\me\\talk one.wav") == "talk one.wav"
    assert safe_filename("..") == "recording.wav"
    assert safe_filename(None) == "recording.wav"
    assert safe_filename("a<b>|c.flac") == "a_b_c.flac"
    long = safe_filename("x" * 300 + ".flac")
    assert len(long) == 80 and long.endswith(".flac")


# ---- the page ----------------------------------------------------------------------------


def test_page_and_its_assets_come_from_the_package(client, models):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(r.startswith(("/static/", "#")) for r in refs), refs
    for asset in ("app.js", "style.css", "favicon.svg"):
        body = client.get(f"/static/{asset}")
        assert body.status_code == 200
        text = body.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://|//cdn|@import", text), asset
    info = client.get("/api/info").json()
    assert [(m["id"], m["n_outputs"], m["sample_rate"]) for m in info["models"]] == [
        ("two", 2, SR), ("three", 3, SR)]
    assert info["max_upload_bytes"] == 500_000 and info["run"] is False
    twice = load_models([models["two"], models["two"]], "cpu")
    assert [m.id for m in twice] == ["two", "two-2"]


# ---- separation --------------------------------------------------------------------------


def test_upload_separates_exactly_as_the_cli(client, models, tmp_path, monkeypatch, capsys):
    rate = 16000  # above the model's 8 kHz, two microphones: resampled, microphone 0 fed
    sf.write(tmp_path / "talk.flac", _mixture(3.0, rate, seed=1, channels=2), rate,
             subtype="PCM_24")
    data = (tmp_path / "talk.flac").read_bytes()
    job = _wait(client, _upload(client, data, "talk.flac")["id"])
    assert job["status"] == "done", job["error"]

    code, _ = _cli_separate(models["two"], tmp_path, "talk.flac", monkeypatch, capsys)
    assert code == 0
    [log] = [json.loads(line) for line in (tmp_path / "cli_out" / "separation.jsonl").open()]
    result = job["result"]
    assert (result["sample_rate"], result["channels"], result["chunks"]) == (
        rate, 2, log["chunks"])
    assert log["chunks"] >= 3 and result["seconds"] == pytest.approx(3.0)
    assert result["notes"] == log["notes"]  # named as the CLI names them
    assert "microphone 0" in result["notes"][0]

    keys = [t["key"] for t in job["tracks"]]
    assert keys == ["mixture", "s1", "s2"]
    mixture = client.get(job["tracks"][0]["audio"])
    assert mixture.content == data and mixture.headers["content-type"] == "audio/flac"
    for track, cli_file in zip(job["tracks"][1:], log["outputs"], strict=True):
        response = client.get(track["audio"], params={"download": "1"})
        assert response.headers["content-type"] == "audio/wav"
        assert f'filename="{Path(cli_file).name}"' in response.headers["content-disposition"]
        served, served_rate = sf.read(io.BytesIO(response.content), dtype="float32")
        written, _ = sf.read(cli_file, dtype="float32")
        assert served_rate == rate
        np.testing.assert_array_equal(served, written)
        np.testing.assert_allclose(np.array(track["peaks"]), _brute_peaks(written, 800),
                                   atol=5e-5)
        spectrogram = client.get(track["spectrogram"])
        assert spectrogram.headers["content-type"] == "image/png"
        assert spectrogram.content == draw(cli_file).png

    archive = zipfile.ZipFile(io.BytesIO(client.get(job["zip"]).content))
    assert sorted(archive.namelist()) == ["talk_s1.wav", "talk_s2.wav"]
    for track in job["tracks"][1:]:  # the files served one by one, decoded as the CLI's
        name = f"talk_{track['key']}.wav"
        assert archive.read(name) == client.get(track["audio"]).content
        np.testing.assert_array_equal(sf.read(io.BytesIO(archive.read(name)))[0],
                                      sf.read(tmp_path / "cli_out" / name)[0])


def test_each_model_given_can_be_chosen(client, tmp_path):
    sf.write(tmp_path / "a.wav", _mixture(1.0, SR, seed=2), SR)
    job = _wait(client, _upload(client, (tmp_path / "a.wav").read_bytes(), "a.wav",
                                model="three")["id"])
    assert [t["key"] for t in job["tracks"]] == ["mixture", "s1", "s2", "s3"]
    response = client.post("/api/separate", params={"model": "nine", "filename": "a.wav"},
                           content=b"RIFF")
    assert response.status_code == 404 and "choose one of two, three" in response.json()["error"]


@pytest.mark.parametrize("case", ["silent", "not audio", "too short", "below the model rate"])
def test_bad_audio_is_refused_with_the_cli_message(client, models, tmp_path, monkeypatch,
                                                   capsys, case):
    name = {"silent": "quiet.wav", "not audio": "notes.wav", "too short": "blip.wav",
            "below the model rate": "low.wav"}[case]
    path = tmp_path / name
    if case == "silent":
        sf.write(path, np.zeros(SR, np.float32), SR)
    elif case == "not audio":
        path.write_bytes(b"these are my notes, not a recording\n" * 20)
    elif case == "too short":
        sf.write(path, _mixture(1.0, SR, seed=0)[: SR // 10], SR)
    else:
        sf.write(path, _mixture(1.0, SR, seed=0)[::2], SR // 2)
    job = _wait(client, _upload(client, path.read_bytes(), name)["id"])
    code, stderr = _cli_separate(models["two"], tmp_path, name, monkeypatch, capsys)
    assert code == 1
    [cli_message] = [line.removeprefix("FAILED ") for line in stderr.splitlines()
                     if line.startswith("FAILED ")]
    assert job["status"] == "failed" and job["error"] == cli_message
    assert str(client.work) not in job["error"]  # the server's folders are not shown
    assert job["tracks"] == [] and _job_folders(client.work) == []
    assert client.get("/api/info").status_code == 200


def test_empty_upload_is_refused(client):
    response = client.post("/api/separate", params={"filename": "x.wav"}, content=b"")
    assert response.status_code == 400 and "empty" in response.json()["error"]
    assert _job_folders(client.work) == []


@pytest.mark.parametrize("declared", [True, False])
def test_upload_over_the_limit_is_413_with_a_clear_message(client, declared):
    data = b"\0" * 600_000  # limit: 0.5 MB
    if declared:
        response = client.post("/api/separate", params={"filename": "big.wav"}, content=data)
    else:  # a chunked body: the limit is counted as it arrives
        response = client.post("/api/separate", params={"filename": "big.wav"},
                               content=(data[i:i + 65536] for i in range(0, len(data), 65536)))
    assert response.status_code == 413
    message = response.json()["error"]
    assert message.startswith("big.wav") and "upload limit of 0.5 MB" in message
    assert "--max-upload-mb" in message
    assert "(0.6 MB)" in message
    assert _job_folders(client.work) == []


def test_no_file_outside_the_servers_folders_is_served(client, models, tmp_path):
    secret = "top secret contents"
    (tmp_path / "secret.txt").write_text(secret)
    sf.write(tmp_path / "a.wav", _mixture(1.0, SR, seed=4), SR)
    job = _wait(client, _upload(client, (tmp_path / "a.wav").read_bytes(), "../../a.wav")["id"])
    assert job["filename"] == "a.wav" and job["status"] == "done"
    base = f"/api/jobs/{job['id']}"
    for url in ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
                "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2fpyproject.toml",
                f"{base}/audio/..%2fupload%2fa.wav", f"{base}/audio/%2e%2e",
                f"{base}/audio/upload", f"{base}/spectrogram/..%2fs1",
                f"/api/jobs/..%2f{job['id']}/audio/s1", "/api/jobs/%2e%2e/audio/s1",
                "/api/run/plots/..%2freport.json", "/api/run/examples/..%2f..%2fa/0/mixture.wav",
                f"/static/{tmp_path}/secret.txt", "/static//etc/passwd"]:
        response = client.get(url)
        assert response.status_code == 404, url
        assert secret not in response.text and "[tool." not in response.text, url
        assert "root:" not in response.text, url
    assert client.get(f"{base}/audio/s1").status_code == 200


def test_concurrent_uploads_do_not_mix_their_results(client, models, tmp_path, monkeypatch,
                                                     capsys):
    names = ["first.wav", "second.wav"]
    for seed, name in enumerate(names):
        sf.write(tmp_path / name, _mixture(2.0, SR, seed=10 + seed), SR, subtype="FLOAT")
    jobs: dict[str, dict] = {}

    def post(name: str) -> None:
        jobs[name] = _upload(client, (tmp_path / name).read_bytes(), name)

    threads = [threading.Thread(target=post, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert jobs["first.wav"]["id"] != jobs["second.wav"]["id"]
    done = {name: _wait(client, jobs[name]["id"]) for name in names}
    for name in names:
        code, _ = _cli_separate(models["two"], tmp_path, name, monkeypatch, capsys)
        assert code == 0
        for track in done[name]["tracks"][1:]:
            served, _ = sf.read(io.BytesIO(client.get(track["audio"]).content), dtype="float32")
            written, _ = sf.read(tmp_path / "cli_out" / f"{Path(name).stem}_{track['key']}.wav",
                                 dtype="float32")
            np.testing.assert_array_equal(served, written)
        mixture = client.get(done[name]["tracks"][0]["audio"]).content
        assert mixture == (tmp_path / name).read_bytes()


def test_deleted_and_evicted_jobs_leave_no_files(models, tmp_path):
    app, work = _app(models, tmp_path, keep_jobs=1)
    sf.write(tmp_path / "a.wav", _mixture(1.0, SR, seed=5), SR)
    data = (tmp_path / "a.wav").read_bytes()
    with TestClient(app) as client:
        first = _wait(client, _upload(client, data, "a.wav")["id"])
        second = _wait(client, _upload(client, data, "b.wav")["id"])
        assert first["status"] == second["status"] == "done"
        # keep_jobs=1: the first job and its folder are gone.
        assert client.get(f"/api/jobs/{first['id']}").status_code == 404
        assert [p.name for p in _job_folders(work)] == [second["id"]], _job_folders(work)
        assert client.delete(f"/api/jobs/{second['id']}").json() == {"deleted": second["id"]}
        assert _job_folders(work) == []
        assert client.get(second["tracks"][1]["audio"]).status_code == 404
        third = _upload(client, data, "c.wav")
    assert list(work.iterdir()) == []  # shut down mid-job: cancelled and removed
    assert third["status"] == "queued"


class _Broken(nn.Module):
    """A separator whose forward fails with an unexpected (non-tsmixit) error."""

    def __init__(self) -> None:
        super().__init__()
        self.hparams = {"n_sources": 2, "n_channels": 1}
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the network broke")


def test_the_server_survives_bad_requests_and_failing_models(models, tmp_path, monkeypatch):
    [good] = load_models([models["two"]], "cpu")
    broken = ServedModel("broken", tmp_path / "broken", Separator(_Broken(), SR, {}))
    run = tmp_path / "run"
    _make_run(run)
    app = create_app([good, broken], run_dir=run, work_dir=tmp_path, chunk_seconds=1.0,
                     overlap_seconds=0.25)
    sf.write(tmp_path / "a.wav", _mixture(1.0, SR, seed=6), SR)
    data = (tmp_path / "a.wav").read_bytes()
    with TestClient(app, raise_server_exceptions=False) as client:
        failed = _wait(client, _upload(client, data, "a.wav", model="broken")["id"])
        assert failed["status"] == "failed"
        assert failed["error"].startswith("internal error (RuntimeError: the network broke)")
        for method, url in [("GET", "/api/jobs/nope"), ("DELETE", "/api/jobs/nope"),
                            ("GET", "/api/jobs/nope/all.zip"), ("GET", "/nothing/here"),
                            ("PUT", "/api/separate"), ("GET", "/api/separate"),
                            ("GET", "/api/run/plots/none.png"),
                            ("GET", "/api/run/examples/teacher/0/reference9.wav"),
                            ("GET", "/api/run/examples/teacher/0/mixture.mp3"),
                            ("GET", "/api/run/examples/teacher/7"),
                            ("GET", "/api/run/examples/nobody/0")]:
            response = client.request(method, url)
            assert 400 <= response.status_code < 500, (method, url)
            assert response.json()["error"], (method, url)
        from tsmixit.serve import run_results

        def explode(self):
            raise ValueError("a bug")

        monkeypatch.setattr(run_results.RunResults, "summary", explode)
        response = client.get("/api/run")
        assert response.status_code == 500 and "internal error" in response.json()["error"]
        monkeypatch.undo()
        assert client.get("/api/run").status_code == 200
        job = _wait(client, _upload(client, data, "a.wav", model="two")["id"])
        assert job["status"] == "done"


# ---- the results of a run ----------------------------------------------------------------


#: The test mixtures of `_make_run`: id -> length (samples); each system keeps all three.
MIXTURES = {"m0": SR, "m1": 3 * SR // 4, "mix 2/b": SR // 2}


def _make_run(run: Path, legacy: bool = False) -> None:
    """A run folder with a teacher (M = 4 outputs) and a student (2), their evaluations and
    kept test mixtures (`MIXTURES`, as `evaluate_into_run` lays them out; with `legacy`, the
    one-example layout of earlier versions: EVAL/examples/<system>.npz of the first mixture,
    named by result["example"] only), and its report (written by write_report)."""
    rng = np.random.default_rng(0)
    refs = {row_id: rng.standard_normal((2, n)).astype(np.float32) * 0.1
            for row_id, n in MIXTURES.items()}
    systems = {"teacher": ("teacher", 0, 4, [], 3.0), "student": ("student", 2, 2,
                                                                     ["teacher"], 5.0)}
    for system, (kind, order, n_out, upstream, si) in systems.items():
        (run / system).mkdir(parents=True)
        (run / system / "summary.json").write_text(json.dumps({
            "stage": system, "system": system, "kind": kind, "round": 0, "order": order,
            "labels": "none", "upstream": upstream, "layout": LAYOUT, "train_seconds": 60.0,
            "steps": 10, "labelled_mixtures": 0}))
        (run / system / "metrics.csv").write_text("epoch,step,train_loss,val_loss,"
                                                  "val_si_snri\n0,1,1.0,,\n0,2,,0.5,1.0\n")
        mean = {"si_snri_topk": si, "sdri_topk": si + 0.5, "si_snri_oracle": si + 1.0,
                "sdri_oracle": si + 1.5, "active_outputs": float(n_out),
                "over_separated": float(n_out > 2)}
        per_mixture, examples = [], []
        for i, (row_id, n) in enumerate(MIXTURES.items()):
            path = (Path("examples") / f"{system}.npz" if legacy
                    else Path("examples") / system / example_name(i, row_id))
            if not legacy or i == 0:
                (run / "eval" / path).parent.mkdir(parents=True, exist_ok=True)
                np.savez(run / "eval" / path, id=row_id, sample_rate=SR,
                         mixture=refs[row_id].sum(axis=0), references=refs[row_id],
                         outputs=rng.standard_normal((n_out, n)).astype(np.float32) * 0.05,
                         topk_outputs=np.array([2, 0] if n_out == 4 else [1, 0]),
                         oracle_groups=np.array([1, 0, 0, 1][:n_out]))
                examples.append({"id": row_id, "path": path.as_posix()})
            per_mixture.append({**mean, "id": row_id, "si_snri_topk": si + 0.25 * (i - 1),
                                "si_snri_oracle": si + 1.0 + 0.25 * (i - 1)})
        result = {"system": system, "stage": system, "k": 2, "n_outputs": n_out,
                  "n_channels": 1, "n_mixtures": len(MIXTURES), "per_mixture": per_mixture,
                  "mean": mean, "example": examples[0]}
        if not legacy:
            result["examples"] = examples
        (run / "eval" / f"{system}.json").write_text(json.dumps(result))
    write_report(run)


def _expected_tracks(path: Path) -> dict[str, np.ndarray]:
    """Brute force: the page's tracks of one example file, from its arrays by hand."""
    with np.load(path) as npz:
        mixture, refs, outputs = npz["mixture"], npz["references"], npz["outputs"]
        top, groups = list(npz["topk_outputs"]), list(npz["oracle_groups"])
    tracks = {"mixture": mixture, "reference1": refs[0], "reference2": refs[1],
              "estimate1": outputs[top[0]], "estimate2": outputs[top[1]]}
    if len(outputs) > 2:
        for i in range(2):
            tracks[f"group{i + 1}"] = sum(outputs[m] for m in range(len(outputs))
                                          if groups[m] == i)
        for j in range(len(outputs)):
            if j not in top:
                tracks[f"output{j + 1}"] = outputs[j]
    return tracks


def _check_served_example(client, url: str, path: Path, row_id: str) -> list[str]:
    """Every track of the example at `url` (audio, peaks, spectrogram) against the file's
    arrays; returns the track keys in page order."""
    example = client.get(url).json()
    assert example["id"] == row_id and example["sample_rate"] == SR
    expected = _expected_tracks(path)
    assert {t["key"] for t in example["tracks"]} == set(expected)
    for track in example["tracks"]:
        signal = expected[track["key"]]
        served_wav, rate = sf.read(io.BytesIO(client.get(track["audio"]).content),
                                   dtype="float32")
        assert rate == SR
        np.testing.assert_allclose(served_wav, signal, rtol=0, atol=1e-7)
        np.testing.assert_allclose(np.array(track["peaks"]), _brute_peaks(signal, 800),
                                   rtol=0, atol=5e-5)  # rounded to 1e-4 for the page
        assert track["seconds"] == pytest.approx(signal.size / SR)
        assert client.get(track["spectrogram"]).content == draw(signal, SR).png
    return [t["key"] for t in example["tracks"]]


def test_run_results_table_claims_plots_and_examples(models, tmp_path, monkeypatch):
    from tsmixit.serve import run_results

    monkeypatch.setattr(run_results, "LOADED_EXAMPLES", 2)  # examples are read again
    run = tmp_path / "run"
    _make_run(run)
    report = json.loads((run / "report.json").read_text())
    served = load_models([models["two"]], "cpu")
    with TestClient(create_app(served, run_dir=run, work_dir=tmp_path)) as client:
        assert client.get("/api/info").json()["run"] is True
        results = client.get("/api/run").json()
        assert [r["label"] for r in results["rows"]] == [r["label"] for r in report["rows"]]
        assert [r["si_snri"] for r in results["rows"]] == [3.0, 4.0, 5.0]  # top-2, oracle
        assert results["claims"] == report["claims"]
        assert [p["name"] for p in results["plots"]] == [Path(p).name for p in report["plots"]]
        for plot, path in zip(results["plots"], report["plots"], strict=True):
            assert client.get(plot["url"]).content == (run / path).read_bytes()

        # Every kept mixture, in row order, with each system (table order) and its scores on
        # that mixture from the evaluation's rows.
        assert [m["id"] for m in results["mixtures"]] == list(MIXTURES)
        for i, mixture in enumerate(results["mixtures"]):
            assert [(s["system"], s["label"], s["index"]) for s in mixture["systems"]] == [
                ("teacher", "MixIT teacher (top-2)", i), ("student", "TS-MixIT student", i)]
            for entry in mixture["systems"]:
                result = json.loads((run / "eval" / f"{entry['system']}.json").read_text())
                row = result["per_mixture"][i]
                assert (entry["si_snri_topk"], entry["si_snri_oracle"]) == (
                    row["si_snri_topk"], row["si_snri_oracle"])
                path = run / "eval" / result["examples"][i]["path"]
                keys = _check_served_example(client, entry["url"], path, mixture["id"])
                if entry["system"] == "teacher":
                    assert keys == ["mixture", "reference1", "reference2", "estimate1",
                                    "estimate2", "group1", "group2", "output2", "output4"]
                else:
                    assert keys == ["mixture", "reference1", "reference2", "estimate1",
                                    "estimate2"]
        first = results["mixtures"][0]["systems"][0]  # read again after 5 others
        _check_served_example(client, first["url"],
                              run / "eval" / "examples" / "teacher" / "0_m0.npz", "m0")
        for url in ["/api/run/examples/teacher/3", "/api/run/examples/teacher/-1",
                    "/api/run/examples/teacher/00", "/api/run/examples/label/0",
                    "/api/run/examples/teacher/0/group3.wav"]:
            assert client.get(url).status_code == 404, url
    drawn = []
    monkeypatch.setattr(run_results, "draw", lambda x, rate: drawn.append(x) or draw(x, rate))
    held = run_results.RunResults(run)
    for n in ("0", "1", "2"):
        assert len(held.tracks("teacher", n)["tracks"]) == 9
        held.tracks("student", n)
        # The student's mixture and true sources are the teacher's: drawn once.
        assert len(drawn) == 11 * (int(n) + 1)
    assert len(held._loaded) == 2  # at most LOADED_EXAMPLES examples' arrays are held
    monkeypatch.setattr(run_results, "KEPT_DRAWINGS", 4)
    small = run_results.RunResults(run)
    small.tracks("teacher", "0")
    assert len(small._drawings) == 4  # and at most KEPT_DRAWINGS drawings


def test_a_run_of_the_one_example_layout_is_shown(models, tmp_path):
    run = tmp_path / "run"
    _make_run(run, legacy=True)
    served = load_models([models["two"]], "cpu")
    with TestClient(create_app(served, run_dir=run, work_dir=tmp_path)) as client:
        results = client.get("/api/run").json()
        [mixture] = results["mixtures"]
        assert mixture["id"] == "m0"
        assert [s["system"] for s in mixture["systems"]] == ["teacher", "student"]
        for entry in mixture["systems"]:
            _check_served_example(client, entry["url"],
                                  run / "eval" / "examples" / f"{entry['system']}.npz", "m0")


def test_only_the_example_files_an_evaluation_lists_below_eval_examples_are_served(
        models, tmp_path):
    run = tmp_path / "run"
    _make_run(run)
    outside = run / "student" / "weights.npz"  # an npz of the run, not an example
    outside.write_bytes((run / "eval" / "examples" / "student" / "0_m0.npz").read_bytes())
    result = json.loads((run / "eval" / "student.json").read_text())
    result["examples"] = [{"id": "m0", "path": "../student/weights.npz"},
                          {"id": "x", "path": "examples/../../report.json"},
                          {"id": "y", "path": str(outside)}, {"id": "z"}, "examples/a.npz",
                          result["examples"][1]]
    (run / "eval" / "student.json").write_text(json.dumps(result))
    served = load_models([models["two"]], "cpu")
    with TestClient(create_app(served, run_dir=run, work_dir=tmp_path)) as client:
        results = client.get("/api/run").json()
        student = [(m["id"], s["url"]) for m in results["mixtures"] for s in m["systems"]
                   if s["system"] == "student"]
        assert student == [("m1", "/api/run/examples/student/0")]  # only the listed one left
        for url in ["/api/run/examples/student/1/mixture.wav",
                    "/api/run/examples/student/..%2f..%2fstudent%2fweights/mixture.wav",
                    "/api/run/examples/..%2fstudent/0/mixture.wav",
                    "/api/run/examples/student/0/..%2fmixture.wav",
                    "/api/run/examples/%2e%2e/0/mixture.wav"]:
            assert client.get(url).status_code == 404, url


def test_a_run_without_a_report_is_refused_naming_the_fix(models, tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(Exception, match=r"report\.json: not found; write the report first"):
        create_app(load_models([models["two"]], "cpu"), run_dir=tmp_path / "run")


# ---- the command -------------------------------------------------------------------------


def test_serve_command_binds_loopback_and_defaults_to_the_runs_model(models, tmp_path,
                                                                     monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    run = tmp_path / "run"
    _make_run(run)
    save_model(ConvTasNet.from_preset("tiny", n_sources=2), run / "model", SR)
    assert main(["serve", "--run", str(run), "--device", "cpu", "--max-upload-mb", "3"]) == 0
    [(app, kw)] = calls
    assert (kw["host"], kw["port"]) == ("127.0.0.1", 8000)
    assert "http://127.0.0.1:8000/" in capsys.readouterr().out
    with TestClient(app) as client:
        info = client.get("/api/info").json()
    assert [(m["id"], m["path"]) for m in info["models"]] == [("run/model", str(run / "model"))]
    assert info["max_upload_bytes"] == 3_000_000 and info["run"] is True

    assert main(["serve", "--model", str(tmp_path / "missing"), "--device", "cpu"]) == 2
    assert "missing: does not exist" in capsys.readouterr().err
    assert main(["serve", "--device", "cpu"]) == 2
    assert "pass --model DIR" in capsys.readouterr().err
    assert len(calls) == 1  # no server was started for the refused ones

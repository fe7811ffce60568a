"""The Lightning systems on a tiny synthetic corpus: MixIT loss falls, pseudo-labels are
the teacher's top-k outputs, unlabelled stages never read clean sources, NaN stops
training, and 2-process DDP matches one process."""

import csv
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from tsmixit.data.manifest import Manifest
from tsmixit.errors import CheckpointError, ConfigError, TrainingError
from tsmixit.evaluation.metrics import active_output_count
from tsmixit.models import ConvTasNet
from tsmixit.training import systems
from tsmixit.training.config import load_config
from tsmixit.training.recipe import load_separator, run_recipe

SR = 8000


def _utterance(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A speech-like test signal: a harmonic complex at a random pitch under a syllable-rate
    amplitude envelope (distinct voices separate; nothing here needs real speech)."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(90, 260)
    wave = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 6))
    rate = rng.uniform(2.5, 5.0)
    envelope = np.clip(np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3)), 0, None) ** 0.5
    return (0.3 * wave * envelope / 2.3).astype(np.float32)


def make_corpus(folder: Path, n_train: int = 24, n_valid: int = 4, n_test: int = 4,
                seconds: float = 1.0, channels: int = 1, labelled: int = 6,
                seed: int = 0) -> Path:
    """Rendered rows (the embedded corpus's format) of 2-speaker synthetic mixtures;
    `labelled` training rows keep their labels. Returns the manifest path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utterances").mkdir(exist_ok=True)
    rooms = None
    if channels > 1:
        decay = np.exp(-np.arange(64) / 8.0)
        rirs = rng.standard_normal((8, channels, 64)) * decay * 0.3
        rirs[:, :, 0] += 1.0
        np.savez(folder / "rooms.npz", rirs=rirs.astype(np.float32))
        rooms = "rooms.npz"
    rows = []
    for split, count in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        for i in range(count):
            parts = []
            for s in range(2):
                name = f"utterances/{split}{i:03d}_{s}.wav"
                sf.write(folder / name, _utterance(rng, seconds), SR, subtype="FLOAT")
                parts.append({"audio": name, "offset": int(rng.integers(0, SR // 10)),
                              "gain": float(rng.uniform(0.6, 1.0)), "role": "source",
                              "rir": int(rng.integers(8)) if rooms else None})
            rows.append({"id": f"{split}{i:03d}", "split": split,
                         "labelled": split != "train" or i < labelled, "sample_rate": SR,
                         "channels": channels, "num_frames": int(seconds * SR),
                         "n_speakers": 2, "parts": parts, "rooms": rooms})
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    Manifest.load(path)
    return path


def tiny_overrides(manifest: Path, steps: int = 12, **extra) -> list[str]:
    """A tiny recipe: tiny Conv-TasNet, 0.5 s crops, a dozen steps per stage, CPU."""
    values = {
        "corpus.manifest": str(manifest), "model.preset": "tiny", "train.max_steps": steps,
        "train.val_every": 6, "train.log_every": 1, "data.batch_size": 4,
        "data.segment_seconds": 0.5,
        "train.accelerator": "cpu", "train.devices": 1, "train.progress": False,
        "eval.max_mixtures": 4, **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def read_metrics(folder: Path, column: str) -> list[float]:
    rows = csv.DictReader((folder / "metrics.csv").open())
    return [float(r[column]) for r in rows if r.get(column)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def labelled_run(corpus, tmp_path_factory):
    """Teacher (40 steps), label and student stages, with load_sources refusing every
    training row of the corpus: unlabelled stages must never read clean sources."""
    run = tmp_path_factory.mktemp("run")
    original = Manifest.load_sources
    reads = []

    def guarded(self, i, *args, **kwargs):
        row = self.rows[i]
        if row["split"] == "train" and "pseudo_label" not in row:
            reads.append(row["id"])
            raise AssertionError(f"an unlabelled stage read the sources of {row['id']}")
        return original(self, i, *args, **kwargs)

    config = load_config(None, tiny_overrides(corpus, steps=12,
                                              **{"stages.teacher.max_steps": 40}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Manifest, "load_sources", guarded)
        result = run_recipe(config, run, stages=["teacher", "label", "student"])
    assert reads == []
    return run, result


def test_teacher_mixit_loss_falls(labelled_run):
    run, result = labelled_run
    losses = read_metrics(run / "teacher", "train_loss")
    assert len(losses) == 40
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first - 0.5, (first, last)  # dB of thresholded SNR
    summary = result["stages"]["teacher"]
    assert summary["steps"] == 40
    assert Path(summary["checkpoint"]).name == "best.ckpt"
    assert summary["best_val_si_snri"] == pytest.approx(
        max(read_metrics(run / "teacher", "val_si_snri")), abs=1e-4)


def test_pseudo_labels_are_the_teachers_top_k(labelled_run, corpus):
    run, result = labelled_run
    teacher = load_separator(Path(result["stages"]["teacher"]["checkpoint"]))
    pseudo = Manifest.load(run / "label" / "manifest.jsonl")
    train = Manifest.load(corpus).select(split="train")
    assert [r["id"] for r in pseudo.rows] == [r["id"] for r in train.rows]
    counts = json.loads((run / "label" / "active_outputs.json").read_text())["per_mixture"]
    for i in range(len(train)):
        mixture = torch.from_numpy(train.load_mixture(i))  # (1, T)
        with torch.no_grad():
            est = teacher(mixture).numpy()[0]  # (M, T)
        energy = (est.astype(np.float64) ** 2).sum(axis=-1)
        order = np.argsort(-energy, kind="stable")
        expected = est[order[:2]]  # (k, T)
        got = pseudo.load_sources(i, allow_unlabelled=True)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        share = energy / energy.sum()
        assert counts[train.rows[i]["id"]] == int((10 * np.log10(share) > -20).sum())
        # The student's training pairs: the same mixture, the pseudo-targets as sources.
        np.testing.assert_array_equal(pseudo.load_mixture(i), train.load_mixture(i))
        assert not pseudo.rows[i]["labelled"]


def test_student_learns_from_pseudo_labels(labelled_run):
    run, result = labelled_run
    student = result["stages"]["student"]
    assert student["steps"] == 12 and student["labelled_mixtures"] == 0
    model = load_separator(Path(student["checkpoint"]))
    assert model.n_sources == 2
    losses = read_metrics(run / "student", "train_loss")
    assert np.isfinite(losses).all()


def test_on_the_fly_targets_are_the_frozen_teachers_top_k(monkeypatch):
    """Label mode "fly": the student's loss on a batch is PIT negative SI-SNR against the
    frozen teacher's 2 most energetic outputs of that batch (brute force here, float64)."""
    teacher = ConvTasNet.from_preset("tiny", n_sources=4, consistency="uniform")
    student_hp = ConvTasNet.from_preset("tiny", n_sources=2).hparams
    system = systems.PITSeparator(student_hp, SR, teacher_hparams=teacher.hparams).train()
    system.teacher.load_state_dict(teacher.state_dict())
    monkeypatch.setattr(system, "_train_loss", lambda loss: loss)  # logging needs a Trainer
    mixture = torch.randn(3, 1, 2000)  # (B, C, T)
    loss = system.training_step({"mixture": mixture}, 0)
    loss.backward()
    assert all(p.grad is None for p in system.teacher.parameters())
    assert all(p.grad is not None for p in system.model.parameters())

    def si_snr(e: np.ndarray, r: np.ndarray) -> float:
        e, r = e - e.mean(), r - r.mean()
        target = (e @ r) / (r @ r) * r
        return 10 * np.log10((target @ target) / ((e - target) @ (e - target)))

    with torch.no_grad():
        teacher_out = teacher.eval()(mixture).double().numpy()  # (B, M, T)
        student_out = system(mixture).double().numpy()  # (B, k, T)
    expected = []
    for t_b, s_b in zip(teacher_out, student_out, strict=True):
        targets = t_b[np.argsort(-(t_b ** 2).sum(-1))[:2]]  # (k, T)
        expected.append(-max(np.mean([si_snr(s_b[j], targets[p]) for j, p in enumerate(perm)])
                             for perm in itertools.permutations(range(2))))
    assert loss.item() == pytest.approx(np.mean(expected), abs=1e-3)


def test_labels_on_the_fly_train_on_the_mixtures_labels_on_disk_would(corpus, tmp_path):
    """stages.label.include_labelled and max_mixtures choose the student's mixtures in
    either label mode."""
    overrides = tiny_overrides(corpus, steps=2, **{
        "stages.label.max_mixtures": 5, "stages.label.include_labelled": False})
    for mode in ("disk", "fly"):
        config = load_config(None, overrides + [f"stages.label.mode={mode}"])
        student = run_recipe(config, tmp_path / mode,
                             stages=["teacher", "label", "student"])["stages"]["student"]
        assert student["training_mixtures"] == 5, mode


def test_top_k_and_active_outputs_by_hand():
    est = torch.zeros(1, 4, 8)
    est[0, 0] = 0.01  # energy share ~ -40 dB: inactive
    est[0, 1] = 1.0
    est[0, 2] = 0.5
    est[0, 3] = 2.0
    top = systems.top_k_by_energy(est, 2)
    assert torch.equal(top[0], est[0, [3, 1]])
    assert active_output_count(est, -20.0).tolist() == [3]


def test_oracle_grouping_beats_top_k_on_over_separation():
    """Each source split over two outputs: top-2 keeps halves, oracle grouping rebuilds."""
    g = torch.Generator().manual_seed(0)
    sources = torch.randn(1, 2, 400, generator=g)
    est = torch.cat([0.5 * sources, 0.5 * sources], dim=1)  # (1, 4, T): 0,2 -> s0; 1,3 -> s1
    mixture = sources.sum(dim=1)
    oracle = systems.si_snri_oracle(est, sources, mixture)
    assert oracle.item() > 60.0  # perfect reconstruction (limited by eps only)
    # Top-2 keeps both halves of the louder source: the quieter one gets a wrong estimate.
    top = systems.si_snri_pit(systems.top_k_by_energy(est, 2), sources, mixture)
    assert top.item() < oracle.item() - 20.0


def test_nan_loss_stops_with_the_step(corpus, tmp_path, monkeypatch):
    real = systems.mixit
    calls = []

    def poisoned(est, refs, **kwargs):
        calls.append(1)
        loss, A = real(est, refs, **kwargs)
        return (loss * float("nan"), A) if len(calls) > 3 else (loss, A)

    monkeypatch.setattr(systems, "mixit", poisoned)
    config = load_config(None, tiny_overrides(corpus, steps=10, **{"train.val_every": 50}))
    with pytest.raises(TrainingError, match="at step 3"):
        run_recipe(config, tmp_path, stages=["teacher"])


def test_corrupt_checkpoint_is_reported_with_its_path(corpus, tmp_path):
    config = load_config(None, tiny_overrides(corpus, steps=4))
    run_recipe(config, tmp_path, stages=["teacher"])
    best = tmp_path / "teacher" / "checkpoints" / "best.ckpt"
    best.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(best).replace(".", r"\.")):
        run_recipe(config, tmp_path, stages=["label"])
    # An interrupted stage whose last checkpoint is corrupt: reported before training.
    (tmp_path / "teacher" / "summary.json").unlink()
    last = tmp_path / "teacher" / "checkpoints" / "last.ckpt"
    last.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=str(last).replace(".", r"\.")):
        run_recipe(config, tmp_path, stages=["teacher"])


def _cli(config_path: Path, run: Path, *extra: str, launcher: tuple[str, ...] = (
        "-m", "tsmixit.cli"), env: dict[str, str] | None = None) -> subprocess.Popen:
    """`tsmixit recipe` in a child process (`launcher`: how Python starts the CLI)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.Popen(
        [sys.executable, *launcher, "recipe", "--config", str(config_path),
         "--run-dir", str(run), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def write_config(path: Path, overrides: list[str]) -> Path:
    config = load_config(None, overrides)
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


def test_ddp_two_processes_match_one(corpus, tmp_path):
    """Teacher for 4 steps: 2 CPU processes (DDP, gloo) x batch 2 against 1 process x
    batch 4, the same global batches: the logged (all-reduced) losses agree."""
    common = {"stages.teacher.max_steps": 4, "train.val_every": 50}
    one = write_config(tmp_path / "one.yaml", tiny_overrides(
        corpus, **common, **{"data.batch_size": 4}))
    two = write_config(tmp_path / "two.yaml", tiny_overrides(
        corpus, **common, **{"data.batch_size": 2, "train.devices": 2,
                             "train.strategy": "ddp"}))
    procs = [_cli(one, tmp_path / "run1", "--stages", "teacher"),
             _cli(two, tmp_path / "run2", "--stages", "teacher")]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    single = read_metrics(tmp_path / "run1" / "teacher", "train_loss")
    ddp = read_metrics(tmp_path / "run2" / "teacher", "train_loss")
    assert len(single) == len(ddp) == 4
    np.testing.assert_allclose(ddp, single, rtol=1e-4, atol=1e-4)
    assert single[0] != single[-1]  # it did train


def _rewrite_rows(path: Path, change) -> Path:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        change(row)
    out = path.parent / "changed.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_unusable_corpus_is_refused_before_training(corpus, tmp_path):
    """Problems a late stage would meet are ConfigErrors naming the key, before any work."""
    three = _rewrite_rows(corpus, lambda r: r.update(n_speakers=3) if r["split"] == "test"
                          else None)
    with pytest.raises(ConfigError, match="model.student_outputs"):
        run_recipe(load_config(None, tiny_overrides(three)), tmp_path / "a")
    no_test = _rewrite_rows(corpus, lambda r: r.update(split="valid") if r["split"] == "test"
                            else None)
    with pytest.raises(ConfigError, match="eval.split"):
        run_recipe(load_config(None, tiny_overrides(no_test)), tmp_path / "b")
    for run in ("a", "b"):
        assert not (tmp_path / run / "teacher").exists()


def test_same_seed_same_weights_other_seed_differs(corpus, tmp_path):
    """Deterministic for a seed: two fresh runs of a stage give bit-identical weights."""

    def weights(run: str, seed: int) -> dict:
        config = load_config(None, tiny_overrides(corpus, steps=6, **{"train.seed": seed}))
        run_recipe(config, tmp_path / run, stages=["teacher"])
        ckpt = torch.load(tmp_path / run / "teacher" / "checkpoints" / "last.ckpt",
                          weights_only=True)
        return ckpt["state_dict"]

    a, b, c = weights("a", 0), weights("b", 0), weights("c", 1)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not all(torch.equal(a[name], c[name]) for name in a)

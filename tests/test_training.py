"""The Lightning systems on a tiny synthetic corpus: MixIT loss falls, pseudo-labels are
the teacher's top-k outputs, unlabelled stages never read clean sources, NaN stops
training, and 2-process DDP matches one process."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import RECIPE_SR as SR
from conftest import cli_recipe, make_corpus, read_metrics, tiny_overrides, write_config
from tsmixit import metrics
from tsmixit.data.manifest import Manifest
from tsmixit.errors import CheckpointError, ConfigError, TrainingError
from tsmixit.metrics import active_output_count
from tsmixit.models import ConvTasNet
from tsmixit.recipe import run_recipe
from tsmixit.training import systems
from tsmixit.training.checkpoints import load_separator
from tsmixit.training.config import load_config


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
    top = metrics.top_k_by_energy(est, 2)
    assert torch.equal(top[0], est[0, [3, 1]])
    assert active_output_count(est, -20.0).tolist() == [3]


def test_oracle_grouping_beats_top_k_on_over_separation():
    """Each source split over two outputs: top-2 keeps halves, oracle grouping rebuilds."""
    g = torch.Generator().manual_seed(0)
    sources = torch.randn(1, 2, 400, generator=g)
    est = torch.cat([0.5 * sources, 0.5 * sources], dim=1)  # (1, 4, T): 0,2 -> s0; 1,3 -> s1
    mixture = sources.sum(dim=1)
    oracle = metrics.si_snri_oracle(est, sources, mixture)
    assert oracle.item() > 60.0  # perfect reconstruction (limited by eps only)
    # Top-2 keeps both halves of the louder source: the quieter one gets a wrong estimate.
    top = metrics.si_snri_pit(metrics.top_k_by_energy(est, 2), sources, mixture)
    assert top.item() < oracle.item() - 20.0


def test_nan_loss_stops_with_the_step(corpus, tmp_path, monkeypatch):
    real = systems.MIXIT_LOSSES["exact"]
    calls = []

    def poisoned(est, refs, **kwargs):
        calls.append(1)
        loss, A = real(est, refs, **kwargs)
        return (loss * float("nan"), A) if len(calls) > 3 else (loss, A)

    monkeypatch.setitem(systems.MIXIT_LOSSES, "exact", poisoned)
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


def test_ddp_two_processes_match_one(corpus, tmp_path):
    """Teacher for 4 steps: 2 CPU processes (DDP, gloo) x batch 2 against 1 process x
    batch 4, the same global batches: the logged (all-reduced) losses agree."""
    common = {"stages.teacher.max_steps": 4, "train.val_every": 50}
    one = write_config(tmp_path / "one.yaml", tiny_overrides(
        corpus, **common, **{"data.batch_size": 4}))
    two = write_config(tmp_path / "two.yaml", tiny_overrides(
        corpus, **common, **{"data.batch_size": 2, "train.devices": 2,
                             "train.strategy": "ddp"}))
    procs = [cli_recipe(one, tmp_path / "run1", "--stages", "teacher"),
             cli_recipe(two, tmp_path / "run2", "--stages", "teacher")]
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


@pytest.mark.parametrize("choice", ["exact", "least_squares"])
def test_the_teachers_mixit_loss_is_the_one_the_config_names(choice):
    from tsmixit import losses

    hp = ConvTasNet.from_preset("tiny", n_sources=4).hparams
    teacher = systems.MixITTeacher(hp, SR, mixit=choice)
    g = torch.Generator().manual_seed(3)
    references = torch.randn(2, 2, 800, generator=g)  # (B, 2, T): x1, x2
    mixture = references.sum(dim=1, keepdim=True)  # (B, 1, T): the MoM
    with torch.no_grad():
        est = teacher(mixture)
    expected = {"exact": losses.mixit, "least_squares": losses.mixit_least_squares}[choice]
    loss, _ = teacher.mixit_loss(est, references, snr_max=30.0)
    assert torch.equal(loss, expected(est, references, snr_max=30.0)[0])
    config = load_config(None, ["train.max_steps=5", f"model.mixit={choice}"])
    assert config.model.mixit == choice
    with pytest.raises(ConfigError, match="model.mixit"):
        load_config(None, ["train.max_steps=5", "model.mixit=greedy"])


def test_precision_auto_takes_bf16_only_where_the_cpu_path_exists(monkeypatch):
    from tsmixit.models import _cpu_kernels
    from tsmixit.training.fit import precision

    def config(arch: str, value: str = "auto"):
        return load_config(None, ["train.max_steps=5", "train.accelerator=cpu",
                                  f"model.arch={arch}", "model.preset=tiny",
                                  f"train.precision={value}"])

    monkeypatch.setattr(_cpu_kernels, "bf16_training_available", lambda: True)
    assert precision(config("conv_tasnet")) == "bf16-mixed"
    assert precision(config("dprnn")) == "bf16-mixed"  # plain autocast measured faster
    assert precision(config("sudormrf")) == "32-true"  # bf16 measured slower: exact float32
    assert precision(config("sudormrf", "bf16-mixed")) == "bf16-mixed"  # asked for: as asked
    monkeypatch.setattr(_cpu_kernels, "bf16_training_available", lambda: False)
    assert precision(config("conv_tasnet")) == "32-true"


def test_weight_ema_is_the_average_checkpoints_and_exports_carry(corpus, tmp_path):
    """train.ema_decay = d: after two steps the checkpoint's weights are d w1 + (1 - d) w2,
    w1 from a one-step run of the same seed, w2 the trained weights kept beside them."""
    decay = 0.25

    def teacher(run: str, steps: int) -> tuple[dict, dict]:
        config = load_config(None, tiny_overrides(corpus, steps=steps,
                                                  **{"train.ema_decay": decay}))
        summary = run_recipe(config, tmp_path / run, stages=["teacher"])["stages"]["teacher"]
        ckpt = torch.load(tmp_path / run / "teacher" / "checkpoints" / "last.ckpt",
                          weights_only=True)
        return ckpt, summary

    one, _ = teacher("one", 1)
    two, summary = teacher("two", 2)
    w1 = one["current_model_state"]
    w2 = two["current_model_state"]
    for name, average in two["state_dict"].items():
        torch.testing.assert_close(one["state_dict"][name], w1[name], rtol=0, atol=0)
        torch.testing.assert_close(average, decay * w1[name] + (1 - decay) * w2[name],
                                   rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(w2[n], two["state_dict"][n]) for n in w2)
    exported = load_separator(tmp_path / "two" / summary["checkpoint"]).state_dict()
    for name, value in exported.items():
        assert torch.equal(value, two["state_dict"][systems.MODEL_PREFIX + name])


def test_weight_ema_is_checked_and_off_leaves_fingerprints_alone():
    from tsmixit.training.plan import shared_sections

    with pytest.raises(ConfigError, match="train.ema_decay"):
        load_config(None, ["train.max_steps=5", "train.ema_decay=1.0"])
    off = load_config(None, ["train.max_steps=5"])
    on = load_config(None, ["train.max_steps=5", "train.ema_decay=0.999"])
    assert "ema_decay" not in shared_sections(off, "c")["train"]  # older runs keep stages
    assert shared_sections(on, "c")["train"]["ema_decay"] == 0.999


def test_lightnings_cloud_logger_advert_is_dropped_and_its_other_lines_kept(caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    import tsmixit.training.fit  # noqa: F401  (installs the filter)

    with caplog.at_level("INFO", logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info("💡 Tip: try installing [litlogger](https://pypi.org/project/litlogger/)")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]

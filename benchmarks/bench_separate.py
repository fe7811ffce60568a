"""Speed and memory of `tsmixit separate` on CPU, and separation speed against Asteroid.

1. Against Asteroid's ConvTasNet (``--asteroid-python``, default /tmp/asteroid-venv/bin/python;
   skipped with a message when absent), the ``small`` and ``paper`` presets with the same
   weights on both sides, batch 1, each thread count of ``--threads-list``:
   - forward: one pass over 10 s without gradients (inference mode);
   - file: the whole path on a 60 s file, read, chunked separation and writing the outputs:
     tsmixit's `separate_files` (8 s chunks, 1 s overlap) against Asteroid's
     ``file_separate`` of a ``LambdaOverlapAdd`` over the same 8 s windows and 7 s hop.
   Sides: ``tsmixit`` (float32: TSMIXIT_CPU_BF16=off), ``tsmixit-bf16`` (what `Separator`
   runs by default: the bfloat16 inference path where the CPU has bfloat16 units and it pays,
   else float32; printed) and ``asteroid``. Every side runs in its own fresh subprocess with
   the same thread count, rounds alternate the sides' order so that a shared machine's load
   falls on all alike, and the medians and ratios of one run are printed with the load
   average. Asteroid's weights are tsmixit's, mapped by name; its last block keeps a residual
   convolution that tsmixit drops (unused by the output: H B + B parameters more, printed),
   and a check feeds both the same padded input and prints how far their outputs differ. The
   bfloat16 path's outputs are compared with float32 (SI-SNR in dB) on the 10 s input.
2. Real-time factor (wall seconds / audio seconds) of `separate_files` on a 60 s file for
   the presets with ``--threads`` threads, against a one-pass `Separator.separate` of the same
   file in the same process (the cost of chunk overlap).
3. Peak resident memory (VmHWM of a fresh subprocess) separating a 1-minute and a
   10-minute file: chunked processing keeps it flat whatever the length (target < 2 GB).

Weights are random (seed 0): speed and memory do not depend on training.

    .venv/bin/python benchmarks/bench_separate.py [--presets small paper] [--threads-list 1 2]
        [--rounds 3] [--asteroid-python PATH] [--sides tsmixit tsmixit-bf16 asteroid]
        [--tasks forward file] [--skip-compare] [--skip-rtf] [--skip-rss]

Asteroid runs in its own environment only (see benchmarks/bench_train_step.py for its
installation, plus ``pip install --no-deps julius``: ``file_separate`` imports it even when no
resampling is needed); this file runs there as the Asteroid worker and imports tsmixit only
on the tsmixit side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SR = 8000
N_SOURCES = 2
FORWARD_SECONDS = 10.0
SIDES = ("tsmixit", "tsmixit-bf16", "asteroid")
SHORT = {"tsmixit": "f32", "tsmixit-bf16": "bf16", "asteroid": "ast"}  # ratio labels


def test_signal(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise with a syllable-rate envelope, (T,) float32 at SR; the same on both sides."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2
    return (0.1 * envelope * rng.standard_normal(t.size)).astype(np.float32)


def write_test_file(path: Path, seconds: float, seed: int = 0) -> Path:
    """`test_signal` blocks of 10 s written one by one (bounded memory), 16-bit PCM."""
    with sf.SoundFile(str(path), "w", samplerate=SR, channels=1, subtype="PCM_16") as handle:
        for start in range(0, int(seconds), 10):
            handle.write(test_signal(min(10.0, seconds - start), seed + start))
    return path


def make_model(preset: str, folder: Path) -> Path:
    """tsmixit's model file of `preset` (seed 0) and its state dict as plain tensors for the
    Asteroid worker (``<preset>.pt``)."""
    from tsmixit.model_files import save_model
    from tsmixit.models.conv_tasnet import ConvTasNet

    torch.manual_seed(0)
    model = ConvTasNet.from_preset(preset, n_sources=N_SOURCES)
    torch.save(model.state_dict(), folder / f"{preset}.pt")
    return save_model(model, folder / preset, SR)


# ----------------------------------------------------------------------------- Asteroid


def asteroid_state_dict(ours: dict[str, torch.Tensor], X: int) -> dict[str, torch.Tensor]:
    """tsmixit's Conv-TasNet state dict under Asteroid's ConvTasNet names (``X`` blocks per
    repeat: Asteroid numbers the blocks of all repeats in one sequence)."""
    block_parts = {"in_conv": "shared_block.0", "act_norm1.act": "shared_block.1",
                   "act_norm1.norm": "shared_block.2", "depthwise": "shared_block.3",
                   "act_norm2.act": "shared_block.4", "act_norm2.norm": "shared_block.5",
                   "res_conv": "res_conv", "skip_conv": "skip_conv"}
    fixed = {"encoder.weight": "encoder.filterbank._filters",
             "decoder.weight": "decoder.filterbank._filters",
             "separator.in_norm.weight": "masker.bottleneck.0.gamma",
             "separator.in_norm.bias": "masker.bottleneck.0.beta",
             "separator.bottleneck.weight": "masker.bottleneck.1.weight",
             "separator.bottleneck.bias": "masker.bottleneck.1.bias",
             "separator.out_act.weight": "masker.mask_net.0.weight",
             "separator.mask_conv.weight": "masker.mask_net.1.weight",
             "separator.mask_conv.bias": "masker.mask_net.1.bias"}
    mapped = {}
    for key, value in ours.items():
        if key in fixed:
            mapped[fixed[key]] = value
            continue
        _, _, r, x, rest = key.split(".", 4)  # separator.repeats.r.x.<part>.<param>
        part, param = rest.rsplit(".", 1)
        if part.endswith("norm"):
            param = {"weight": "gamma", "bias": "beta"}[param]
        mapped[f"masker.TCN.{int(r) * X + int(x)}.{block_parts[part]}.{param}"] = value
    return mapped


def asteroid_model(preset_hp: dict, weights: Path) -> torch.nn.Module:
    """Asteroid's ConvTasNet as bench_train_step builds it, with tsmixit's weights; the last
    block's residual convolution keeps Asteroid's initialisation (it feeds nothing)."""
    from bench_train_step import build

    model = build("asteroid", preset_hp, False)
    state = model.state_dict()
    mapped = asteroid_state_dict(torch.load(weights, weights_only=True), preset_hp["X"])
    missing = set(state) - set(mapped)
    last = f"masker.TCN.{preset_hp['R'] * preset_hp['X'] - 1}.res_conv."
    if set(mapped) - set(state) or any(not k.startswith(last) for k in missing):
        raise SystemExit(f"asteroid keys do not match: {sorted(set(mapped) ^ set(state))[:6]}")
    model.load_state_dict({**state, **mapped})
    return model.eval()


# ------------------------------------------------------------------------------ workers


def worker(args: argparse.Namespace) -> None:
    """One side of one configuration in a fresh process: print one JSON line."""
    torch.set_num_threads(args.threads)
    hp = json.loads(args.hparams)
    work = Path(args.work)
    if args.worker == "asteroid":
        model = asteroid_model(hp, work / f"{args.preset}.pt")
        result = {"params": sum(p.numel() for p in model.parameters()), "path": "float32"}
        forward = model
    else:
        from tsmixit.model_files import load_model

        separator = load_model(work / args.preset)
        model = forward = separator.model
        result = {"params": sum(p.numel() for p in model.parameters()), "path": "float32"}
        if args.worker == "tsmixit-bf16":
            from tsmixit.models import _cpu_kernels

            with _cpu_kernels.allow_bf16_inference():
                if _cpu_kernels.bf16_inference(model.hparams["H"]):
                    result["path"] = "bf16"

            def forward(x: torch.Tensor) -> torch.Tensor:  # what Separator runs
                with _cpu_kernels.allow_bf16_inference():
                    return model(x)

    if args.task == "check":  # the same padded input through both: outputs (C, T) saved
        x = torch.from_numpy(test_signal(1.0, seed=7))[None]  # (1, T)
        hop = hp["L"] // 2
        T = x.shape[-1]
        with torch.inference_mode():
            if args.worker == "asteroid":
                out = model(torch.nn.functional.pad(x, (hop, hop + (-T) % hop)))
                out = out[..., hop : hop + T]
            else:
                out = model(x)
        np.save(work / f"check_{args.preset}_{args.worker}.npy", out[0].numpy())
    elif args.task == "forward":
        x = torch.from_numpy(test_signal(FORWARD_SECONDS, seed=3))[None]  # (1, T)
        times = []
        with torch.inference_mode():
            out = forward(x)  # warm-up (allocator, one-time dispatch measurement)
            for _ in range(args.repeats):
                start = time.perf_counter()
                forward(x)
                times.append(time.perf_counter() - start)
        if args.worker == "tsmixit-bf16":
            np.save(work / f"forward_{args.preset}_bf16.npy", out[0].numpy())
        elif args.worker == "tsmixit":
            np.save(work / f"forward_{args.preset}_float32.npy", out[0].numpy())
        result["seconds"] = times
    else:  # the whole path on the file
        audio = work / "talk_60s.wav"
        out_dir = work / f"out_{args.worker}_{args.preset}"
        out_dir.mkdir(exist_ok=True)
        with torch.inference_mode():
            forward(torch.from_numpy(test_signal(1.0))[None])  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            if args.worker == "asteroid":
                from asteroid.dsp.overlap_add import LambdaOverlapAdd
                from asteroid.separate import file_separate

                ola = LambdaOverlapAdd(model, N_SOURCES, int(args.chunk * SR),
                                       int((args.chunk - args.overlap) * SR), window="hann",
                                       reorder_chunks=True)
                file_separate(ola, str(audio), output_dir=str(out_dir), force_overwrite=True)
                n_samples = sf.info(str(audio)).frames
                hop = int((args.chunk - args.overlap) * SR)
                chunks = (n_samples + int(args.chunk * SR)) // hop + 1  # its unfold's count
            else:
                from tsmixit.inference import separate_files

                [r] = separate_files(separator, [audio], out_dir, chunk_seconds=args.chunk,
                                     overlap_seconds=args.overlap, progress=False)
                if r["error"]:
                    raise SystemExit(r["error"])
                chunks = r["chunks"]
            times.append(time.perf_counter() - start)
        result.update(seconds=times, chunks=chunks)
    print(json.dumps(result))


def run_side(python: str, side: str, preset: str, hp: dict, task: str, threads: int,
             repeats: int, work: Path, chunk: float, overlap: float) -> dict:
    env = dict(os.environ)
    if side == "tsmixit":
        env["TSMIXIT_CPU_BF16"] = "off"
    cmd = [python, __file__, "--worker", side, "--preset", preset, "--hparams", json.dumps(hp),
           "--task", task, "--threads", str(threads), "--repeats", str(repeats), "--work",
           str(work), "--chunk", str(chunk), "--overlap", str(overlap)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def si_snr_db(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """SI-SNR in dB of each row of est (C, T) against ref (C, T)."""
    est = est - est.mean(-1, keepdims=True)
    ref = ref - ref.mean(-1, keepdims=True)
    target = (est * ref).sum(-1, keepdims=True) / (ref * ref).sum(-1, keepdims=True) * ref
    return 10 * np.log10((target**2).sum(-1) / ((est - target) ** 2).sum(-1))


def compare_asteroid(args: argparse.Namespace, work: Path) -> None:
    """Section 1: the sides of ``args.sides`` in alternating rounds, medians and ratios."""
    from tsmixit.models.conv_tasnet import PRESETS

    python = args.asteroid_python
    sides = [s for s in SIDES if s in args.sides]
    if "asteroid" in sides and (not python or not Path(python).exists()):
        print(f"\n[asteroid] no interpreter at {python!r}: Asteroid is left out (pass "
              "--asteroid-python PATH; see benchmarks/bench_train_step.py to install it)")
        sides.remove("asteroid")
    if not sides:
        return
    write_test_file(work / "talk_60s.wav", args.seconds)
    print(f"\n1. {', '.join(sides)} (Asteroid: {python}), same weights, batch 1; a fresh "
          f"process per side and round, {args.rounds} alternating rounds, medians; load "
          f"average {load_average()} at the start")
    for preset in args.presets:
        make_model(preset, work)
        if "asteroid" in sides:
            for side in ("tsmixit", "asteroid"):
                run_side(python if side == "asteroid" else sys.executable, side, preset,
                         PRESETS[preset], "check", 1, 0, work, args.chunk, args.overlap)
            ours = np.load(work / f"check_{preset}_tsmixit.npy")
            theirs = np.load(work / f"check_{preset}_asteroid.npy")
            diff = float(np.abs(ours - theirs).max() / np.abs(ours).max())
            print(f"{preset}: the same padded input through both, outputs differ by "
                  f"{diff:.1e} of their peak (max |tsmixit - asteroid| / max |tsmixit|)")
    ratios = [(a, b) for a, b in (("asteroid", "tsmixit"), ("asteroid", "tsmixit-bf16"),
                                  ("tsmixit", "tsmixit-bf16")) if a in sides and b in sides]
    tasks = [("forward", f"forward of {FORWARD_SECONDS:g} s", args.forward_repeats),
             ("file", f"separate a {args.seconds:g} s file ({args.chunk:g} s chunks, "
              f"{args.overlap:g} s overlap)", args.file_repeats)]
    for task, title, repeats in [t for t in tasks if t[0] in args.tasks]:
        print(f"\n{title}: median seconds (audio seconds per second); ratio a/b: side a's "
              "seconds over side b's (> 1: b faster; f32 = tsmixit, bf16 = tsmixit-bf16)")
        print(f"{'preset':7} {'threads':>7} "
              + " ".join(f"{s:>15}" for s in sides)
              + "".join(f" {SHORT[a] + '/' + SHORT[b]:>9}" for a, b in ratios)
              + f"  {'bf16 side':9} {'params':>15} {'chunks':>6}  load")
        for preset in args.presets:
            hp = PRESETS[preset]
            for threads in args.threads_list:
                runs: dict[str, list[dict]] = {side: [] for side in sides}
                for round_ in range(args.rounds):
                    for side in sides[:: 1 if round_ % 2 == 0 else -1]:
                        python_side = python if side == "asteroid" else sys.executable
                        runs[side].append(run_side(python_side, side, preset, hp, task,
                                                   threads, repeats, work, args.chunk,
                                                   args.overlap))
                med = {s: statistics.median(t for r in rs for t in r["seconds"])
                       for s, rs in runs.items()}
                audio = FORWARD_SECONDS if task == "forward" else args.seconds
                path = runs["tsmixit-bf16"][0]["path"] if "tsmixit-bf16" in runs else "-"
                params = "/".join(str(runs[s][0]["params"]) for s in sides if s != "tsmixit-bf16")
                chunks = ("/".join(str(runs[s][0]["chunks"]) for s in sides
                                   if s != "tsmixit-bf16") if task == "file" else "")
                print(f"{preset:7} {threads:7d} "
                      + " ".join(f"{med[s]:7.3f} ({audio / med[s]:5.1f})" for s in sides)
                      + "".join(f" {med[a] / med[b]:9.2f}" for a, b in ratios)
                      + f"  {path:9} {params:>15} {chunks:>6}  {load_average()}", flush=True)
                if task == "forward" and path == "bf16" and "tsmixit" in runs:
                    snr = si_snr_db(np.load(work / f"forward_{preset}_bf16.npy"),
                                    np.load(work / f"forward_{preset}_float32.npy"))
                    print(f"{'':15} bf16 side's outputs against float32: SI-SNR "
                          f"{', '.join(f'{v:.1f}' for v in snr)} dB (random weights)")
    print("bf16 side: the path the default dispatch took; params: tsmixit/Asteroid (Asteroid's "
          "extra H B + B: the last block's residual conv, unused by the output); chunks: "
          "tsmixit's / Asteroid's (Asteroid's unfold pads a whole window at both ends)")


# ---------------------------------------------------------------- RTF and peak memory


def rtf(preset: str, audio: Path, work: Path, chunk: float, overlap: float) -> dict:
    from tsmixit.inference import separate_files
    from tsmixit.model_files import load_model

    separator = load_model(make_model(preset, work))
    wav, _ = sf.read(audio, dtype="float32")
    seconds = wav.size / SR
    start = time.perf_counter()
    separator.separate(wav, SR)
    one_pass = time.perf_counter() - start
    [result] = separate_files(separator, [audio], work / f"out_{preset}", chunk_seconds=chunk,
                              overlap_seconds=overlap, progress=False)
    params = sum(p.numel() for p in separator.model.parameters())
    return {"preset": preset, "params_M": params / 1e6, "audio_s": seconds,
            "rtf_chunked": result["rtf"], "rtf_one_pass": one_pass / seconds,
            "chunked_over_one_pass": result["rtf"] / (one_pass / seconds)}


def child(preset: str, audio: str, work: str, threads: int, chunk: float, overlap: float) -> None:
    """Run in a fresh process: separate `audio` and print the peak RSS in MB as JSON."""
    from tsmixit.inference import separate_files
    from tsmixit.model_files import load_model

    torch.set_num_threads(threads)
    separator = load_model(Path(work) / preset)
    [result] = separate_files(separator, [audio], Path(work) / "out_rss", chunk_seconds=chunk,
                              overlap_seconds=overlap, progress=False)
    if result["error"]:
        raise SystemExit(result["error"])
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "rtf": result["rtf"]}))


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: VmHWM on Linux. (ru_maxrss is not used
    there: it keeps the high-water mark of the forked parent across exec.)"""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS: bytes


def peak_rss(preset: str, audio: Path, work: Path, threads: int, chunk: float,
             overlap: float) -> dict:
    make_model(preset, work)
    out = subprocess.run(
        [sys.executable, __file__, "--child", preset, str(audio), str(work), "--threads",
         str(threads), "--chunk", str(chunk), "--overlap", str(overlap)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "paper"])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rss-preset", default="small")
    parser.add_argument("--rss-minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--threads", type=int, default=2, help="threads of sections 2 and 3")
    parser.add_argument("--threads-list", type=int, nargs="+", default=[1, 2],
                        help="thread counts of the Asteroid comparison")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    parser.add_argument("--forward-repeats", type=int, default=3,
                        help="timed forwards per worker")
    parser.add_argument("--file-repeats", type=int, default=1,
                        help="timed file separations per worker")
    parser.add_argument("--chunk", type=float, default=8.0)
    parser.add_argument("--overlap", type=float, default=1.0)
    parser.add_argument("--asteroid-python", default=None,
                        help="interpreter of an environment with asteroid installed (default: "
                        "$ASTEROID_PYTHON, else bench_losses' /tmp/asteroid-venv/bin/python)")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES),
                        help="sides of the comparison (section 1); none: --skip-compare")
    parser.add_argument("--tasks", nargs="+", choices=["forward", "file"],
                        default=["forward", "file"], help="what section 1 times")
    parser.add_argument("--skip-compare", action="store_true", help="skip section 1")
    parser.add_argument("--skip-rtf", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("PRESET", "AUDIO", "WORK"))
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--hparams", help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=["check", "forward", "file"], help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.asteroid_python is None:
        from bench_losses import DEFAULT_ASTEROID_PYTHON  # tsmixit's side only

        args.asteroid_python = os.environ.get("ASTEROID_PYTHON", DEFAULT_ASTEROID_PYTHON)
    if args.child:
        child(*args.child, args.threads, args.chunk, args.overlap)
        return
    print(f"torch {torch.__version__}, {SR} Hz, chunks of {args.chunk} s with {args.overlap} s "
          f"overlap; load average {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_compare:
            compare_asteroid(args, work)
        torch.set_num_threads(args.threads)
        if not args.skip_rtf:
            audio = write_test_file(work / "talk_60s.wav", args.seconds)
            print(f"\n2. real-time factor on a {args.seconds:.0f} s file (lower is faster), "
                  f"{args.threads} threads, the default dispatch")
            print(f"{'preset':8} {'params':>8} {'RTF chunked':>12} {'RTF one pass':>13} "
                  f"{'ratio':>6}")
            for preset in args.presets:
                r = rtf(preset, audio, work, args.chunk, args.overlap)
                print(f"{preset:8} {r['params_M']:7.2f}M {r['rtf_chunked']:12.3f} "
                      f"{r['rtf_one_pass']:13.3f} {r['chunked_over_one_pass']:6.2f}")
        if not args.skip_rss:
            print(f"\n3. peak RSS of a fresh process separating with the {args.rss_preset} "
                  "preset")
            for minutes in args.rss_minutes:
                long_audio = write_test_file(work / f"talk_{minutes:g}min.wav", 60 * minutes,
                                             seed=1)
                r = peak_rss(args.rss_preset, long_audio, work, args.threads, args.chunk,
                             args.overlap)
                print(f"{minutes:5g} min: peak RSS {r['peak_rss_mb']:7.0f} MB, RTF "
                      f"{r['rtf']:.3f}")


if __name__ == "__main__":
    main()

"""Speed and memory of `tsmixit separate` on CPU.

1. Real-time factor (wall seconds / audio seconds) of `separate_files` on a 60 s file for
   the demo ("small") and paper Conv-TasNet presets with 2 threads, against a one-pass
   `Separator.separate` of the same file in the same process (the cost of chunk overlap).
2. Peak resident memory (VmHWM of a fresh subprocess) separating a 1-minute and a
   10-minute file: chunked processing keeps it flat whatever the length (target < 2 GB).

Weights are random: speed and memory do not depend on training.

    .venv/bin/python benchmarks/bench_separate.py [--presets small paper] [--rss-preset small]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from tsmixit.inference import separate_files
from tsmixit.model_files import load_model, save_model
from tsmixit.models.conv_tasnet import ConvTasNet

SR = 8000


def write_test_file(path: Path, seconds: float, seed: int = 0) -> Path:
    """Noise with a syllable-rate envelope, written in 10 s blocks (bounded memory)."""
    rng = np.random.default_rng(seed)
    block = 10 * SR
    with sf.SoundFile(str(path), "w", samplerate=SR, channels=1, subtype="PCM_16") as handle:
        for start in range(0, int(seconds * SR), block):
            n = min(block, int(seconds * SR) - start)
            t = (start + np.arange(n)) / SR
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2
            handle.write((0.1 * envelope * rng.standard_normal(n)).astype(np.float32))
    return path


def make_model(preset: str, folder: Path) -> Path:
    torch.manual_seed(0)
    return save_model(ConvTasNet.from_preset(preset, n_sources=2), folder / preset, SR)


def rtf(preset: str, audio: Path, work: Path, chunk: float, overlap: float) -> dict:
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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=float, default=8.0)
    parser.add_argument("--overlap", type=float, default=1.0)
    parser.add_argument("--child", nargs=3, metavar=("PRESET", "AUDIO", "WORK"))
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.threads, args.chunk, args.overlap)
        return
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {SR} Hz, chunks of "
          f"{args.chunk} s with {args.overlap} s overlap")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        audio = write_test_file(work / "talk_60s.wav", args.seconds)
        print(f"\nreal-time factor on a {args.seconds:.0f} s file (lower is faster)")
        print(f"{'preset':8} {'params':>8} {'RTF chunked':>12} {'RTF one pass':>13} {'ratio':>6}")
        for preset in args.presets:
            r = rtf(preset, audio, work, args.chunk, args.overlap)
            print(f"{preset:8} {r['params_M']:7.2f}M {r['rtf_chunked']:12.3f} "
                  f"{r['rtf_one_pass']:13.3f} {r['chunked_over_one_pass']:6.2f}")
        print(f"\npeak RSS of a fresh process separating with the {args.rss_preset} preset")
        for minutes in args.rss_minutes:
            long_audio = write_test_file(work / f"talk_{minutes:g}min.wav", 60 * minutes, seed=1)
            r = peak_rss(args.rss_preset, long_audio, work, args.threads, args.chunk,
                         args.overlap)
            print(f"{minutes:5g} min: peak RSS {r['peak_rss_mb']:7.0f} MB, RTF {r['rtf']:.3f}")


if __name__ == "__main__":
    main()

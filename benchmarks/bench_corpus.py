"""Time a fresh build of the embedded corpus (default: the `demo` preset, target <= 120 s on
the 2-core reference machine): wall seconds, utterances per second and seconds of speech
synthesised per wall second.

    python benchmarks/bench_corpus.py [--preset demo] [--seed 0] [--keep DIR]
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import soundfile as sf

from tsmixit.corpus import build_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="build here and keep it (must not exist)")
    args = parser.parse_args()

    tmp = None if args.keep else tempfile.mkdtemp(prefix="bench-corpus-")
    out = args.keep or Path(tmp)
    try:
        start = time.perf_counter()
        manifest = build_corpus(out, args.preset, seed=args.seed, progress=False)
        wall = time.perf_counter() - start
        files = sorted((out / "utterances").rglob("*.flac"))
        speech = sum(sf.info(str(f)).duration for f in files)
        rows = sum(1 for _ in manifest.open())
        speakers = json.loads((out / "speakers.json").read_text())
        counts = {split: len(group) for split, group in speakers.items()}
        print(f"preset {args.preset}: {wall:.1f} s wall for {len(files)} utterances "
              f"({speech / 60:.1f} min of speech), speakers {counts}, {rows} mixtures")
        print(f"  {len(files) / wall:.1f} utterances/s, {speech / wall:.1f} s of speech per s "
              f"(whole build, including mixing and writing the manifest)")
    finally:
        if tmp:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

"""Voice transformation with the WORLD vocoder (`pyworld-prebuilt`, MIT; WORLD: modified BSD).

An utterance is analysed into F0 (Harvest, 5 ms frames; DIO was tried and missed the pitch
of the Piper voice by 20 %), the spectral
envelope (CheapTrick) and the aperiodicity (D4C), changed, and resynthesised:
- F0 scaled by `f0_ratio` (the voice's mean pitch; 1 = unchanged);
- the pitch range: log-F0 deviations from the utterance's mean log-F0 scaled by `range_ratio`
  (< 1 flatter, > 1 livelier);
- the spectral envelope warped in frequency by `warp`: the new envelope at f is the old one at
  f / warp, so the formants move up by the factor `warp` (> 1: a shorter vocal tract);
- `breath`: the aperiodicity raised towards 1 (0 = unchanged, 1 = whispery).
Each derived voice draws one transform (`sample_transform`) and keeps it for all its
utterances, with the F0 ratio tied to the warp as in real voices (a higher voice has, on
average, higher formants).
"""

from dataclasses import asdict, dataclass

import numpy as np

from tsmixit.corpus.voices.base import require

FRAME_MS = 5.0
ANALYSIS_RATE = 16000
licence = "pyworld-prebuilt: MIT; WORLD (M. Morise): modified BSD"


@dataclass(frozen=True)
class WorldTransform:
    f0_ratio: float = 1.0
    range_ratio: float = 1.0
    warp: float = 1.0
    breath: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def check() -> None:
    require("pyworld", "pip install 'tsmixit[voices]' (or pyworld-prebuilt)", "world")


def sample_transform(rng: np.random.Generator, gender: str) -> WorldTransform:
    """A random transform: F0 x 0.75-1.35 (male bases a little more up, female more down),
    range x 0.6-1.5, warp = f0_ratio ** 0.3 times 0.95-1.06, breath 0-0.3."""
    lo, hi = (0.8, 1.35) if gender == "m" else (0.72, 1.25)
    f0 = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    warp = float(f0 ** 0.3 * rng.uniform(0.95, 1.06))
    return WorldTransform(round(f0, 4), round(float(np.exp(rng.uniform(np.log(0.6),
                                                                       np.log(1.5)))), 4),
                          round(warp, 4), round(float(rng.uniform(0.0, 0.3)), 4))


def analyse(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(f0 (frames,), spectral envelope (frames, bins), aperiodicity (frames, bins))."""
    import pyworld as pw

    x = np.ascontiguousarray(x, dtype=np.float64)
    f0, t = pw.harvest(x, sample_rate, frame_period=FRAME_MS, f0_floor=50.0, f0_ceil=600.0)
    return f0, pw.cheaptrick(x, f0, t, sample_rate), pw.d4c(x, f0, t, sample_rate)


def warp_envelope(sp: np.ndarray, warp: float) -> np.ndarray:
    """sp'(f) = sp(f / warp) on the linear frequency grid (edges held)."""
    if warp == 1.0:
        return sp
    bins = np.arange(sp.shape[1], dtype=np.float64)
    source = np.clip(bins / warp, 0, sp.shape[1] - 1)
    return np.stack([np.interp(source, bins, frame) for frame in sp])


def transform(x: np.ndarray, sample_rate: int, t: WorldTransform) -> np.ndarray:
    """The utterance with `t` applied, same length and rate, float64. Below 16 kHz the work is
    done at 16 kHz (resampled there and back): at 8 kHz WORLD's analysis and synthesis do not
    even reproduce the input's F0 (measured: an identity transform came back 45 % low)."""
    if sample_rate < ANALYSIS_RATE:
        import soxr

        up = soxr.resample(x, sample_rate, ANALYSIS_RATE, quality="HQ")
        y = soxr.resample(transform(up, ANALYSIS_RATE, t), ANALYSIS_RATE, sample_rate,
                          quality="HQ")
        out = np.zeros(len(x))
        out[: min(len(x), len(y))] = y[: len(x)]
        return out
    import pyworld as pw

    check()
    f0, sp, ap = analyse(x, sample_rate)
    voiced = f0 > 0
    if voiced.any():
        logf = np.log(f0[voiced])
        centre = logf.mean()
        f0 = f0.copy()
        f0[voiced] = np.exp(centre + np.log(t.f0_ratio) + t.range_ratio * (logf - centre))
    sp = warp_envelope(sp, t.warp)
    if t.breath > 0:
        ap = ap + t.breath * (1.0 - ap)
    y = pw.synthesize(f0, np.ascontiguousarray(sp), np.ascontiguousarray(ap), sample_rate,
                      FRAME_MS)
    out = np.zeros(len(x))
    n = min(len(x), len(y))
    out[:n] = y[:n]
    return out


def median_f0(x: np.ndarray, sample_rate: int) -> float:
    """Median F0 (Hz) of the voiced frames, by WORLD's Harvest estimator."""
    import pyworld as pw

    f0, _ = pw.harvest(np.ascontiguousarray(x, dtype=np.float64), sample_rate,
                       frame_period=FRAME_MS, f0_floor=50.0, f0_ceil=600.0)
    return float(np.median(f0[f0 > 0])) if np.any(f0 > 0) else 0.0


def f0_ratio(x: np.ndarray, y: np.ndarray, sample_rate: int) -> float:
    """Median over the frames voiced in both of Harvest's F0 of `y` over that of `x` (frame by
    frame, so that a few octave errors of the estimator do not move it)."""
    import pyworld as pw

    def track(z):
        return pw.harvest(np.ascontiguousarray(z, dtype=np.float64), sample_rate,
                          frame_period=FRAME_MS, f0_floor=50.0, f0_ceil=600.0)[0]

    a, b = track(x), track(y)
    n = min(len(a), len(b))
    both = (a[:n] > 0) & (b[:n] > 0)
    return float(np.median(b[:n][both] / a[:n][both])) if both.any() else 0.0


def pitch_spread(x: np.ndarray, sample_rate: int) -> float:
    """The pitch range: median absolute deviation of log F0 over the voiced frames (Harvest,
    the analysis's own settings)."""
    f0 = analyse_f0(x, sample_rate)
    logf = np.log(f0[f0 > 0])
    return float(np.median(np.abs(logf - np.median(logf)))) if len(logf) else 0.0


def analyse_f0(x: np.ndarray, sample_rate: int) -> np.ndarray:
    import pyworld as pw

    return pw.harvest(np.ascontiguousarray(x, dtype=np.float64), sample_rate,
                      frame_period=FRAME_MS, f0_floor=50.0, f0_ceil=600.0)[0]

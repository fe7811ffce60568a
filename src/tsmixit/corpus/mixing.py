"""Mixtures in the style of WSJ0-2mix, optional additive noise, and their gains.

A mixture draws k speakers of one split (k = 1, 2 or 3 in set proportions), one utterance
each (or, with a set chance, two different utterances of its first speaker: a same-speaker
mixture, separable only by what is said, not by who says it), and relative levels:
k = 2, r ~ U[-R, R] dB with the sources at +r/2 and -r/2 dB; k = 3, each source at
U[-R/2, R/2] dB, so every pair lies within [-R, R] dB. Levels are set on the rendered source
images at microphone 0 over the mixture's frames. Its length is the shortest ("min") or
longest ("max") utterance; all start at frame 0. Noise, when present, is scaled to an SNR
drawn from a range against the sum of the sources at microphone 0. Finally every gain is
scaled so that the peak over the mixture (all channels) and the sources is `peak` (0.9): no
clipping, in float or 16-bit files.
"""

from dataclasses import dataclass

import numpy as np
from scipy.signal import welch

NOISE_TYPES = ("white", "pink", "speech", "babble")


@dataclass(frozen=True)
class MixturePlan:
    """What one mixture is made of, before gains: utterance ids with relative levels (dB),
    length, room and source positions (reverberant corpora), noise clip and SNR (dB)."""

    utterances: tuple[str, ...]
    levels_db: tuple[float, ...]
    num_frames: int
    room: int | None
    positions: tuple[int, ...]
    noise_clip: int | None
    snr_db: float | None


def sample_levels(rng: np.random.Generator, k: int, level_db: float) -> tuple[float, ...]:
    """Relative source levels in dB (see the module docstring)."""
    if k == 1:
        return (0.0,)
    if k == 2:
        r = rng.uniform(-level_db, level_db)
        return (r / 2, -r / 2)
    return tuple(float(v) for v in rng.uniform(-level_db / 2, level_db / 2, size=k))


def sample_plans(
    rng: np.random.Generator,
    utterances_by_speaker: dict[str, list[str]],
    frames: dict[str, int],
    n_mixtures: int,
    proportions: tuple[float, float, float],
    mode: str,
    level_db: float,
    rooms: list[int] | None,
    positions: int,
    noise_clips: int,
    snr_db: tuple[float, float],
    speaker_weights: dict[str, float] | None = None,
    same_speaker: float = 0.0,
) -> list[MixturePlan]:
    """Draw `n_mixtures` plans from the speakers of one split; utterances are reused across
    mixtures, as in WSJ0-2mix. `rooms` lists the room indices of this split (None: dry).
    `speaker_weights` (None: every speaker alike) makes the chance of drawing a speaker
    proportional to its weight, without replacement within a mixture. `same_speaker`: the
    chance that a mixture of k >= 2 gives its second source to its first speaker, with a
    different utterance (0 draws nothing for it: corpora without it keep their bytes)."""
    speakers = sorted(utterances_by_speaker)
    p = np.asarray(proportions, dtype=float) / sum(proportions)
    draw = None
    if speaker_weights is not None:
        w = np.asarray([speaker_weights[s] for s in speakers], dtype=float)  # (n_speakers,)
        draw = w / w.sum()
    plans = []
    for _ in range(n_mixtures):
        k = int(rng.choice(3, p=p)) + 1
        repeat = k >= 2 and same_speaker > 0 and rng.random() < same_speaker
        chosen = rng.choice(len(speakers), size=k - repeat, replace=False, p=draw)
        if repeat:
            chosen = np.insert(chosen, 1, chosen[0])
        utts: list[str] = []
        for s in chosen:
            pool = [u for u in utterances_by_speaker[speakers[s]] if u not in utts]
            if not pool:
                raise ValueError(f"speaker {speakers[s]} has one utterance: a same-speaker "
                                 "mixture needs two")
            utts.append(pool[int(rng.integers(len(pool)))])
        lengths = [frames[u] for u in utts]
        num_frames = min(lengths) if mode == "min" else max(lengths)
        levels = sample_levels(rng, k, level_db)
        room = int(rooms[int(rng.integers(len(rooms)))]) if rooms else None
        n_pos = k + (1 if noise_clips else 0)
        pos = tuple(int(v) for v in rng.choice(positions, size=n_pos, replace=False)) if rooms \
            else ()
        clip = int(rng.integers(noise_clips)) if noise_clips else None
        snr = float(rng.uniform(*snr_db)) if noise_clips else None
        plans.append(MixturePlan(tuple(utts), levels, num_frames, room, pos, clip, snr))
    return plans


def mixture_gains(
    sources: list[np.ndarray],
    levels_db: tuple[float, ...],
    noise: np.ndarray | None = None,
    snr_db: float | None = None,
    peak: float = 0.9,
) -> tuple[list[float], float | None]:
    """Linear gains for unit-gain source images (C, N) and a noise image (C, N).

    a_i = 10^(l_i / 20) / rms(x_i at mic 0); a_n such that
    10 log10(|sum_i a_i x_i|^2 / |a_n n|^2) = snr at mic 0; then every gain times
    peak / max(|mixture|_inf, max_i |a_i x_i at mic 0|_inf).
    """
    gains = []
    for x, level in zip(sources, levels_db, strict=True):
        power = float(np.mean(np.square(x[0], dtype=np.float64)))
        gains.append(10 ** (level / 20) / np.sqrt(power))
    speech = sum(g * x.astype(np.float64) for g, x in zip(gains, sources, strict=True))
    mixture = speech
    noise_gain = None
    if noise is not None:
        p_speech = float(np.mean(np.square(speech[0])))
        p_noise = float(np.mean(np.square(noise[0], dtype=np.float64)))
        noise_gain = np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
        mixture = speech + noise_gain * noise
    top = max(float(np.abs(mixture).max()),
              *(g * float(np.abs(x[0]).max()) for g, x in zip(gains, sources, strict=True)))
    scale = peak / top
    return [float(g * scale) for g in gains], (
        None if noise_gain is None else float(noise_gain * scale))


def speech_spectrum(utterances: list[np.ndarray], sample_rate: int) -> np.ndarray:
    """Long-term average power spectrum of speech (Welch, 512-point frames): (257,)."""
    psd = [welch(u, fs=sample_rate, nperseg=512)[1] for u in utterances]
    return np.mean(psd, axis=0)


def _shaped(rng: np.random.Generator, n: int, gain: np.ndarray) -> np.ndarray:
    """White Gaussian noise shaped in frequency by `gain` on the rfft grid of n points."""
    spectrum = np.fft.rfft(rng.standard_normal(n)) * gain
    return np.fft.irfft(spectrum, n)


def make_noise(kind: str, rng: np.random.Generator, n: int, sample_rate: int,
               speech_psd: np.ndarray | None = None,
               babble_pool: list[np.ndarray] | None = None) -> np.ndarray:
    """A noise clip of n frames, peak 0.9: white; pink (power ~ 1/f); speech-shaped
    (white noise with the long-term speech spectrum `speech_psd`); babble (4-7 held-out
    talkers from `babble_pool`, each a chain of random utterances at equal RMS)."""
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        gain = np.zeros_like(freqs)
        gain[1:] = 1 / np.sqrt(freqs[1:])
        x = _shaped(rng, n, gain)
    elif kind == "speech":
        grid = np.linspace(0, sample_rate / 2, len(speech_psd))
        x = _shaped(rng, n, np.sqrt(np.interp(freqs, grid, speech_psd)))
    elif kind == "babble":
        x = np.zeros(n)
        for _ in range(int(rng.integers(4, 8))):
            talker = []
            while sum(len(t) for t in talker) < n:
                talker.append(babble_pool[int(rng.integers(len(babble_pool)))])
            chain = np.concatenate(talker)
            start = int(rng.integers(len(chain) - n + 1))
            seg = chain[start:start + n]
            x += seg / np.sqrt(np.mean(seg**2))
    else:
        raise ValueError(f"unknown noise type {kind!r}; use one of {NOISE_TYPES}")
    return 0.9 * x / np.abs(x).max()

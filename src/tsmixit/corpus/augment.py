"""Channel and room augmentation of one utterance: what a talker's voice goes through before
it reaches a mixture (a room, a microphone, line noise, a telephone channel and its codec).

The chain, each stage optional (`Channel` records what was drawn):
    room reverberation (rooms.py: one shoebox room, one source, one microphone)
 -> microphone colouring (a low cut and three peaking/shelving biquads, +-8 dB)
 -> additive noise (white or pink) at an SNR against the utterance
 -> telephone band (Butterworth band-pass, 300-3400 Hz by default)
 -> codec: G.711 mu-law or A-law (8 bits), or GSM 06.10 full rate (libsndfile, at 8 kHz)

Applied per utterance (each talker on their own channel, as in a conference bridge or the
real-voice development set, whose voices are GSM-coded each on its own), the mixture stays the
exact sum of its sources: the sources the separator must return are the channel-coloured
utterances. Everything is drawn from the generator it is given: same seed, same bytes.
"""

import io
from dataclasses import asdict, dataclass, field

import numpy as np
import soundfile as sf
import soxr
from scipy.signal import butter, lfilter, sosfilt

from tsmixit.errors import TsmixitError

CODECS = ("none", "mulaw", "alaw", "gsm")


@dataclass(frozen=True)
class Channel:
    """One drawn channel (see the module docstring); None/"none"/() switch a stage off."""

    rt60: float | None = None
    microphone: tuple[tuple[str, float, float, float], ...] = ()  # (kind, f Hz, gain dB, Q)
    low_cut: float | None = None
    noise: str | None = None
    snr_db: float | None = None
    band: tuple[float, float] | None = None
    codec: str = "none"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def telephone_band(x: np.ndarray, sample_rate: int, low: float = 300.0, high: float = 3400.0,
                   order: int = 6) -> np.ndarray:
    """Band-pass `low`-`high` Hz (Butterworth, `order` poles per edge, causal)."""
    high = min(high, 0.45 * sample_rate)
    sos = butter(order, [low, high], btype="bandpass", fs=sample_rate, output="sos")
    return sosfilt(sos, x)


def mu_law_encode(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """G.711-style mu-law: y = sign(x) ln(1 + mu |x|) / ln(1 + mu), quantised to mu + 1
    levels over [-1, 1]; returns the integer codes 0..mu."""
    y = np.sign(x) * np.log1p(mu * np.minimum(np.abs(x), 1.0)) / np.log1p(mu)
    return np.clip(np.round((y + 1) / 2 * mu), 0, mu).astype(np.int64)


def mu_law_decode(codes: np.ndarray, mu: int = 255) -> np.ndarray:
    """Inverse of `mu_law_encode`: x = sign(y) ((1 + mu)^|y| - 1) / mu."""
    y = 2 * codes.astype(np.float64) / mu - 1
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


def a_law(x: np.ndarray, A: float = 87.6, bits: int = 8) -> np.ndarray:
    """A-law compress, quantise to 2**bits levels, expand."""
    a = np.minimum(np.abs(x), 1.0)
    small = a < 1 / A
    y = np.where(small, A * a / (1 + np.log(A)),
                 (1 + np.log(np.maximum(A * a, 1e-12))) / (1 + np.log(A)))
    levels = 2 ** (bits - 1) - 1
    y = np.round(y * levels) / levels
    out = np.where(y < 1 / (1 + np.log(A)), y * (1 + np.log(A)) / A,
                   np.exp(y * (1 + np.log(A)) - 1) / A)
    return np.sign(x) * out


def gsm(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """GSM 06.10 full-rate encode and decode (libsndfile), at 8 kHz; same length and rate."""
    y = x if sample_rate == 8000 else soxr.resample(x, sample_rate, 8000, quality="HQ")
    peak = max(np.abs(y).max(), 1e-9)
    buf = io.BytesIO()
    sf.write(buf, (0.9 * y / peak).astype(np.float32), 8000, format="RAW", subtype="GSM610")
    buf.seek(0)
    z = sf.read(buf, format="RAW", subtype="GSM610", samplerate=8000, channels=1,
                dtype="float64")[0] * peak / 0.9
    if sample_rate != 8000:
        z = soxr.resample(z, 8000, sample_rate, quality="HQ")
    out = np.zeros(len(x))
    out[: min(len(x), len(z))] = z[: len(x)]
    return out


def biquad(kind: str, f: float, gain_db: float, q: float,
           sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """RBJ Audio-EQ-Cookbook biquad (b, a): "peak", "lowshelf" or "highshelf"."""
    A = 10 ** (gain_db / 40)
    w = 2 * np.pi * f / sample_rate
    alpha = np.sin(w) / (2 * q)
    c = np.cos(w)
    if kind == "peak":
        b = [1 + alpha * A, -2 * c, 1 - alpha * A]
        a = [1 + alpha / A, -2 * c, 1 - alpha / A]
    elif kind in ("lowshelf", "highshelf"):
        s = 1 if kind == "lowshelf" else -1
        r = 2 * np.sqrt(A) * alpha
        b = [A * ((A + 1) - s * (A - 1) * c + r), s * 2 * A * ((A - 1) - s * (A + 1) * c),
             A * ((A + 1) - s * (A - 1) * c - r)]
        a = [(A + 1) + s * (A - 1) * c + r, -s * 2 * ((A - 1) + s * (A + 1) * c),
             (A + 1) + s * (A - 1) * c - r]
    else:
        raise TsmixitError(f"unknown filter kind {kind!r}")
    b, a = np.asarray(b), np.asarray(a)
    return b / a[0], a / a[0]


def microphone(x: np.ndarray, sample_rate: int, filters, low_cut: float | None) -> np.ndarray:
    y = x
    if low_cut:
        y = sosfilt(butter(2, low_cut, btype="highpass", fs=sample_rate, output="sos"), y)
    for kind, f, g, q in filters:
        b, a = biquad(kind, f, g, q, sample_rate)
        y = lfilter(b, a, y)
    return y


def noise(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """White or pink (1/f power, by spectral shaping) unit-RMS noise."""
    w = rng.standard_normal(n)
    if kind == "pink":
        spec = np.fft.rfft(w)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        w = np.fft.irfft(spec / np.sqrt(f), n)
    return w / (np.sqrt(np.mean(w**2)) + 1e-12)


def reverberate(x: np.ndarray, sample_rate: int, rt60: float,
                rng: np.random.Generator) -> np.ndarray:
    """The utterance in one random room (rooms.simulate_room, max order 10), same length."""
    from tsmixit.corpus.rooms import image, simulate_room

    rirs, _, _ = simulate_room(rng, sample_rate, 1, 1, (rt60, rt60), 10)
    return image(x, rirs[0], 1, len(x))[0]


def sample_channel(rng: np.random.Generator, sample_rate: int, p_reverb: float = 0.25,
                   p_noise: float = 0.3, p_phone: float = 0.5) -> Channel:
    """A random channel: reverb (RT60 0.2-0.7 s) with p_reverb; microphone colouring always
    (low cut 60-200 Hz half the time, three filters of +-8 dB); white/pink noise at
    15-40 dB SNR with p_noise; with p_phone a telephone band (low 200-400 Hz, high 3000-3600 Hz)
    and a codec (mu-law, A-law or GSM, equally likely)."""
    rt60 = round(float(rng.uniform(0.2, 0.7)), 4) if rng.random() < p_reverb else None
    nyq = sample_rate / 2
    filters = (
        ("lowshelf", round(float(rng.uniform(150, 400)), 2), round(float(rng.uniform(-8, 8)), 2),
         0.7),
        ("peak", round(float(rng.uniform(500, 0.7 * nyq)), 2), round(float(rng.uniform(-8, 8)), 2),
         round(float(rng.uniform(0.7, 2.5)), 3)),
        ("highshelf", round(float(rng.uniform(0.4 * nyq, 0.8 * nyq)), 2),
         round(float(rng.uniform(-8, 6)), 2), 0.7),
    )
    low_cut = round(float(rng.uniform(60, 200)), 2) if rng.random() < 0.5 else None
    kind = snr = None
    if rng.random() < p_noise:
        kind = "white" if rng.random() < 0.5 else "pink"
        snr = round(float(rng.uniform(15, 40)), 3)
    band, codec = None, "none"
    if rng.random() < p_phone:
        band = (round(float(rng.uniform(200, 400)), 2), round(float(rng.uniform(3000, 3600)), 2))
        codec = CODECS[1 + int(rng.integers(3))]
    return Channel(rt60, filters, low_cut, kind, snr, band, codec)


def apply(x: np.ndarray, sample_rate: int, channel: Channel,
          rng: np.random.Generator) -> np.ndarray:
    """`x` through `channel` (float64, same length); level normalised to x's peak before the
    codec so the companders see a full-scale signal."""
    y = np.asarray(x, dtype=np.float64)
    if channel.rt60 is not None:
        y = reverberate(y, sample_rate, channel.rt60, rng)
    y = microphone(y, sample_rate, channel.microphone, channel.low_cut)
    if channel.noise is not None:
        rms = np.sqrt(np.mean(y**2))
        y = y + noise(channel.noise, rng, len(y)) * rms * 10 ** (-channel.snr_db / 20)
    if channel.band is not None:
        y = telephone_band(y, sample_rate, *channel.band)
    y = 0.9 * y / max(np.abs(y).max(), 1e-12)
    if channel.codec == "mulaw":
        y = mu_law_decode(mu_law_encode(y))
    elif channel.codec == "alaw":
        y = a_law(y)
    elif channel.codec == "gsm":
        y = gsm(y, sample_rate)
    elif channel.codec != "none":
        raise TsmixitError(f"unknown codec {channel.codec!r}; use one of {CODECS}")
    return y

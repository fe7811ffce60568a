"""Channel and room augmentation: band limits measured on the spectrum, companders against
their formulas, codec, microphone filters, noise level and colour, reverberation, determinism."""

import numpy as np
import pytest
from scipy.signal import freqz, welch

from tsmixit.corpus import augment
from tsmixit.corpus.augment import Channel


def _band_power(x, sr, lo, hi):
    f, p = welch(x, sr, nperseg=2048)
    return 10 * np.log10(np.mean(p[(f >= lo) & (f <= hi)]))


def _tone(f, sr=8000, seconds=1.0, level=0.3):
    return level * np.sin(2 * np.pi * f * np.arange(int(sr * seconds)) / sr)


def test_telephone_band_limits_on_the_spectrum():
    sr = 16000
    x = np.random.default_rng(0).standard_normal(sr * 4)
    y = augment.telephone_band(x, sr, 300, 3400)
    inside = _band_power(y, sr, 600, 3000)
    assert abs(_band_power(y, sr, 500, 520) - inside) < 1.5  # flat pass band
    assert abs(_band_power(y, sr, 3100, 3150) - inside) < 1.5
    assert inside - _band_power(y, sr, 20, 120) > 30  # 1.3+ octaves below: >= 30 dB down
    assert inside - _band_power(y, sr, 5000, 8000) > 30
    # the -3 dB points sit at the asked edges (Butterworth)
    assert _band_power(y, sr, 290, 310) - inside == pytest.approx(-3, abs=1.5)
    assert _band_power(y, sr, 3390, 3410) - inside == pytest.approx(-3, abs=1.5)


def test_mu_law_against_its_formula():
    x = np.linspace(-1, 1, 2001)
    codes = augment.mu_law_encode(x)
    y = np.sign(x) * np.log(1 + 255 * np.abs(x)) / np.log(256)
    assert np.array_equal(codes, np.round((y + 1) / 2 * 255).astype(int))
    assert codes.min() == 0 and codes.max() == 255 and np.all(np.diff(codes) >= 0)
    decoded = augment.mu_law_decode(codes)
    assert augment.mu_law_decode(np.array([0, 255])) == pytest.approx([-1.0, 1.0])
    c = np.arange(256)
    yc = 2 * c / 255 - 1
    assert np.allclose(augment.mu_law_decode(c), np.sign(yc) * (256 ** np.abs(yc) - 1) / 255)
    # companding: the error grows with the amplitude, small near zero
    err = np.abs(decoded - x)
    assert err[np.abs(x) < 0.01].max() < 0.001 < err[np.abs(x) > 0.9].max() < 0.025  # half a step


@pytest.mark.parametrize("codec", ["mulaw", "alaw"])
def test_8_bit_log_pcm_quantisation_noise(codec):
    """8-bit companded PCM: about 38 dB SNR on a sine at any level between -30 and -3 dBFS."""
    for level in (0.03, 0.3, 0.7):
        x = _tone(440, level=level)
        y = augment.mu_law_decode(augment.mu_law_encode(x)) if codec == "mulaw" \
            else augment.a_law(x)
        snr = 10 * np.log10(np.sum(x**2) / np.sum((y - x) ** 2))
        assert 30 < snr < 45, (level, snr)
    x = _tone(440, level=0.3)
    once = augment.a_law(x)
    assert np.allclose(augment.a_law(once), once)  # quantised values are fixed points


def test_gsm_codes_and_keeps_a_tone():
    x = _tone(1000, level=0.5)
    y = augment.gsm(x, 8000)
    assert len(y) == len(x) and not np.allclose(y, x)
    f, p = welch(y, 8000, nperseg=1024)
    assert abs(f[np.argmax(p)] - 1000) < 10
    assert np.array_equal(y, augment.gsm(x, 8000))
    y16 = augment.gsm(_tone(1000, sr=16000, level=0.5), 16000)
    assert len(y16) == 16000 and _band_power(y16, 16000, 5000, 7000) < _band_power(
        y16, 16000, 900, 1100) - 40  # coded at 8 kHz: nothing left above 4 kHz


def test_microphone_filters_hit_their_gains():
    sr = 8000
    for kind, f, g in (("peak", 1000.0, 6.0), ("peak", 2000.0, -8.0)):
        b, a = augment.biquad(kind, f, g, 1.0, sr)
        _, h = freqz(b, a, worN=[f], fs=sr)
        assert 20 * np.log10(abs(h[0])) == pytest.approx(g, abs=0.01)
    b, a = augment.biquad("lowshelf", 300.0, 6.0, 0.7, sr)
    _, h = freqz(b, a, worN=[10.0, 3500.0], fs=sr)
    assert 20 * np.log10(abs(h)) == pytest.approx([6.0, 0.0], abs=0.1)
    b, a = augment.biquad("highshelf", 2500.0, -6.0, 0.7, sr)
    _, h = freqz(b, a, worN=[20.0, 3990.0], fs=sr)
    assert 20 * np.log10(abs(h)) == pytest.approx([0.0, -6.0], abs=0.2)


def test_noise_level_and_colour():
    rng = np.random.default_rng(1)
    pink = augment.noise("pink", rng, 8000 * 8)
    f, p = welch(pink, 8000, nperseg=4096)
    keep = (f > 50) & (f < 3000)
    slope = np.polyfit(np.log10(f[keep]), np.log10(p[keep]), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.1)  # power 1/f
    assert np.sqrt(np.mean(pink**2)) == pytest.approx(1.0)
    x = _tone(500, seconds=2.0)
    y = augment.apply(x, 8000, Channel(noise="white", snr_db=20.0), np.random.default_rng(2))
    gain = np.dot(y, x) / np.dot(x, x)
    snr = 10 * np.log10(np.sum((gain * x) ** 2) / np.sum((y - gain * x) ** 2))
    assert snr == pytest.approx(20.0, abs=0.3)


def test_reverberation_adds_a_decaying_tail():
    sr = 8000
    x = np.zeros(sr)
    x[0] = 1.0
    y = augment.apply(x, sr, Channel(rt60=0.6), np.random.default_rng(3))
    energy = np.cumsum(y[::-1] ** 2)[::-1]  # Schroeder's backward integral
    early, late = energy[int(0.05 * sr)], energy[int(0.3 * sr)]
    assert energy[0] > early > late > 0
    assert 10 * np.log10(early / late) > 5


def test_channels_are_drawn_and_applied_deterministically():
    x = np.random.default_rng(4).standard_normal(8000) * 0.1
    draws = [augment.sample_channel(np.random.default_rng([5, k]), 8000) for k in range(40)]
    assert draws[0] == augment.sample_channel(np.random.default_rng([5, 0]), 8000)
    assert {d.codec for d in draws} == {"none", "mulaw", "alaw", "gsm"}
    assert any(d.rt60 for d in draws) and any(d.noise for d in draws)
    phone = next(d for d in draws if d.codec == "gsm")
    a = augment.apply(x, 8000, phone, np.random.default_rng(6))
    assert np.array_equal(a, augment.apply(x, 8000, phone, np.random.default_rng(6)))
    assert np.abs(a).max() == pytest.approx(0.9, abs=0.05) and len(a) == len(x)
    with pytest.raises(Exception, match="unknown codec"):
        augment.apply(x, 8000, Channel(codec="opus"), np.random.default_rng(0))

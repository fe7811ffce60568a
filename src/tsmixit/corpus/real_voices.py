"""The real-voice test set: mixtures of two REAL recorded people, in the WSJ0-2mix layout.

A MEASUREMENT set. Nothing in training may read these voices: the training source
`voices.recordings` refuses both packages by name (`DEV_SET_PACKAGES`), no corpus preset
uses this module, and only evaluation (`eval.real_voices`, `tsmixit evaluate --data`) opens
the folder. A model scores here on two people it never heard; tuning a model to this set
spends that.

The voices: Debian packages of telephone-system prompts (raw GSM 06.10, 8 kHz), each read by
one woman:

    es_co     asterisk-prompt-es-co        Colombian Spanish   GPL-2
    armelle   asterisk-prompt-fr-armelle   French              BSD-style, (C) Michel Gutierrez

Set-up (root): `make voices-apt`, or apt-get install -y asterisk-prompt-es-co
asterisk-prompt-fr-armelle. Files are found through each package's dpkg file list.

Mixture i: one prompt of each voice (per voice, a seeded permutation of its prompts, used in
turn), the voice of s1 drawn by a coin. Every prompt is trimmed of leading and trailing
silence (-40 dB re. its peak, `recordings.trim`) and is an utterance only if it then lasts
`MIN_SECONDS` (digits, letters and beeps do not); a corrupt or silent prompt file is an
error naming it. "min" mode: both utterances cut to the shorter; scaled to equal power, then
s1 by +r/2 dB and s2 by -r/2 dB, r uniform in [-5, 5] (the level of s1 re. s2); all three
scaled together to a peak of `PEAK`.

Layout (`tsmixit.data.importers.open_test_set` reads it, its rows "test/<id>"):

    OUT/tt/{mix,s1,s2}/<id>.wav   8 kHz mono 16-bit PCM, <id> = <i:04d>_<voice of s1>_<voice of s2>
    OUT/real_voices.json          the record: format, n, seed, settings, the packages with
                                  their versions and licence lines, every mixture's prompts
                                  and level
    OUT/README.md                 the same in words

16-bit PCM, not float: WSJ0-2mix's own format at half the size, and GSM 06.10 carries 13
bits, so nothing is lost; the mixture is written as the integer sum of the quantised
sources, so mix == s1 + s2 exactly.

The folder is written whole under a temporary name beside OUT, then renamed. Same packages
and seed, same bytes; a folder that already holds the set of the same record is returned at
once, one that holds anything else is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from tsmixit.corpus.voices import recordings
from tsmixit.corpus.voices.base import VoiceSourceError
from tsmixit.errors import ConfigError, ManifestError

#: voice -> (Debian package, gender, language)
VOICES = {
    "es_co": ("asterisk-prompt-es-co", "f", "es-CO"),
    "armelle": ("asterisk-prompt-fr-armelle", "f", "fr-FR"),
}
FORMAT = 1
RECORD = "real_voices.json"
SAMPLE_RATE = 8000
MIN_SECONDS = 1.5
LEVEL_DB = 5.0  # relative level uniform in [-LEVEL_DB, LEVEL_DB]
PEAK = 0.9
GSM_FRAME_BYTES = 33  # one GSM 06.10 frame: 160 samples
_FIX = ("make voices-apt, or (root) apt-get update && apt-get install -y "
        + " ".join(package for package, _, _ in VOICES.values()))


class RealVoicePackagesError(VoiceSourceError):
    """A Debian package of the real-voice test set is not installed."""


def build_real_voice_set(out_dir: str | os.PathLike, n_mixtures: int = 120, seed: int = 3,
                         progress: bool = True) -> Path:
    """Write the real-voice test set of `n_mixtures` mixtures drawn with `seed` into
    `out_dir` (see the module docstring), or find it there; returns `out_dir`.

    RealVoicePackagesError without the two packages; ManifestError when `out_dir` holds
    anything but this set; VoiceSourceError naming a corrupt prompt file; ConfigError for
    n_mixtures < 1.
    """
    out = Path(out_dir)
    if n_mixtures < 1:
        raise ConfigError(f"the real-voice test set needs at least 1 mixture, got {n_mixtures}")
    header = _header(n_mixtures, seed)
    if _holds(out, header):
        return out
    rng = np.random.default_rng(seed)
    prompts = {voice: _prompts(package) for voice, (package, _, _) in VOICES.items()}
    order = {voice: rng.permutation(len(p)) for voice, p in prompts.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed build of this process id
    try:
        for sub in ("mix", "s1", "s2"):
            (tmp / "tt" / sub).mkdir(parents=True)
        mixtures = []
        for i in tqdm(range(n_mixtures), desc="real-voice test set", disable=not progress):
            voices = list(VOICES)[::-1] if rng.random() < 0.5 else list(VOICES)
            level = float(rng.uniform(-LEVEL_DB, LEVEL_DB))
            chosen = [prompts[v][order[v][i % len(order[v])]] for v in voices]
            signals = _mix(chosen[0][1], chosen[1][1], level)
            name = f"{i:04d}_{voices[0]}_{voices[1]}"
            for sub, signal in zip(("mix", "s1", "s2"), signals, strict=True):
                sf.write(tmp / "tt" / sub / f"{name}.wav", signal, SAMPLE_RATE,
                         subtype="PCM_16")
            mixtures.append({"id": name, "s1": voices[0], "s2": voices[1],
                             "prompts": [path for path, _ in chosen],
                             "relative_level_db": round(level, 6),
                             "frames": len(signals[0])})
        record = {**header, "prompts": {v: len(p) for v, p in prompts.items()},
                  "mixtures": mixtures}
        (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True,
                                             ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(record), encoding="utf-8")
        os.replace(tmp, out)  # onto an empty folder too
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _header(n_mixtures: int, seed: int) -> dict[str, Any]:
    """What defines the set (without reading any audio); RealVoicePackagesError first."""
    missing = [package for package, _, _ in VOICES.values()
               if not recordings.listed_files(package, ".gsm")]
    if missing:
        raise RealVoicePackagesError(
            "the real-voice test set needs the Debian packages "
            f"{' and '.join(p for p, _, _ in VOICES.values())}; not installed: "
            f"{', '.join(missing)}; fix: {_FIX}")
    voices = {}
    for voice, (package, gender, language) in VOICES.items():
        copyright_files = recordings.listed_files(package, f"/doc/{package}/copyright")
        if not copyright_files:
            raise VoiceSourceError(f"{package}: its copyright file is missing; fix: "
                                   f"apt-get install --reinstall -y {package}")
        voices[voice] = {"package": package, "version": _version(package), "gender": gender,
                         "language": language, "copyright": copyright_files[0],
                         "licence": licence_lines(Path(copyright_files[0]).read_text(
                             encoding="utf-8", errors="replace"))}
    return {"format": FORMAT, "what": "tsmixit real-voice test set: for measuring only, "
            "never for training", "n_mixtures": n_mixtures, "seed": seed,
            "sample_rate": SAMPLE_RATE, "subtype": "PCM_16", "mode": "min",
            "relative_level_db": [-LEVEL_DB, LEVEL_DB], "trim_db": -40.0,
            "min_prompt_seconds": MIN_SECONDS, "peak": PEAK, "voices": voices}


def _holds(out: Path, header: dict[str, Any]) -> bool:
    """True when `out` holds the complete set of `header`, False when it is absent or an
    empty folder; ManifestError when it holds anything else."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    fix = "remove it (it is rebuilt) or choose another folder"
    record_path = out / RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ManifestError(f"{out}: holds something other than a real-voice test set (no "
                            f"readable {RECORD}); {fix}") from None
    changed = sorted(k for k in header if record.get(k) != header[k])
    if changed:
        raise ManifestError(f"{out}: holds another real-voice test set ({RECORD} differs in "
                            f"{', '.join(changed)}); {fix}")
    for mixture in record.get("mixtures", []):
        for sub in ("mix", "s1", "s2"):
            if not (out / "tt" / sub / f"{mixture['id']}.wav").is_file():
                raise ManifestError(f"{out}: the real-voice test set is incomplete "
                                    f"(tt/{sub}/{mixture['id']}.wav is missing); {fix}")
    return True


def licence_lines(text: str) -> list[str]:
    """The licence lines of a Debian copyright file: those naming the upstream author, the
    voice actor or a copyright holder, then the first paragraph granting redistribution
    (joined into one line)."""
    people = re.compile(r"^(Upstream Author|Voice actor|Copyright holder|Copyright \(C\))")
    lines = [line.strip() for line in text.splitlines() if people.match(line.strip())]
    for paragraph in re.split(r"\n\s*\n", text):
        if "redistribut" in paragraph.lower():
            return [*lines, " ".join(paragraph.split())]
    return lines


def _version(package: str) -> str:
    """The installed version of a Debian package, from dpkg's status file."""
    status = recordings.DPKG_INFO.parent / "status"
    found = re.search(rf"^Package: {re.escape(package)}\n(?:.+\n)*?Version: (.+)$",
                      status.read_text(), re.MULTILINE)
    if found is None:
        raise RealVoicePackagesError(f"{status}: no version of {package}; fix: {_FIX}")
    return found.group(1)


def _prompts(package: str) -> list[tuple[str, np.ndarray]]:
    """(path, trimmed float64 audio) of every prompt of `package` at least MIN_SECONDS
    long after trimming, in path order."""
    out = []
    for path in recordings.listed_files(package, ".gsm") or []:
        x = recordings.trim(_decode(path, package))
        if len(x) >= MIN_SECONDS * SAMPLE_RATE:
            out.append((path, x))
    if not out:
        raise VoiceSourceError(f"{package}: no prompt lasts {MIN_SECONDS} s; fix: apt-get "
                               f"install --reinstall -y {package}")
    return out


def _decode(path: str, package: str) -> np.ndarray:
    """A raw GSM 06.10 prompt file as float64 samples; VoiceSourceError naming a corrupt,
    empty or silent one."""
    fix = f"the package is damaged: apt-get install --reinstall -y {package}"
    size = Path(path).stat().st_size
    if size == 0 or size % GSM_FRAME_BYTES:
        raise VoiceSourceError(f"{path}: {size} bytes, not whole GSM 06.10 frames of "
                               f"{GSM_FRAME_BYTES} bytes; {fix}")
    try:
        x, _ = sf.read(path, format="RAW", subtype="GSM610", samplerate=SAMPLE_RATE,
                       channels=1, dtype="float64")
    except RuntimeError as error:
        raise VoiceSourceError(f"{path}: not readable as GSM 06.10 ({error}); {fix}") from None
    if not np.any(x):
        raise VoiceSourceError(f"{path}: silent; {fix}")
    return x


def _mix(x1: np.ndarray, x2: np.ndarray, level_db: float
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mix, s1, s2) as int16: both cut to the shorter, equal power, then s1 `level_db`
    above s2, peak PEAK; mix is the sum of the quantised s1 and s2."""
    frames = min(len(x1), len(x2))
    s1, s2 = (x[:frames] / np.sqrt(np.mean(x[:frames] ** 2)) for x in (x1, x2))
    s1, s2 = s1 * 10 ** (level_db / 40), s2 * 10 ** (-level_db / 40)
    gain = PEAK * 32768 / max(np.abs(s1).max(), np.abs(s2).max(), np.abs(s1 + s2).max())
    q1, q2 = (np.round(s * gain).astype(np.int16) for s in (s1, s2))
    return q1 + q2, q1, q2  # |q1 + q2| <= PEAK * 32768 + 1: no overflow


def _readme(record: dict[str, Any]) -> str:
    lines = [
        "# Real-voice test set (tsmixit)", "",
        f"{record['n_mixtures']} mixtures of two real recorded people (seed {record['seed']}), "
        "WSJ0-2mix layout: tt/mix, tt/s1, tt/s2, 8 kHz mono 16-bit PCM, min mode, level of "
        "s1 re. s2 uniform in [-5, 5] dB, one telephone prompt per source, the two sources "
        "of a mixture from different voices. Every mixture's prompts and level: "
        f"{RECORD}.", "",
        "For measuring only: never train on these voices.", "",
        "    tsmixit evaluate --model MODEL --data THIS_FOLDER", "",
        "## Voices", "",
    ]
    for voice, info in record["voices"].items():
        lines.append(f"- {voice}: Debian package {info['package']} {info['version']} "
                     f"({info['language']}, {info['gender']}; {record['prompts'][voice]} "
                     f"prompts of at least {MIN_SECONDS} s), from {info['copyright']}:")
        lines += [f"  - {line}" for line in info["licence"]]
    return "\n".join(lines) + "\n"

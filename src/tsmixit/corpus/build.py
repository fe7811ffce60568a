"""Build the embedded offline corpus: speakers -> utterances (FLAC) -> mixture table.

Layout of a corpus folder:
    corpus.json            preset, seed and resolved settings (a resumed build must match)
    speakers.json          every speaker: split, gender, accent, rate, pitch, voice variant;
                           realistic voices: source, base voice, settings, WORLD transform
    sources.json           realistic corpora: each source's licence, versions, base-voice splits
    utterances/<spk>/<utt>.flac   16-bit mono speech, peak 0.9, at the corpus sample rate
    noise/<split>_<j>_<kind>.flac noise clips (when noise is on)
    rooms.npz              the RIR bank (when reverberation is on), see `rooms.py`
    manifest.jsonl         one rendered row per mixture (tsmixit.data.manifest), written last
    wav8k/min/{tr,cv,tt}/{mix,s1,s2,...}/<id>.wav   only with materialize=True

Utterances are stored once and mixed on the fly; a build interrupted before the manifest
exists resumes: speakers whose utterance files all exist are not synthesised again, and
the rooms and noise files already written are reused. Every random draw comes from a
generator seeded by (seed, stage, split, ...), so the same seed gives the same bytes, and
changing the number of mixtures leaves the speakers and utterances unchanged.
"""

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from tsmixit.audio import write_audio
from tsmixit.corpus.grammar import SentenceGrammar
from tsmixit.corpus.mixing import (
    NOISE_TYPES,
    MixturePlan,
    make_noise,
    mixture_gains,
    sample_plans,
    speech_spectrum,
)
from tsmixit.corpus.rooms import RoomBank, image, make_room_bank
from tsmixit.corpus.voices import (
    Speaker,
    Utterance,
    Voice,
    jittered,
    sample_speaker,
    speaker_is_done,
    synthesize_all,
)
from tsmixit.corpus.voices import realistic as _realistic
from tsmixit.data.manifest import Manifest
from tsmixit.errors import ConfigError
from tsmixit.files import atomic_path, write_json_atomic

SPLITS = ("train", "valid", "test")
_PREFIX = {"train": "tr", "valid": "cv", "test": "tt", "babble": "bb"}
_STAGE = {"speakers": 1, "texts": 2, "rooms": 3, "noise": 4, "plans": 5, "labels": 6}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CorpusConfig:
    """Settings of a synthetic corpus (every field can be overridden by name).

    Counts per split are (train, valid, test); utterances are per speaker (train, valid/test);
    level_db is R of the relative level U[-R, R] dB; speaker_proportions are the shares of
    1-, 2- and 3-speaker mixtures; noise lists the noise types (empty: clean), snr_db the
    SNR range; rooms counts rooms per split; positions the source positions per room;
    rt60 the nominal RT60 range (s); max_order caps the image-source order; peak the mixture
    peak after normalisation; workers the synthesis processes (not part of the bytes);
    same_speaker the chance that a mixture of two or more gives its second source to its
    first speaker (another utterance; mixing.py).
    """

    sample_rate: int = 8000
    speakers: tuple[int, int, int] = (60, 10, 10)
    utterances: tuple[int, int] = (20, 15)
    words: tuple[int, int] = (6, 14)
    mixtures: tuple[int, int, int] = (5000, 300, 300)
    mode: str = "min"
    level_db: float = 5.0
    speaker_proportions: tuple[float, float, float] = (0.0, 1.0, 0.0)
    labelled_fraction: float = 0.1
    noise: tuple[str, ...] = ()
    snr_db: tuple[float, float] = (5.0, 20.0)
    noise_clips: int = 24
    babble_speakers: int = 6
    reverb: bool = False
    n_mics: int = 1
    rooms: tuple[int, int, int] = (24, 6, 6)
    positions: int = 4
    rt60: tuple[float, float] = (0.2, 0.6)
    max_order: int = 20
    peak: float = 0.9
    workers: int = 2
    # realistic voices (voices/realistic.py): voices per split of each source (piper, kokoro,
    # recordings, flite, festival, kokoro_js, syllables), splits by BASE voice; piper has one
    # base voice (train only).
    # world: every voice but the first of each base gets a WORLD transform; augment: share of
    # their utterances sent through a random channel (augment.py). cache_dir: where slow
    # synthesis is cached ("" = the user cache, ~/.cache/tsmixit/voices); like workers, not
    # part of the bytes. realistic_share: the chance that a mixture's source is drawn from
    # the realistic voices rather than the eSpeak speakers (0: every speaker alike).
    piper: int = 0
    kokoro: tuple[int, int, int] = (0, 0, 0)
    recordings: tuple[int, int, int] = (0, 0, 0)
    flite: tuple[int, int, int] = (0, 0, 0)
    festival: tuple[int, int, int] = (0, 0, 0)
    kokoro_js: tuple[int, int, int] = (0, 0, 0)
    syllables: tuple[int, int, int] = (0, 0, 0)
    world: bool = True
    augment: float = 0.0
    realistic_share: float = 0.0
    same_speaker: float = 0.0
    cache_dir: str = ""

    def fingerprint(self) -> dict[str, Any]:
        """The settings that determine the corpus bytes (everything but `workers` and
        `cache_dir`; the settings added after format 1 only where they differ from their
        defaults, so corpora without them keep the fingerprint they always had)."""
        out = {k: (list(v) if isinstance(v, tuple) else v)
               for k, v in dataclasses.asdict(self).items()}
        del out["workers"], out["cache_dir"]
        defaults = CorpusConfig()
        for name in _LATER_FIELDS:
            if getattr(self, name) == getattr(defaults, name):
                del out[name]
        return out

    def has_realistic_voices(self) -> bool:
        return bool(_realistic.counts(self))


_LATER_FIELDS = ("piper", "kokoro", "recordings", "flite", "festival", "world", "augment",
                 "realistic_share", "same_speaker", "kokoro_js", "syllables")


PRESETS: dict[str, dict[str, Any]] = {
    # unit tests: 6/2/2 speakers, 40 short mixtures, a few seconds
    "tiny": dict(speakers=(6, 2, 2), utterances=(4, 4), words=(3, 6), mixtures=(24, 8, 8),
                 labelled_fraction=0.25, noise_clips=4, babble_speakers=2, rooms=(3, 1, 1),
                 max_order=8),
    # the CPU demo: >= 60/10/10 speakers and 5,000 training mixtures, built in about a minute
    "demo": {},
    # reverberant 4-microphone demo, smaller
    "demo-spatial": dict(speakers=(40, 8, 8), utterances=(15, 12), mixtures=(2000, 200, 200),
                         reverb=True, n_mics=4, rooms=(24, 6, 6)),
    # the pretraining corpus (configs/pretrain.yaml): every voice source, 8 kHz. Train: 200
    # eSpeak speakers, 40 Piper variants, 36 Kokoro voices (3 base voices and their blends),
    # 48 voices of 3 real recorded people, 24 Flite voices of 2 ARCTIC speakers, 36 Festival
    # voices of 9 people, WORLD transforms; 30 % of the realistic utterances through a random
    # channel (room, microphone, noise, telephone band and codec); three sources in four
    # drawn from the realistic voices (uniform draws gave mostly eSpeak pairs, and a model
    # that separates eSpeak from anything but two realistic voices poorly). Valid and test
    # hold out one Kokoro, one recorded, one Flite and one Festival base voice each. Hours of
    # synthesis on one core (resumable, cached); needs the Debian packages of voices/recordings.py,
    # flite.py and festival.py (make voices-apt).
    "pretrain": dict(speakers=(200, 20, 20), mixtures=(20000, 500, 500), piper=40,
                     kokoro=(36, 3, 3), recordings=(48, 4, 4), flite=(24, 2, 2),
                     festival=(36, 2, 2), augment=0.3,
                     realistic_share=0.75, labelled_fraction=1.0),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Bring an override to the type of its default; ConfigError naming it otherwise."""

    def bad(what: str) -> ConfigError:
        return ConfigError(f"corpus setting '{name}': expected {what}, got {value!r}.")

    if name == "noise":
        if value is None or value is False:
            return ()
        if value is True:
            return NOISE_TYPES
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(v in NOISE_TYPES for v in value):
            raise bad(f"noise types from {list(NOISE_TYPES)} (or true/false)")
        return tuple(dict.fromkeys(value))
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or len(value) != len(default):
            raise bad(f"a list of {len(default)} values")
        return tuple(_coerce(name, v, d) for v, d in zip(value, default, strict=True))
    if isinstance(default, int):
        if not _is_int(value):
            raise bad("an integer")
        return int(value)
    if isinstance(default, float):
        if not _is_number(value):
            raise bad("a number")
        return float(value)
    if not isinstance(value, str):
        raise bad("a string")
    return value


def make_config(preset: str = "demo", **overrides: Any) -> CorpusConfig:
    """The preset's settings with `overrides` applied, validated (ConfigError names the
    setting and what it must be)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown corpus preset {preset!r}; use one of {sorted(PRESETS)}.")
    defaults = CorpusConfig()
    fields = {f.name for f in dataclasses.fields(CorpusConfig)}
    values = dict(PRESETS[preset])
    for name, value in overrides.items():
        if name not in fields:
            raise ConfigError(
                f"unknown corpus setting '{name}'; known settings: {', '.join(sorted(fields))}."
            )
        values[name] = _coerce(name, value, getattr(defaults, name))
    config = CorpusConfig(**values)
    _validate(config)
    return config


def _validate(c: CorpusConfig) -> None:
    def check(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"corpus setting '{name}' = {getattr(c, name)!r}: {what}.")

    check(c.sample_rate in (8000, 16000), "sample_rate", "must be 8000 or 16000")
    max_k = max(k + 1 for k, p in enumerate(c.speaker_proportions) if p > 0) \
        if sum(c.speaker_proportions) > 0 else 0
    check(all(p >= 0 for p in c.speaker_proportions) and max_k > 0, "speaker_proportions",
          "must be three shares (1, 2, 3 speakers) >= 0, not all zero")
    check(all(n >= 0 for n in c.speakers), "speakers", "must be three counts >= 0")
    check(all(n >= 1 for n in c.utterances), "utterances", "must be >= 1 per speaker")
    check(1 <= c.words[0] <= c.words[1], "words", "must be (min, max) with 1 <= min <= max")
    check(all(n >= 1 for n in c.mixtures), "mixtures", "must be >= 1 per split")
    check(c.mode in ("min", "max"), "mode", "must be 'min' or 'max'")
    check(0 <= c.level_db <= 30, "level_db", "must lie in [0, 30] dB")
    check(0 <= c.labelled_fraction <= 1, "labelled_fraction", "must lie in [0, 1]")
    check(c.snr_db[0] <= c.snr_db[1], "snr_db", "must be (low, high) with low <= high")
    check(c.noise_clips >= 1, "noise_clips", "must be >= 1")
    check(c.babble_speakers >= 1 or "babble" not in c.noise, "babble_speakers",
          "must be >= 1 for babble noise")
    check(1 <= c.n_mics <= 8, "n_mics", "must lie in 1..8")
    check(0 <= c.realistic_share <= 1, "realistic_share", "must lie in [0, 1]")
    check(c.realistic_share == 0 or c.has_realistic_voices(), "realistic_share",
          "needs realistic voices (" + ", ".join(_realistic.ORDER) + ")")
    check(0 <= c.same_speaker <= 1, "same_speaker", "must lie in [0, 1]")
    check(c.same_speaker == 0 or min(c.utterances) >= 2, "same_speaker",
          "needs utterances >= 2 per speaker (two different ones per same-speaker mixture)")
    check(c.reverb or c.n_mics == 1, "n_mics",
          "more than one microphone needs reverb=true (rooms give the spatial cues)")
    check(all(n >= 1 for n in c.rooms), "rooms", "must be >= 1 per split")
    check(c.positions >= max_k + (1 if c.noise else 0), "positions",
          "must cover every talker of a mixture (plus one for the noise source)")
    check(0.05 <= c.rt60[0] <= c.rt60[1] <= 2.0, "rt60",
          "must be (low, high) seconds with 0.05 <= low <= high <= 2")
    check(1 <= c.max_order <= 60, "max_order", "must lie in 1..60")
    check(0 < c.peak <= 1, "peak", "must lie in (0, 1]")
    check(c.workers >= 1, "workers", "must be >= 1")
    check(c.piper >= 0, "piper", "must be >= 0 voices")
    for source in _realistic.ORDER[1:]:
        check(all(n >= 0 for n in getattr(c, source)), source, "must be three voice counts >= 0")
    check(0 <= c.augment <= 1, "augment", "must lie in [0, 1]")
    for k, split in enumerate(SPLITS):
        voices = c.speakers[k] + sum(n[k] for n in _realistic.counts(c).values())
        check(voices >= max(max_k, 1), "speakers",
              f"split {split} needs at least {max_k} speaker(s) (eSpeak + realistic voices)")


def _speaker_weights(share: float, espeak: list[Speaker], realistic: list[Voice]
                     ) -> dict[str, float] | None:
    """Draw weights giving the realistic voices together `share` of the draws, the eSpeak
    speakers the rest (None: every speaker alike, when share is 0 or a group is empty)."""
    if share == 0 or not espeak or not realistic:
        return None
    return {**{s.id: (1 - share) / len(espeak) for s in espeak},
            **{v.id: share / len(realistic) for v in realistic}}


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _speakers(config: CorpusConfig, seed: int) -> dict[str, list[Speaker]]:
    """Speakers per split (+ held-out babble talkers), half of each gender, split-disjoint."""
    counts = dict(zip(SPLITS, config.speakers, strict=True))
    if "babble" in config.noise or "speech" in config.noise:
        counts["babble"] = config.babble_speakers
    out = {}
    for k, (split, n) in enumerate(counts.items()):
        rng = _rng(seed, _STAGE["speakers"], k)
        genders = rng.permutation(["m" if i % 2 == 0 else "f" for i in range(n)])
        out[split] = [sample_speaker(rng, f"{_PREFIX[split]}{i:03d}{g}", split, str(g))
                      for i, g in enumerate(genders)]
    return out


def _utterances(config: CorpusConfig, seed: int, out_dir: Path, split_index: int,
                index: int, speaker: Speaker) -> list[Utterance]:
    rng = _rng(seed, _STAGE["texts"], split_index, index)
    grammar = SentenceGrammar(rng)
    n = config.utterances[0 if speaker.split == "train" else 1]
    utts = []
    for j in range(n):
        uid = f"{speaker.id}_{j:03d}"
        text = grammar.sentence(*config.words)
        utts.append(Utterance(uid, text, *jittered(speaker, rng),
                              path=str(out_dir / "utterances" / speaker.id / f"{uid}.flac")))
    return utts


def _read_int16(path: str) -> np.ndarray:
    return sf.read(path, dtype="int16")[0]


def _as_float(x: np.ndarray) -> np.ndarray:
    """int16 -> float64 exactly as soundfile decodes 16-bit files (x / 32768)."""
    return x.astype(np.float64) / 32768.0


def _check_folder(out_dir: Path, record: dict[str, Any]) -> bool:
    """True if the corpus is complete; ConfigError if the folder holds another corpus."""
    path = out_dir / "corpus.json"
    if not path.exists():
        if out_dir.exists() and (out_dir / "manifest.jsonl").exists():
            raise ConfigError(f"{out_dir}: holds a manifest but no corpus.json; choose an "
                              "empty --out folder for a new corpus.")
        return False
    old = json.loads(path.read_text())
    if old != record:
        keys = sorted(k for k in set(old.get("config", {})) | set(record["config"])
                      if old.get("config", {}).get(k) != record["config"].get(k))
        what = ", ".join(keys) or "preset/seed/format"
        raise ConfigError(
            f"{path}: this folder holds a corpus built with other settings ({what}); "
            "choose another --out folder, or delete this one to rebuild."
        )
    return (out_dir / "manifest.jsonl").exists()


def build_corpus(
    out_dir: str | os.PathLike,
    preset: str = "demo",
    seed: int = 0,
    progress: bool = True,
    materialize: bool = False,
    **overrides: Any,
) -> Path:
    """Build (or resume, or find complete) the synthetic corpus in `out_dir`.

    preset: "tiny" (tests, seconds), "demo" (60/10/10 speakers, 5,000/300/300 mixtures, 8 kHz),
    "demo-spatial" (reverberant, 4 microphones) or "pretrain" (every voice source, see
    PRESETS). overrides: any `CorpusConfig` field,
    e.g. sample_rate=16000, n_mics=2, reverb=True, noise=["white", "babble"],
    labelled_fraction=0.2, mixtures=(1000, 100, 100). materialize: also write WSJ0-2mix-style
    wav folders. Returns the path of manifest.jsonl.
    """
    config = make_config(preset, **overrides)
    out_dir = Path(out_dir)
    record = {"format": FORMAT_VERSION, "preset": preset, "seed": int(seed),
              "config": config.fingerprint()}
    manifest_path = out_dir / "manifest.jsonl"
    if not _check_folder(out_dir, record):
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / "corpus.json", record)
        rows = _build_rows(config, seed, out_dir, progress)
        Manifest(rows, root=out_dir, name=str(manifest_path)).save(manifest_path)
    if materialize:
        materialize_wavs(manifest_path, config, progress)
    return manifest_path


def _build_rows(config: CorpusConfig, seed: int, out_dir: Path,
                progress: bool) -> list[dict[str, Any]]:
    speakers = _speakers(config, seed)
    voices = _realistic.draw_voices(config, seed) if config.has_realistic_voices() else {}
    listing = {split: [s.to_dict() for s in group] for split, group in speakers.items()}
    for split, group in voices.items():
        listing.setdefault(split, []).extend(v.to_dict() for v in group)
    write_json_atomic(out_dir / "speakers.json", listing)
    if voices:
        write_json_atomic(out_dir / "sources.json", _realistic.sources_record(config, seed))
    jobs, utts = [], {}
    for k, (_split, group) in enumerate(speakers.items()):
        for i, speaker in enumerate(group):
            u = _utterances(config, seed, out_dir, k, i, speaker)
            utts[speaker.id] = u
            if not speaker_is_done(u):
                jobs.append((speaker, u, int(_rng(seed, 7, k, i).integers(2**31))))
    synthesize_all(jobs, config.sample_rate, config.workers, progress)
    if voices:
        lines = _realistic.synthesize(config, seed, out_dir, voices, progress)
        for voice_id, group in lines.items():
            utts[voice_id] = group
    audio = {u.id: _read_int16(u.path) for group in utts.values() for u in group}

    bank = None
    if config.reverb:
        bank = _room_bank(config, seed, out_dir, progress)
    room_ids = np.cumsum((0,) + config.rooms)
    babble = [_as_float(audio[u.id]) for s in speakers.get("babble", []) for u in utts[s.id]]
    psd = speech_spectrum(babble, config.sample_rate) if babble else None

    rows = []
    for k, split in enumerate(SPLITS):
        by_speaker = {s.id: [u.id for u in utts[s.id]]
                      for s in [*speakers[split], *voices.get(split, [])]}
        plans = sample_plans(
            _rng(seed, _STAGE["plans"], k), by_speaker, {u: len(a) for u, a in audio.items()},
            config.mixtures[k], config.speaker_proportions, config.mode, config.level_db,
            list(range(room_ids[k], room_ids[k + 1])) if bank is not None else None,
            config.positions, config.noise_clips if config.noise else 0, config.snr_db,
            _speaker_weights(config.realistic_share, speakers[split], voices.get(split, [])),
            config.same_speaker,
        )
        noise = _noise_clips(config, seed, out_dir, k, split, plans, babble, psd)
        labelled = _labelled(config, seed, split, len(plans))
        for i, plan in enumerate(tqdm(plans, desc=f"mixing {split}", unit="mix",
                                      disable=not progress)):
            rows.append(_row(config, out_dir, split, i, plan, audio, bank, noise, labelled[i]))
    return rows


def _labelled(config: CorpusConfig, seed: int, split: str, n: int) -> np.ndarray:
    """Valid/test: all labelled; train: exactly round(fraction * n) random mixtures."""
    if split != "train":
        return np.ones(n, dtype=bool)
    chosen = _rng(seed, _STAGE["labels"]).permutation(n)[: round(config.labelled_fraction * n)]
    out = np.zeros(n, dtype=bool)
    out[chosen] = True
    return out


def _room_bank(config: CorpusConfig, seed: int, out_dir: Path, progress: bool) -> RoomBank:
    path = out_dir / "rooms.npz"
    if path.exists():
        return RoomBank.load(path)
    with tqdm(total=1, desc="simulating rooms", disable=not progress) as bar:
        bank = make_room_bank(_rng(seed, _STAGE["rooms"]), sum(config.rooms), config.sample_rate,
                              config.n_mics, config.positions, config.rt60, config.max_order)
        bar.update()
    with atomic_path(path) as tmp:
        bank.save(tmp)
    return bank


def _noise_clips(config: CorpusConfig, seed: int, out_dir: Path, split_index: int, split: str,
                 plans: list[MixturePlan], babble: list[np.ndarray],
                 psd: np.ndarray | None) -> list[tuple[str, np.ndarray]]:
    """Noise clips of one split, each as long as its longest mixture: (path, samples)."""
    if not config.noise:
        return []
    n = max(p.num_frames for p in plans)
    clips = []
    for j in range(config.noise_clips):
        kind = config.noise[j % len(config.noise)]
        path = out_dir / "noise" / f"{split}_{j:03d}_{kind}.flac"
        if not path.exists():
            x = make_noise(kind, _rng(seed, _STAGE["noise"], split_index, j), n,
                           config.sample_rate, psd, babble)
            write_audio(path, x.astype(np.float32), config.sample_rate, subtype="PCM_16")
        clips.append((str(path), _as_float(_read_int16(str(path)))))
    return clips


def _row(config: CorpusConfig, out_dir: Path, split: str, i: int, plan: MixturePlan,
         audio: dict[str, np.ndarray], bank: RoomBank | None,
         noise: list[tuple[str, np.ndarray]], labelled: bool) -> dict[str, Any]:
    """One rendered manifest row: gains from the images the manifest renderer will make."""
    C, N = config.n_mics, plan.num_frames

    def rir(position: int) -> int | None:
        return None if bank is None else bank.rir_index(plan.room, plan.positions[position])

    def img(x: np.ndarray, r: int | None) -> np.ndarray:  # (C, N)
        return image(x, None if r is None else bank.rirs[r], C, N)

    speakers = [u.rsplit("_", 1)[0] for u in plan.utterances]
    rirs = [rir(s) for s in range(len(plan.utterances))]
    images = [img(_as_float(audio[u]), r) for u, r in zip(plan.utterances, rirs, strict=True)]
    noise_img = noise_rir = None
    if plan.noise_clip is not None:
        noise_rir = rir(len(plan.utterances))
        noise_img = img(noise[plan.noise_clip][1], noise_rir)
    gains, noise_gain = mixture_gains(images, plan.levels_db, noise_img, plan.snr_db, config.peak)
    parts = [
        {"audio": str(Path("utterances") / s / f"{u}.flac"), "offset": 0, "gain": g,
         "role": "source", "rir": r}
        for u, s, g, r in zip(plan.utterances, speakers, gains, rirs, strict=True)
    ]
    row = {
        "id": f"{split}_{i:05d}", "split": split, "labelled": bool(labelled),
        "sample_rate": config.sample_rate, "channels": C, "num_frames": N,
        "n_speakers": len(plan.utterances), "parts": parts,
        "rooms": "rooms.npz" if bank is not None else None,
        "speakers": speakers, "levels_db": [round(v, 4) for v in plan.levels_db],
    }
    if noise_gain is not None:
        parts.append({"audio": os.path.relpath(noise[plan.noise_clip][0], out_dir), "offset": 0,
                      "gain": noise_gain, "role": "noise", "rir": noise_rir})
        row["snr_db"] = round(plan.snr_db, 4)
    if bank is not None:
        row["rt60"] = round(float(bank.rt60[plan.room]), 4)
    return row


def materialize_wavs(manifest_path: Path, config: CorpusConfig, progress: bool) -> Path:
    """Write WSJ0-2mix-style folders wav{8,16}k/{min,max}/{tr,cv,tt}/{mix,s1,s2,...}/<id>.wav
    (16-bit; the mixture has every microphone, the sources are at microphone 0). Files
    already there are kept (they are written atomically)."""
    manifest = Manifest.load(manifest_path)
    root = manifest_path.parent / f"wav{config.sample_rate // 1000}k" / config.mode
    for i, row in enumerate(tqdm(manifest.rows, desc="writing wav folders", unit="mix",
                                 disable=not progress)):
        folder = root / _PREFIX[row["split"]]
        name = f"{row['id']}.wav"
        targets = [folder / "mix" / name] + [folder / f"s{k + 1}" / name
                                             for k in range(row["n_speakers"])]
        if all(t.exists() for t in targets):
            continue
        signals = [manifest.load_mixture(i), *manifest.load_sources(i, allow_unlabelled=True)]
        for path, x in zip(targets, signals, strict=True):
            write_audio(path, x, row["sample_rate"], subtype="PCM_16")
    return root

"""The results of a run folder for the page: the report's table and claims (RUN/report.json,
`tsmixit.evaluation.report.write_report`), its plots (RUN/plots/*.png) and, for each
system, the test mixtures its evaluation kept (RUN/eval/<system>.json "examples", or the
one "example" of an older evaluation; the files below RUN/eval/examples/, written by
`tsmixit.evaluation.evaluate._save_example`: mixture (T,), references (k, T), outputs
(M, T), topk_outputs (k,) in reference order, oracle_groups (M,)) as tracks to play.

Tracks of an example: "mixture", "reference<i>", "estimate<i>" (the top-k output matched to
reference i), and with M > k outputs "group<i>" (the oracle grouping's sum of the outputs
assigned to reference i) and "output<j>" (the outputs left out of the top-k). Only files the
report lists below RUN/plots, and the example files the evaluations of its systems list
below RUN/eval/examples, are ever served; a request names them by system and index, looked
up in those lists. An example's arrays are read and its tracks drawn when first asked for;
at most `LOADED_EXAMPLES` examples and `KEPT_DRAWINGS` drawings are held, the drawings by
content (the mixture and true sources every system kept of one test row are drawn once).
"""

import hashlib
import io
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import soundfile as sf

from tsmixit.errors import TsmixitError
from tsmixit.serve.display import draw

#: Row fields of report.json the page shows.
ROW_FIELDS = ("system", "label", "scoring", "n_channels", "si_snri", "sdri", "active_outputs",
              "n_outputs", "over_separated", "labelled_mixtures", "stage_seconds",
              "total_seconds", "n_mixtures", "sets", "run")
#: Per-mixture scores of an example shown beside its system (from its evaluation's rows).
SCORE_FIELDS = ("si_snri_topk", "si_snri_oracle")
#: Most examples whose arrays are held at once, and most drawings (least recently used go).
LOADED_EXAMPLES = 12
KEPT_DRAWINGS = 128


@dataclass(frozen=True)
class ExampleFile:
    """One kept test mixture of a system: its row id, file and scores on that mixture."""

    id: str
    path: Path
    scores: dict[str, float]


@dataclass(frozen=True)
class _Example:
    """A loaded example: tracks key -> (label, group, (T,) float32 signal)."""

    id: str
    sample_rate: int
    tracks: dict[str, tuple[str, str, np.ndarray]]


@dataclass(frozen=True)
class TrackDrawing:
    """What the page draws of a track (`tsmixit.serve.display.Drawing` less its levels):
    peaks rounded for the page, the spectrogram PNG, the length in seconds."""

    peaks: list[list[float]]
    png: bytes
    seconds: float


class RunResults:
    """One run folder's report, plots and example tracks."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir).resolve()
        report_path = self.run_dir / "report.json"
        try:
            self.report = json.loads(report_path.read_text())
        except FileNotFoundError:
            raise TsmixitError(f"{report_path}: not found; write the report first "
                               f"(tsmixit report {run_dir}).") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise TsmixitError(f"{report_path}: unreadable ({err}); rewrite it with "
                               f"`tsmixit report {run_dir}`.") from err
        if not isinstance(self.report, dict) or not isinstance(self.report.get("rows"), list):
            raise TsmixitError(f"{report_path}: not a tsmixit report (no \"rows\"); rewrite "
                               f"it with `tsmixit report {run_dir}`.")
        plot_dir = self.run_dir / "plots"
        self.plots: dict[str, Path] = {}
        for name in self.report.get("plots", []):
            path = (self.run_dir / str(name)).resolve()
            if path.parent == plot_dir and path.suffix == ".png" and path.is_file():
                self.plots[path.name] = path
        self.systems: dict[str, str] = {}  # system -> label of its first row
        self.examples: dict[str, dict[str, ExampleFile]] = {}  # system -> index -> file
        for row in self.report["rows"]:
            system = str(row.get("system", ""))
            if row.get("run") is not None or system in self.systems:
                continue
            files = self._example_files(system)
            if files:
                self.systems[system] = str(row.get("label", system))
                self.examples[system] = {str(n): f for n, f in enumerate(files)}
        self._loaded: OrderedDict[tuple[str, str], _Example] = OrderedDict()
        self._drawings: OrderedDict[bytes, TrackDrawing] = OrderedDict()  # by content
        self._lock = threading.Lock()

    def _example_files(self, system: str) -> list[ExampleFile]:
        """The example files the evaluation of `system` lists that lie below
        RUN/eval/examples (none for an unreadable evaluation)."""
        eval_dir = self.run_dir / "eval"
        path = (eval_dir / f"{system}.json").resolve()
        if path.parent != eval_dir:
            return []
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return []
        if not isinstance(result, dict):
            return []
        entries = result.get("examples")
        if not isinstance(entries, list):  # an evaluation of one example per system
            entries = [result["example"]] if isinstance(result.get("example"), dict) else []
        scores = {str(r.get("id")): r for r in result.get("per_mixture", [])
                  if isinstance(r, dict)}
        files = []
        for entry in entries:
            if not isinstance(entry, dict) or "path" not in entry:
                continue
            file = (eval_dir / str(entry["path"])).resolve()
            if not (file.is_relative_to(eval_dir / "examples") and file.suffix == ".npz"
                    and file.is_file()):
                continue
            row_id = str(entry.get("id", file.stem))
            row = scores.get(row_id, {})
            files.append(ExampleFile(row_id, file, {key: float(row[key]) for key in SCORE_FIELDS
                                                    if isinstance(row.get(key), int | float)}))
        return files

    def summary(self) -> dict[str, Any]:
        """What the page shows: table rows, claims, plot URLs and the kept test mixtures,
        each with the systems that kept it (URLs of their tracks, their scores on it)."""
        rows = [{key: row.get(key) for key in ROW_FIELDS} for row in self.report["rows"]]
        mixtures: dict[str, list[dict[str, Any]]] = {}  # id -> systems, in table order
        for system, files in self.examples.items():
            for n, file in files.items():
                mixtures.setdefault(file.id, []).append({
                    "system": system, "label": self.systems[system], "index": int(n),
                    "url": f"/api/run/examples/{quote(system, safe='')}/{n}", **file.scores})
        return {"name": self.run_dir.name, "k": self.report.get("k"), "rows": rows,
                "claims": self.report.get("claims", []),
                "plots": [{"name": name, "url": f"/api/run/plots/{name}"} for name in self.plots],
                "mixtures": [{"id": row_id, "systems": systems}
                             for row_id, systems in mixtures.items()]}

    def tracks(self, system: str, n: str) -> dict[str, Any]:
        """Example `n` of `system` for the page: its id, rate and tracks (label, group,
        URLs, waveform peaks, seconds); KeyError when unknown."""
        example = self._example(system, n)
        base = f"/api/run/examples/{quote(system, safe='')}/{n}"
        tracks = []
        for key, (text, group, _) in example.tracks.items():
            drawing = self.drawing(system, n, key)
            tracks.append({"key": key, "label": text, "group": group,
                           "audio": f"{base}/{key}.wav", "spectrogram": f"{base}/{key}.png",
                           "peaks": drawing.peaks, "seconds": drawing.seconds})
        return {"system": system, "label": self.systems[system], "id": example.id,
                "sample_rate": example.sample_rate, "tracks": tracks}

    def _example(self, system: str, n: str) -> _Example:
        """The loaded example `n` of `system` (KeyError for one the run does not list)."""
        file = self.examples[system][n]
        with self._lock:
            if (system, n) in self._loaded:
                self._loaded.move_to_end((system, n))
                return self._loaded[(system, n)]
        example = _load(file.path)
        with self._lock:
            example = self._loaded.setdefault((system, n), example)
            while len(self._loaded) > LOADED_EXAMPLES:
                self._loaded.popitem(last=False)
        return example

    def drawing(self, system: str, n: str, key: str) -> TrackDrawing:
        """Peaks and spectrogram of one example track (KeyError when unknown)."""
        example = self._example(system, n)
        signal = example.tracks[key][2]  # (T,) float32
        digest = hashlib.blake2b(signal.tobytes(), digest_size=16,
                                 salt=example.sample_rate.to_bytes(8, "little")).digest()
        with self._lock:
            if digest in self._drawings:
                self._drawings.move_to_end(digest)
                return self._drawings[digest]
        made = draw(signal, example.sample_rate)
        drawing = TrackDrawing(made.peaks_json(), made.png, made.seconds)
        with self._lock:
            drawing = self._drawings.setdefault(digest, drawing)
            while len(self._drawings) > KEPT_DRAWINGS:
                self._drawings.popitem(last=False)
        return drawing

    def wav(self, system: str, n: str, key: str) -> bytes:
        """One example track as a 32-bit float WAV (KeyError when unknown)."""
        example = self._example(system, n)
        buffer = io.BytesIO()
        sf.write(buffer, example.tracks[key][2], example.sample_rate, subtype="FLOAT",
                 format="WAV")
        return buffer.getvalue()


def _load(path: Path) -> _Example:
    """The tracks of one example file (see the module docstring)."""
    with np.load(path, allow_pickle=False) as data:
        mixture = np.asarray(data["mixture"], np.float32).reshape(-1)  # (T,)
        refs = np.asarray(data["references"], np.float32)  # (k, T)
        outputs = np.asarray(data["outputs"], np.float32)  # (M, T)
        top = [int(i) for i in data["topk_outputs"]]  # (k,) reference order
        groups = [int(g) for g in data["oracle_groups"]]  # (M,)
        rate, row_id = int(data["sample_rate"]), str(data["id"])
    tracks: dict[str, tuple[str, str, np.ndarray]] = {"mixture": ("Mixture", "mixture", mixture)}
    for i, ref in enumerate(refs):
        tracks[f"reference{i + 1}"] = (f"True source {i + 1}", "references", ref)
    for i, j in enumerate(top):
        tracks[f"estimate{i + 1}"] = (f"Estimate {i + 1}", "estimates", outputs[j])
    if outputs.shape[0] > len(top):
        for i in range(refs.shape[0]):
            members = [m for m, g in enumerate(groups) if g == i]
            tracks[f"group{i + 1}"] = (f"Oracle group {i + 1} · "
                                       f"{'+'.join(str(m + 1) for m in members)}",
                                       "oracle", outputs[members].sum(axis=0))
        for j in (j for j in range(outputs.shape[0]) if j not in top):
            tracks[f"output{j + 1}"] = (f"Output {j + 1} · left out", "others", outputs[j])
    return _Example(row_id, rate, tracks)

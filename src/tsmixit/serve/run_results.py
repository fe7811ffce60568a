"""The results of a run folder for the page: the report's table and claims (RUN/report.json,
`tsmixit.evaluation.report.write_report`), its plots (RUN/plots/*.png) and, for each
system, the test mixture evaluation kept (RUN/eval/examples/<system>.npz,
`tsmixit.evaluation.evaluate._save_example`: mixture (T,), references (k, T), outputs
(M, T), topk_outputs (k,) in reference order, oracle_groups (M,)) as tracks to play.

Tracks of an example: "mixture", "reference<i>", "estimate<i>" (the top-k output matched to
reference i), and with M > k outputs "group<i>" (the oracle grouping's sum of the outputs
assigned to reference i) and "output<j>" (the outputs left out of the top-k). Only files the
report lists below RUN/plots, and the examples of systems in its table, are ever served.
"""

import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from tsmixit.errors import TsmixitError
from tsmixit.serve.display import Drawing, draw

#: Row fields of report.json the page shows.
ROW_FIELDS = ("system", "label", "scoring", "n_channels", "si_snri", "sdri", "active_outputs",
              "n_outputs", "over_separated", "labelled_mixtures", "stage_seconds",
              "total_seconds", "n_mixtures", "sets", "run")


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
        for row in self.report["rows"]:
            system = str(row.get("system", ""))
            path = self.run_dir / "eval" / "examples" / f"{system}.npz"
            if row.get("run") is None and system not in self.systems and path.is_file():
                self.systems[system] = str(row.get("label", system))
        self._examples: dict[str, dict[str, Any]] = {}
        self._drawings: dict[tuple[str, str], Drawing] = {}
        self._lock = threading.Lock()

    def summary(self) -> dict[str, Any]:
        """What the page shows: table rows, claims, plot URLs and the examples' tracks."""
        rows = [{key: row.get(key) for key in ROW_FIELDS} for row in self.report["rows"]]
        examples = []
        for system, label in self.systems.items():
            example = self.example(system)
            base = f"/api/run/examples/{system}"
            examples.append({
                "system": system, "label": label, "id": example["id"],
                "sample_rate": example["sample_rate"],
                "tracks": [{"key": key, "label": text, "group": group,
                            "audio": f"{base}/{key}.wav", "spectrogram": f"{base}/{key}.png",
                            "peaks": self.drawing(system, key).peaks_json(),
                            "seconds": self.drawing(system, key).seconds}
                           for key, (text, group, _) in example["tracks"].items()],
            })
        return {"name": self.run_dir.name, "k": self.report.get("k"), "rows": rows,
                "claims": self.report.get("claims", []),
                "plots": [{"name": name, "url": f"/api/run/plots/{name}"} for name in self.plots],
                "examples": examples}

    def example(self, system: str) -> dict[str, Any]:
        """The example of `system` as {"id", "sample_rate", "tracks": key -> (label, group,
        (T,) float32 signal)}; KeyError for a system without one."""
        if system not in self.systems:
            raise KeyError(system)
        with self._lock:
            if system not in self._examples:
                self._examples[system] = self._load(system)
            return self._examples[system]

    def _load(self, system: str) -> dict[str, Any]:
        path = self.run_dir / "eval" / "examples" / f"{system}.npz"
        with np.load(path, allow_pickle=False) as data:
            mixture = np.asarray(data["mixture"], np.float32).reshape(-1)  # (T,)
            refs = np.asarray(data["references"], np.float32)  # (k, T)
            outputs = np.asarray(data["outputs"], np.float32)  # (M, T)
            top = [int(i) for i in data["topk_outputs"]]  # (k,) reference order
            groups = [int(g) for g in data["oracle_groups"]]  # (M,)
            rate, row_id = int(data["sample_rate"]), str(data["id"])
        tracks: dict[str, tuple[str, str, np.ndarray]] = {"mixture": ("Mixture", "mixture",
                                                                      mixture)}
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
                tracks[f"output{j + 1}"] = (f"Output {j + 1} · left out", "others",
                                            outputs[j])
        return {"id": row_id, "sample_rate": rate, "tracks": tracks}

    def drawing(self, system: str, key: str) -> Drawing:
        """Peaks and spectrogram of one example track (KeyError when unknown)."""
        example = self.example(system)
        signal = example["tracks"][key][2]
        with self._lock:
            if (system, key) not in self._drawings:
                self._drawings[(system, key)] = draw(signal, example["sample_rate"])
            return self._drawings[(system, key)]

    def wav(self, system: str, key: str) -> bytes:
        """One example track as a 32-bit float WAV (KeyError when unknown)."""
        example = self.example(system)
        buffer = io.BytesIO()
        sf.write(buffer, example["tracks"][key][2], example["sample_rate"], subtype="FLOAT",
                 format="WAV")
        return buffer.getvalue()

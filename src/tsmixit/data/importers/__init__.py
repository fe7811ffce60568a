"""Importers: one module per corpus layout, each writing the rows of one `Manifest`.

Notation: an importer reads a corpus as it lies on disk (paths are not copied, files at
another rate or channel count are converted only by `import_folder`) and returns a
`Manifest` of file rows; `labelled_fraction` (where offered) keeps the sources of a seeded
share of the train rows visible. A new layout is one module here, its line below, and its
name in `tsmixit corpus import`.
"""

from pathlib import Path

from tsmixit.data.importers.folder import import_folder
from tsmixit.data.importers.librimix import import_librimix
from tsmixit.data.importers.spatialized import import_spatialized_wsj0_2mix
from tsmixit.data.importers.wsj0_2mix import import_wsj0_2mix
from tsmixit.data.manifest import Manifest
from tsmixit.errors import ManifestError

__all__ = [
    "open_test_set",
    "import_folder",
    "import_librimix",
    "import_spatialized_wsj0_2mix",
    "import_wsj0_2mix",
]


def open_test_set(data: str | Path, split: str | None = "test") -> Manifest:
    """A manifest file, or a WSJ0-2mix-style folder (imported on the fly), restricted to
    `split` (None: all rows)."""
    data = Path(data)
    manifest = import_wsj0_2mix(data) if data.is_dir() else Manifest.load(data)
    if split is None:
        return manifest
    chosen = manifest.select(split=split)
    if len(chosen) == 0:
        found = sorted({row["split"] for row in manifest.rows})
        raise ManifestError(
            f"{data}: no mixtures in split {split!r} (it has {', '.join(found)}); choose "
            "another split."
        )
    return chosen

"""Importers: one module per corpus layout, each writing the rows of one `Manifest`.

Notation: an importer reads a corpus as it lies on disk (paths are not copied, files at
another rate or channel count are converted only by `import_folder`) and returns a
`Manifest` of file rows; `labelled_fraction` (where offered) keeps the sources of a seeded
share of the train rows visible. A new layout is one module here, its line below, and its
name in `tsmixit corpus import`.
"""

from tsmixit.data.importers.folder import import_folder
from tsmixit.data.importers.librimix import import_librimix
from tsmixit.data.importers.spatialized import import_spatialized_wsj0_2mix
from tsmixit.data.importers.wsj0_2mix import import_wsj0_2mix

__all__ = [
    "import_folder",
    "import_librimix",
    "import_spatialized_wsj0_2mix",
    "import_wsj0_2mix",
]

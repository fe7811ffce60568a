"""Manifests (one format for every corpus), their importers, and the training datasets."""

from tsmixit.data.datasets import (
    LabelledDataset,
    MixtureOfMixturesDataset,
    SegmentDataset,
)
from tsmixit.data.importers import (
    import_folder,
    import_librimix,
    import_spatialized_wsj0_2mix,
    import_wsj0_2mix,
)
from tsmixit.data.manifest import Manifest, Row, has_sources

__all__ = [
    "LabelledDataset",
    "Manifest",
    "MixtureOfMixturesDataset",
    "Row",
    "SegmentDataset",
    "has_sources",
    "import_folder",
    "import_librimix",
    "import_spatialized_wsj0_2mix",
    "import_wsj0_2mix",
]

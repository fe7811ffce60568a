"""Manifests (one format for every corpus), their importers, and the training datasets."""

from tsmixit.data.datasets import (
    LabelledDataset,
    MixtureOfMixturesDataset,
    SegmentDataset,
    pad_collate,
)
from tsmixit.data.manifest import (
    Manifest,
    has_sources,
    import_folder,
    import_librimix,
    import_spatialized_wsj0_2mix,
    import_wsj0_2mix,
)

__all__ = [
    "LabelledDataset",
    "Manifest",
    "MixtureOfMixturesDataset",
    "SegmentDataset",
    "has_sources",
    "import_folder",
    "import_librimix",
    "import_spatialized_wsj0_2mix",
    "import_wsj0_2mix",
    "pad_collate",
]

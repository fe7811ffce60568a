"""Spatialized WSJ0-2mix: the WSJ0-2mix tree (see `wsj0_2mix`) with multi-channel files.

Notation: mixtures x (C_file, T) and reverberant source images s (S, T) at every microphone;
`channels` picks C of the C_file microphones, in order, and the first of them is the
reference microphone at which the sources are read, giving rows of (C, T) mixtures and
(S, T) sources.
"""

import os
from typing import Literal

from tsmixit.data.importers.wsj0_2mix import import_wsj_tree
from tsmixit.data.manifest import Manifest


def import_spatialized_wsj0_2mix(
    path: str | os.PathLike,
    *,
    channels: list[int] | None = None,
    sample_rate: int | None = None,
    mode: Literal["min", "max"] | None = None,
    labelled_fraction: float = 1.0,
    seed: int = 0,
) -> Manifest:
    """Import spatialized WSJ0-2mix: the WSJ0-2mix tree with multi-channel wavs.

    path: as for `import_wsj0_2mix`; `2speakers_reverb/` (preferred) or
    `2speakers_anechoic/` below it are searched too. channels: the microphones used, in
    order (default: all); the first is the reference microphone at which the sources (the
    reverberant images in s1/, s2/) are taken.
    """
    return import_wsj_tree(path, sample_rate, mode, labelled_fraction, seed, channels=channels,
                           spatial=True)

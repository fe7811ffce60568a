"""Evaluation of separators (SI-SNRi, SDRi, top-k vs oracle grouping, over-separation) and
the results report of a run folder."""

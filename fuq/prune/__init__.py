"""Token pruning built on per-token uncertainty: training-data pruning on the error-uncertainty plane."""

from ._eu_plane import eu_plane
from ._eu_plane_io import eu_plane_jsonl, plot_plane

__all__ = ["eu_plane", "eu_plane_jsonl", "plot_plane"]

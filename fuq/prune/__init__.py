"""Token pruning built on per-token uncertainty (:func:`fuq.hidden_stats`).

* :func:`compress`: prompt / context compression by self-information (Selective Context,
  LLMLingua's token filter, LongLLMLingua's question contrast); :func:`reselect` re-cuts a
  self-info result at another rate or unit without a model call.
* :func:`eu_plane`: training-data pruning on the error-uncertainty plane (Q-Tuning).
"""

from ._compress import CompressResult, compress, reselect
from ._eu_plane import eu_plane
from ._eu_plane_io import eu_plane_jsonl, plot_plane

__all__ = ["compress", "reselect", "CompressResult", "eu_plane", "eu_plane_jsonl", "plot_plane"]

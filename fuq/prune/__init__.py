"""Token pruning built on :func:`fuq.hidden_stats`: per-token uncertainty that removes tokens.

* :func:`compress`: prompt / context compression by self-information (Selective Context,
  LLMLingua's token filter, LongLLMLingua's question contrast).
* :func:`eu_plane`: training-data pruning on the error–uncertainty plane (Q-Tuning).
"""

from ._compress import CompressResult, compress, reselect
from ._eu_plane import eu_plane

__all__ = ["compress", "reselect", "CompressResult", "eu_plane"]

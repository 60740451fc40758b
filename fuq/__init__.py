"""fuq: fused, decoding-time uncertainty for PyTorch.

Read the logits of a decoding step once; get the whole picture (log-sum-exp,
entropy, varentropy, max and top-k log-probs, top-k mass, the chosen token's
log-prob).
"""

from . import adaptive, distributed, forced, models, partial, prune, reference, scores
from ._truncate import sample, truncate
from .forced import score_text
from .generate import generate
from .ops import AttentionStats, LogitStats, LogitStatsExtra, attention_stats, hidden_stats, logit_stats
from .partial import StatsState, logit_stats_partial, merge_stats

__version__ = "0.1.0"

__all__ = ["LogitStats", "LogitStatsExtra", "logit_stats", "truncate", "sample", "reference", "scores", "score_text"]
__all__ += ["__version__"]
__all__ += ["generate", "adaptive", "forced", "models", "hidden_stats", "attention_stats", "AttentionStats"]
__all__ += ["distributed", "partial", "StatsState", "logit_stats_partial", "merge_stats"]
__all__ += ["prune"]

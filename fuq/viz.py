"""Show a :class:`~fuq.trace.Trace` to people: coloured terminal text and a self-contained HTML heat map.

Each token is coloured by the model's confidence in it, on one green → yellow → red
scale (hue 120° → 0°) shared by both renderers:

* ``metric="prob"`` (default): confidence = ``p(token)``, the chosen token's probability;
* ``metric="entropy"``: confidence = ``1 - min(H / entropy_max, 1)``, the step's entropy
  against a ceiling (``entropy_max`` nats, 3 by default).

The terminal view is ``rich`` text plus a table of the sequence scores
(:func:`fuq.scores.summary`); the HTML page adds a tooltip per token with its top
alternatives and their probabilities. Neither renderer needs the model; give them the
tokenizer to see the alternatives as text rather than ids.

Example:
    >>> trace = fuq.generate(model, tokenizer, "Hello", max_new_tokens=8)  # doctest: +SKIP
    >>> fuq.viz.render_terminal(trace, tokenizer=tokenizer)  # doctest: +SKIP
    >>> fuq.viz.render_html(trace, "trace.html", tokenizer=tokenizer)  # doctest: +SKIP
"""

from __future__ import annotations

import colorsys
import html
import json
import math
import unicodedata
from pathlib import Path
from typing import Any

from .trace import Trace

__all__ = [
    "confidence",
    "color",
    "render_terminal",
    "render_html",
    "terminal_text",
    "scores_table",
    "TokenStream",
    "METRICS",
]

METRICS = ("prob", "entropy")

#: What each score means, for the tables.
_SCORE_HELP = {
    "n_tokens": "real tokens (after the prompt)",
    "g_nll": "-Σ max log p (greedy-path NLL)",
    "nll": "-Σ log p(token)",
    "perplexity": "exp(mean -log p(token))",
    "mean_entropy": "mean H (nats)",
    "max_entropy": "max H (nats)",
    "mean_varentropy": "mean Var[-log p]",
    "geometric_mean_prob": "exp(mean log p(token))",
    "mean_prob": "mean p(token)",
    "epr": "mean -Σ top-K p log p",
    "prob_q05": "5% quantile of p(token)",
    "prob_q25": "25% quantile of p(token)",
    "prob_q50": "median p(token)",
}


# ---------------------------------------------------------------------------------------------
# shared


def _check(trace: Trace, metric: str, entropy_max: float) -> None:
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be a fuq.trace.Trace, got {type(trace).__name__}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not (isinstance(entropy_max, (int, float)) and math.isfinite(entropy_max) and entropy_max > 0):
        raise ValueError(f"entropy_max must be a finite number > 0, got {entropy_max!r}")


def _confidence(metric: str, token_logprob: float, entropy: float, entropy_max: float) -> float:
    """Confidence in [0, 1] of one token (NaN stays NaN): ``p(token)``, or ``1 - min(H / entropy_max, 1)``."""
    if metric == "prob":
        return math.exp(token_logprob) if not math.isnan(token_logprob) else math.nan
    return 1.0 - min(max(entropy, 0.0) / entropy_max, 1.0) if not math.isnan(entropy) else math.nan


def confidence(trace: Trace, b: int, metric: str = "prob", entropy_max: float = 3.0) -> list[float]:
    """Confidence in [0, 1] of each real token of sequence ``b`` (NaN stays NaN)."""
    _check(trace, metric, entropy_max)
    row = trace.row(b)
    return [_confidence(metric, lp, h, entropy_max) for lp, h in zip(row["token_logprob"], row["entropy"], strict=True)]


def color(c: float, lightness: float = 0.45, saturation: float = 0.85) -> tuple[int, int, int]:
    """RGB of confidence ``c`` in [0, 1]: hue 0° (red, unsure) → 60° (yellow) → 120° (green, sure); NaN is grey."""
    if c is None or math.isnan(c):
        return (128, 128, 128)
    c = min(max(c, 0.0), 1.0)
    r, g, b = colorsys.hls_to_rgb(c / 3.0, lightness, saturation)
    return (round(255 * r), round(255 * g), round(255 * b))


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _pieces(trace: Trace, b: int, tokenizer=None) -> list[str]:
    """Text of each real token of sequence ``b``: the trace's pieces, else decoded, else ``[id]``."""
    row = trace.row(b)
    if "tokens" in row:
        return [str(t) for t in row["tokens"]]
    if tokenizer is not None:
        return [_piece(tokenizer, i, {}) for i in row["token_ids"]]
    return [f"[{i}]" for i in row["token_ids"]]


def _prompt_sep(trace: Trace, b: int) -> str:
    """A line break after a chat prompt (the template's turn markers are not shown), else nothing."""
    return "\n" if trace.meta.get("chat") and not trace.prompt[b].endswith("\n") else ""


def _piece(tokenizer, tid: int, cache: dict[int, str]) -> str:
    """Text of one token id, keeping a leading space that ``decode`` alone may drop."""
    if tid in cache:
        return cache[tid]
    try:
        s = tokenizer.decode([tid], skip_special_tokens=False)
        raw = tokenizer.convert_ids_to_tokens(tid)
        if isinstance(raw, str) and raw[:1] in ("Ġ", "▁") and not s.startswith(" "):
            s = " " + s
    except Exception:  # noqa: BLE001 - an id the tokenizer does not know: show the id
        s = f"[{tid}]"
    cache[tid] = s
    return s


_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥"}


def _visible(s: str) -> str:
    """Whitespace and invisible characters made visible, for the alternatives list."""
    out = []
    for ch in s:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Zs", "Co", "Cn"):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out) or "∅"


def _alternatives(trace: Trace, b: int, tokenizer=None, n: int | None = None) -> list[list[tuple[str, float, int]]]:
    """Per real token: ``[(text, probability, id), …]`` of its top alternatives (dead ones left out)."""
    row = trace.row(b)
    cache: dict[int, str] = {}
    out = []
    for ids, lps in zip(row["topk_ids"], row["topk_logprobs"], strict=True):
        alts = []
        for i, lp in list(zip(ids, lps, strict=True))[:n]:
            if lp is None or math.isnan(lp) or lp == -math.inf:
                continue
            text = _piece(tokenizer, i, cache) if tokenizer is not None else f"[{i}]"
            alts.append((text, math.exp(lp), i))
        out.append(alts)
    return out


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    a = abs(x)
    return f"{x:.4f}" if 1e-3 <= a < 1e4 or a == 0 else f"{x:.3e}"


def _meta_line(trace: Trace) -> str:
    parts = []
    for key, v in trace.meta.items():
        if isinstance(v, float):
            parts.append(f"{key}={v:.4g}")
        elif isinstance(v, (int, str, bool)) and len(str(v)) <= 60:
            parts.append(f"{key}={v}")
    return "  ".join(parts)


def _summaries(trace: Trace) -> list[dict[str, Any]]:
    from .scores import summary

    return summary(trace)


# ---------------------------------------------------------------------------------------------
# terminal


def terminal_text(trace: Trace, b: int = 0, *, metric: str = "prob", entropy_max: float = 3.0, tokenizer=None):
    """``rich.text.Text`` of sequence ``b``: the prompt dimmed, each token coloured by its confidence.

    Whitespace-only tokens are shaded on the background so an unsure space or newline shows.
    """
    from rich.text import Text

    conf = confidence(trace, b, metric, entropy_max)
    pieces = _pieces(trace, b, tokenizer)
    text = Text()
    if trace.prompt is not None and trace.prompt[b]:
        text.append(trace.prompt[b] + _prompt_sep(trace, b), style="dim")
    for piece, c in zip(pieces, conf, strict=True):
        _append_token(text, piece, c)
    return text


def _append_token(text, piece: str, c: float) -> None:
    """Append one token to a ``rich.text.Text`` in the colour of confidence ``c``."""
    rgb = _hex(color(c))
    if piece.strip() or not piece:
        text.append(piece, style=rgb)
    else:  # only whitespace: a coloured background, the newline itself outside it
        body = piece.rstrip("\n")
        text.append(body if body else "↵", style=f"on {rgb}")
        text.append(piece[len(body) :])


class TokenStream:
    """A :func:`fuq.generate` ``hook`` that prints each token as it is produced, coloured by confidence.

    One sequence (batch size 1): the prompt dimmed, then every new token in the colour that
    :func:`terminal_text` gives it in the finished trace (the same text pieces, by the same
    incremental decode as ``fuq.generate``). Follow it with ``render_terminal(trace, console,
    show_text=False)`` for the legend and the scores.

    Example:
        >>> stream = fuq.viz.TokenStream(tokenizer, prompt="Hello")  # doctest: +SKIP
        >>> trace = fuq.generate(model, tokenizer, "Hello", hook=stream)  # doctest: +SKIP
        >>> fuq.viz.render_terminal(trace, stream.console, show_text=False)  # doctest: +SKIP
    """

    def __init__(self, tokenizer, console=None, *, prompt: str | None = None, chat: bool = False,
                 metric: str = "prob", entropy_max: float = 3.0) -> None:
        from rich.console import Console

        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if not (isinstance(entropy_max, (int, float)) and math.isfinite(entropy_max) and entropy_max > 0):
            raise ValueError(f"entropy_max must be a finite number > 0, got {entropy_max!r}")
        self.tokenizer, self.console = tokenizer, console if console is not None else Console()
        self.prompt, self.chat, self.metric, self.entropy_max = prompt, chat, metric, entropy_max
        self.ids: list[int] = []
        self.pieces: list[str] = []  #: the text of each token printed so far
        self._decoded = ""

    def __call__(self, step: int, stats, tokens) -> None:
        from rich.text import Text

        if tokens.shape[0] != 1:
            raise ValueError(f"TokenStream shows one sequence; this batch has {tokens.shape[0]}")
        text = Text()
        if not self.ids and self.prompt:
            sep = "\n" if self.chat and not self.prompt.endswith("\n") else ""
            text.append(self.prompt + sep, style="dim")
        tid = int(tokens[0])
        self.ids.append(tid)
        cur = self.tokenizer.decode(self.ids, skip_special_tokens=False)  # as fuq.generate's _pieces
        prev, self._decoded = self._decoded, cur
        piece = cur[len(prev) :] if cur.startswith(prev) else self.tokenizer.decode([tid], skip_special_tokens=False)
        self.pieces.append(piece)
        c = _confidence(self.metric, float(stats.token_logprob[0]), float(stats.entropy[0]), self.entropy_max)
        _append_token(text, piece, c)
        self.console.print(text, end="", soft_wrap=True)

    def end(self) -> None:
        """Close the streamed line (call once generation is over)."""
        if self.ids:
            self.console.print()


def _legend(metric: str, entropy_max: float):
    from rich.text import Text

    t = Text()
    t.append("confidence ", style="dim")
    if metric == "prob":
        t.append("p(token): ", style="dim")
        stops = [(1.0, "1.0"), (0.75, ".75"), (0.5, ".5"), (0.25, ".25"), (0.0, "0")]
    else:
        t.append("entropy H (nats): ", style="dim")
        stops = [(1 - f, _fmt(f * entropy_max).rstrip("0").rstrip(".") or "0") for f in (0, 0.25, 0.5, 0.75, 1.0)]
        stops[-1] = (0.0, "≥" + stops[-1][1])
    for c, label in stops:
        t.append("██", style=_hex(color(c)))
        t.append(f" {label}  ", style="dim")
    return t


def scores_table(trace: Trace, summaries: list[dict[str, Any]] | None = None):
    """``rich.table.Table``: one row per score, one column per sequence, plus what each score means."""
    from rich.table import Table

    summaries = summaries if summaries is not None else _summaries(trace)
    table = Table(title="sequence scores", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("score", style="bold")
    for b in range(len(summaries)):
        table.add_column("value" if len(summaries) == 1 else f"seq {b}", justify="right")
    table.add_column("meaning", style="dim")
    keys = [k for k in summaries[0] if k != "epr_k"] if summaries else []
    for key in keys:
        label = f"epr (K={summaries[0]['epr_k']})" if key == "epr" else key
        table.add_row(label, *[_fmt(s[key]) for s in summaries], _SCORE_HELP.get(key, ""))
    return table


def render_terminal(
    trace: Trace,
    console=None,
    *,
    metric: str = "prob",
    entropy_max: float = 3.0,
    tokenizer=None,
    show_scores: bool = True,
    show_text: bool = True,
) -> list:
    """Print the trace: per sequence, the coloured text; then a legend and the scores table.

    Args:
        trace: the record to show.
        console: a ``rich.console.Console`` (default: a new one on stdout).
        metric: ``"prob"`` (chosen-token probability) or ``"entropy"``.
        entropy_max: the entropy (nats) shown as fully unsure, for ``metric="entropy"``.
        tokenizer: used to decode tokens when the trace holds no text pieces.
        show_scores: also print :func:`scores_table`.
        show_text: print the sequences' text (False after a :class:`TokenStream` printed it).

    Returns:
        The list of rich renderables printed (for embedding in another layout).
    """
    from rich.console import Console
    from rich.rule import Rule
    from rich.text import Text

    _check(trace, metric, entropy_max)
    console = console if console is not None else Console()
    items: list = []
    for b in range(trace.batch_size if show_text else 0):
        if trace.batch_size > 1:
            items.append(Rule(Text(f"sequence {b}", style="bold"), align="left", style="dim"))
        items.append(terminal_text(trace, b, metric=metric, entropy_max=entropy_max, tokenizer=tokenizer))
    items.append(Text())
    items.append(_legend(metric, entropy_max))
    meta = _meta_line(trace)
    if meta:
        items.append(Text(meta, style="dim"))
    if show_scores:
        items.append(scores_table(trace))
    for item in items:
        console.print(item)
    return items


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:60em;
     padding:0 1em;color:#222;background:#fff}
h1{font-size:1.3em;margin:0 0 .2em} h2{font-size:1.05em;margin:1.5em 0 .4em;color:#555}
.meta{color:#777;font-size:.85em;margin:0 0 1em}
.text{font:14px/1.9 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;
      word-break:break-word;border:1px solid #ddd;border-radius:6px;padding:.8em 1em;background:#fcfcfc}
.prompt{color:#888}
.tok{border-radius:3px;cursor:default;padding:1px 0}
.tok:hover{outline:2px solid #333}
.nl{color:#999;font-size:.8em}
.legend{font-size:.85em;color:#555;margin:.8em 0}
.sw{display:inline-block;width:1.6em;height:1em;vertical-align:middle;border-radius:2px;margin:0 .2em 0 .6em}
table.scores{border-collapse:collapse;font-size:.9em;margin-top:1em}
table.scores td,table.scores th{padding:.15em .8em;border-bottom:1px solid #eee;text-align:right}
table.scores td:first-child,table.scores th:first-child,table.scores td.m{text-align:left}
table.scores td.m{color:#888}
#tip{position:fixed;display:none;pointer-events:none;background:#222;color:#eee;border-radius:6px;
     padding:.5em .7em;font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;z-index:10;max-width:28em}
#tip table{border-collapse:collapse} #tip td{padding:0 .5em 0 0} #tip .bar{display:inline-block;height:.7em;
     background:#6c6;vertical-align:middle} #tip .hd{color:#aaa;margin-bottom:.3em} #tip .me{color:#fd6}
"""

_JS = """
(function(){
  var tip=document.getElementById('tip');
  function cell(tr,text,cls){var td=document.createElement('td');td.textContent=text;if(cls)td.className=cls;
    tr.appendChild(td);return td;}
  document.querySelectorAll('.tok').forEach(function(el){
    el.addEventListener('mouseenter',function(){
      var d=el.dataset, alts=JSON.parse(d.alts||'[]');
      tip.textContent='';
      var hd=document.createElement('div');hd.className='hd';
      hd.textContent='token '+d.i+'  p='+d.p+'  H='+d.h+' nats';tip.appendChild(hd);
      var t=document.createElement('table');
      alts.forEach(function(a){var tr=document.createElement('tr');
        if(a[2])tr.className='me';
        cell(tr,a[0]);cell(tr,(a[1]*100).toFixed(2)+'%');
        var b=cell(tr,'');var s=document.createElement('span');s.className='bar';
        s.style.width=Math.max(1,Math.round(a[1]*80))+'px';b.appendChild(s);t.appendChild(tr);});
      tip.appendChild(t);tip.style.display='block';
    });
    el.addEventListener('mousemove',function(e){
      var x=e.clientX+14,y=e.clientY+14,w=tip.offsetWidth,h=tip.offsetHeight;
      if(x+w>innerWidth-8)x=e.clientX-w-14; if(y+h>innerHeight-8)y=e.clientY-h-14;
      x=Math.max(8,x); y=Math.max(8,y);
      tip.style.left=x+'px';tip.style.top=y+'px';
    });
    el.addEventListener('mouseleave',function(){tip.style.display='none';});
  });
})();
"""


def _num(x: float, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, nd)


def _token_html(piece: str) -> str:
    """Escaped token text; a newline gets a visible ↵ before the line break."""
    out = html.escape(piece, quote=False)
    return out.replace("\n", '<span class="nl">↵</span>\n')


def render_html(
    trace: Trace,
    path: str | Path | None = None,
    *,
    metric: str = "prob",
    entropy_max: float = 3.0,
    tokenizer=None,
    title: str = "fuq — token confidence",
) -> str:
    """A self-contained HTML page (inline CSS and JS, no external assets) of the trace.

    Every real token is one ``<span class="tok">`` shaded by confidence, carrying
    ``data-i`` (position), ``data-p`` (p(token)), ``data-h`` (entropy, nats) and
    ``data-alts`` (JSON ``[[text, prob, is_chosen], …]`` of its top alternatives)
    that a hover tooltip shows; then a table of the sequence scores.

    Args:
        trace: the record.
        path: where to write the page (UTF-8), or None.
        metric, entropy_max: as in :func:`render_terminal`.
        tokenizer: to show the alternatives as text (else as ``[id]``).
        title: the page title.

    Returns:
        The page as a string.
    """
    _check(trace, metric, entropy_max)
    summaries = _summaries(trace)
    esc = html.escape
    parts = [
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    meta = _meta_line(trace)
    if meta:
        parts.append(f"<p class='meta'>{esc(meta)}</p>")
    what = "p(token)" if metric == "prob" else f"entropy (0 … {entropy_max:g} nats)"
    legend = [f"<div class='legend'>shade = confidence, {esc(what)}:"]
    for c, label in ((1.0, "sure"), (0.5, "½"), (0.0, "unsure")):
        legend.append(f"<span class='sw' style='background:{_hex(color(c, 0.78, 0.8))}'></span>{label}")
    legend.append(" — hover a token for its top alternatives</div>")
    parts.append("".join(legend))
    if (trace.meta.get("kv") or {}).get("kept_prompt") is not None:
        kvm = trace.meta["kv"]
        parts.append(f"<style>{_KV_CSS}</style><div class='legend'>KV cache ({esc(str(kvm.get('scorer')))}, budget "
                     f"{esc(str(kvm.get('budget')))}): <span class='prompt kvev'>evicted</span> prompt tokens are "
                     "greyed out, <span class='prompt kvpart'>partly evicted</span> ones (gone from some "
                     "full-attention layers or KV heads) are faded; hover for the share kept</div>")
    for b in range(trace.batch_size):
        row = trace.row(b)
        conf = confidence(trace, b, metric, entropy_max)
        pieces = _pieces(trace, b, tokenizer)
        alts = _alternatives(trace, b, tokenizer)
        if trace.batch_size > 1:
            parts.append(f"<h2>Sequence {b}</h2>")
        parts.append("<div class='text'>")
        kv_prompt = _kv_prompt_html(trace, b)
        if kv_prompt is not None:
            parts.append(kv_prompt + f"<span class='prompt'>{_token_html(_prompt_sep(trace, b))}</span>")
        elif trace.prompt is not None and trace.prompt[b]:
            parts.append(f"<span class='prompt'>{_token_html(trace.prompt[b] + _prompt_sep(trace, b))}</span>")
        for i, (piece, c) in enumerate(zip(pieces, conf, strict=True)):
            chosen = row["token_ids"][i]
            data = [[_visible(t) if tokenizer is not None else t, _num(q, 5), int(j == chosen)] for t, q, j in alts[i]]
            p = math.exp(row["token_logprob"][i]) if not math.isnan(row["token_logprob"][i]) else math.nan
            attrs = (
                f'data-i="{i}" data-p="{_fmt(p)}" data-h="{_fmt(row["entropy"][i])}" '
                f'data-alts="{esc(json.dumps(data, ensure_ascii=False), quote=True)}" '
                f'style="background:{_hex(color(c, 0.78, 0.8))}"'
            )
            parts.append(f'<span class="tok" {attrs}>{_token_html(piece)}</span>')
        parts.append("</div>")
    parts.append(_scores_html(summaries))
    parts.append("<div id='tip'></div><script>" + _JS + "</script></body></html>\n")
    page = "".join(parts)
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


_KV_CSS = ".kvev{color:#b0b0b0;text-decoration:line-through}.kvpart{opacity:.55}"


def _kv_prompt_html(trace: Trace, b: int) -> str | None:
    """Row ``b``'s prompt, one span per token, greyed where ``fuq.generate(kv_budget=...)`` evicted it;
    None when the trace has no KV record with prompt tokens."""
    kvm = trace.meta.get("kv") or {}
    pieces, kept = kvm.get("prompt_tokens"), kvm.get("kept_prompt")
    if not pieces or not kept or b >= len(pieces) or len(pieces[b]) != len(kept[b]):
        return None
    out = []
    for piece, share in zip(pieces[b], kept[b], strict=True):
        cls = "prompt kvev" if share == 0 else ("prompt kvpart" if share < 1 else "prompt")
        tip = html.escape(f"kept in {100 * share:.0f}% of full-attention KV heads", quote=True)
        out.append(f'<span class="{cls}" title="{tip}">{_token_html(piece)}</span>')
    return "".join(out)


def _scores_html(summaries: list[dict[str, Any]]) -> str:
    if not summaries:
        return ""
    esc = html.escape
    head = "".join(f"<th>{'value' if len(summaries) == 1 else f'seq {b}'}</th>" for b in range(len(summaries)))
    out = [f"<table class='scores'><caption>sequence scores</caption><tr><th>score</th>{head}<th></th></tr>"]
    for key in summaries[0]:
        if key == "epr_k":
            continue
        label = f"epr (K={summaries[0]['epr_k']})" if key == "epr" else key
        cells = "".join(f"<td>{esc(_fmt(s[key]))}</td>" for s in summaries)
        out.append(f"<tr><td>{esc(label)}</td>{cells}<td class='m'>{esc(_SCORE_HELP.get(key, ''))}</td></tr>")
    out.append("</table>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# prompt compression (fuq.prune.compress)

_PRUNE_CSS = """
.ptok{border-radius:3px;padding:1px 0} .ptok:hover{outline:2px solid #333}
s.ptok{opacity:.55;text-decoration:line-through;text-decoration-color:#a00;text-decoration-thickness:2px}
.forced{box-shadow:inset 0 -2px 0 #36c}
.out{font:14px/1.7 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;
     border:1px solid #ddd;border-radius:6px;padding:.8em 1em;background:#f7fff7}
"""


def prune_shades(result) -> list[float]:
    """Per token of a :class:`fuq.prune.CompressResult`: 1 − the percentile of the score that decided it.

    The score that decided is the token's own for ``unit="token"``, its word's or sentence's
    (the sum over the unit) otherwise, so a unit's tokens share one shade. 1 (green) for the
    lowest, dropped first; 0 (red) for the highest, kept first; ``inf`` scores (always kept)
    count as the highest. Same scale as :func:`color`.
    """
    s = result.unit_scores[result.unit_of_token].tolist()
    T = len(s)
    if T == 1:
        return [0.0]
    order = sorted(range(T), key=lambda i: s[i])
    out = [0.0] * T
    for r, i in enumerate(order):
        out[i] = 1.0 - r / (T - 1)
    return out


def render_prune_html(result, path: str | Path | None = None, *, title: str = "fuq — prompt compression") -> str:
    """A self-contained HTML page of one or more compression results (``fuq.prune.compress``).

    Every token is a ``<span class="ptok">`` (kept) or ``<s class="ptok">`` (dropped, struck
    through), shaded by :func:`prune_shades` (red: high score, kept first; green: low score,
    dropped first; by unit score for words and sentences), with its score and unit in the
    ``title`` tooltip; tokens kept by ``keep=`` are underlined in blue. Then the compressed text.

    Args:
        result: a ``CompressResult`` or a list of them.
        path: where to write the page (UTF-8), or None.
        title: the page title.

    Returns:
        The page as a string.

    Example:
        >>> r = fuq.prune.compress(text, model, tok, rate=0.5)  # doctest: +SKIP
        >>> fuq.viz.render_prune_html(r, "pruned.html")  # doctest: +SKIP
    """
    results = result if isinstance(result, (list, tuple)) else [result]
    esc = html.escape
    parts = [
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{esc(title)}</title><style>{_CSS}{_PRUNE_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    legend = ["<div class='legend'>shade = score rank:"]
    for c, label in ((0.0, "highest (kept first)"), (0.5, "median"), (1.0, "lowest (dropped first)")):
        legend.append(f"<span class='sw' style='background:{_hex(color(c, 0.78, 0.8))}'></span>{label}")
    legend.append(" — <s>struck through</s>: dropped; hover a token for its score</div>")
    parts.append("".join(legend))
    for n, r in enumerate(results):
        what = "question contrast" if r.question else "self-information, nats"
        info = (
            f"method {r.method}, unit {r.unit}; kept {int(r.kept.sum())} of {r.num_tokens} tokens "
            f"(rate {r.rate:.3f}, asked {r.target_rate:.3f}); {r.compressed_tokens} tokens when re-tokenized; "
            f"score: {what}; windows {r.windows}"
        )
        if len(results) > 1:
            parts.append(f"<h2>Text {n}</h2>")
        parts.append(f"<p class='meta'>{esc(info)}</p>")
        if r.question:
            parts.append(f"<p class='meta'>question: {esc(r.question)}</p>")
        parts.append("<div class='text'>")
        shades = prune_shades(r)
        rows = zip(r.tokens, r.kept.tolist(), r.token_scores.tolist(), r.unit_of_token.tolist(), r.forced.tolist(),
                   shades, strict=True)
        for i, (piece, kept, score, unit, forced, c) in enumerate(rows):
            tag = "span" if kept else "s"
            cls = "ptok forced" if forced else "ptok"
            tip = f"token {i}, score {_fmt(score)}; unit {unit}, score {_fmt(float(r.unit_scores[unit]))}"
            tip += ", kept by keep=" if forced else ""
            parts.append(
                f'<{tag} class="{cls}" title="{esc(tip, quote=True)}" '
                f'style="background:{_hex(color(c, 0.82, 0.75))}">{_token_html(piece)}</{tag}>'
            )
        parts.append("</div><h2>Compressed text</h2>")
        parts.append(f"<div class='out'>{esc(r.text)}</div>")
    parts.append("</body></html>\n")
    page = "".join(parts)
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


def render_prune_terminal(result, console=None) -> None:
    """Print a compression result with rich: dropped tokens struck through and dimmed, shaded by score rank."""
    from rich.console import Console
    from rich.text import Text

    console = console if console is not None else Console()
    t = Text()
    for piece, kept, c in zip(result.tokens, result.kept.tolist(), prune_shades(result), strict=True):
        r, g, b = color(c)
        t.append(piece, style=f"rgb({r},{g},{b})" + ("" if kept else " strike dim"))
    console.print(t)

__all__ += ["render_prune_html", "render_prune_terminal", "prune_shades"]

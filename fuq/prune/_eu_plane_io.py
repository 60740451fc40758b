"""JSONL in, JSONL out for :func:`fuq.prune.eu_plane`: streaming, resumable, and the plot of the plane.

The quantile thresholds need every sample's scores before any sample can be decided,
so a file goes through two passes:

1. **Scoring** (the model, the slow part) streams the input in windows of
   ``batch_size · window`` samples; each window is sorted by length and cut into batches
   (little padding), and every finished batch is appended as one JSON line to a side
   file, ``OUT.scores.jsonl``: the scores of its samples (error, uncertainty, per-token
   ``-log p`` and the response token ids). A closing line per window records where it
   ends in the input (line number, byte offset) and its bad lines. The first line of the
   side file names the input, its size and the model. After an interruption the next run
   drops a half-written last line, seeks the input to the end of the last closed window,
   rereads the open one and scores only the samples that no written batch holds:
   finished batches are never redone. A run over a finished side file does no model
   work at all (change ``sample_keep`` or ``token_keep`` and rerun: free).
2. **Decision** (no model, seconds) reads the scores of all samples (two floats per
   sample in memory), finds the thresholds, then streams the input and the side file
   side by side and writes the output to ``OUT.tmp``, renamed to ``OUT`` at the end:
   an interrupted decision pass leaves no partial output and is simply rerun.

Each output line is the input object with one more key, ``"eu_plane"`` (quadrant, scores,
ranks, the response token ids and the per-token loss mask over them). Bad lines (not JSON,
not an object, no prompt/response, an empty response, longer than ``max_length``, …) are
reported with their line number and reason, as they are met and in the summary, and left
out of the output.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ._eu_plane import (
    QUADRANTS,
    Scored,
    _Bar,
    _check_args,
    _max_length,
    _pad_id,
    decide,
    encode_checked,
    score_batch,
    token_loss_mask,
)

__all__ = ["eu_plane_jsonl", "plot_plane"]

_FORMAT = 1


def _model_name(model) -> str:
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "_name_or_path", None) or type(model).__name__)


def _header(model, tokenizer, src: Path, chat, max_length) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return {
        "fuq_eu_plane_scores": _FORMAT,
        "input": str(src.resolve()),
        "input_bytes": src.stat().st_size,
        "model": _model_name(model),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "tokenizer_size": len(tokenizer) if hasattr(tokenizer, "__len__") else None,
        "chat": chat,
        "max_length": max_length,
    }


def _read_records(path: Path) -> tuple[dict | None, list[dict], int]:
    """(header, batch records, byte length of the good prefix) of a side file; a torn last line is ignored."""
    header, recs, good = None, [], 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                obj = json.loads(raw)
            except ValueError:
                break
            if header is None:
                header = obj
            else:
                recs.append(obj)
            good += len(raw)
    return header, recs, good


def _parse_line(raw: bytes, tokenizer, chat, max_length) -> tuple[dict, list[int], list[bool]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ValueError("blank line")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object but a {type(obj).__name__}")
    ids, resp = encode_checked(tokenizer, obj, chat, max_length)
    return obj, ids, resp


def _sample_record(line: int, s: Scored) -> dict[str, Any]:
    return {"line": line, "error": s.error, "uncertainty": s.uncertainty, "nll": s.token_nll.tolist(),
            "ids": s.response_ids}


def _score_pass(model, tokenizer, src: Path, side: Path, *, batch_size, window, chat, max_length, restart, progress,
                on_bad) -> dict[str, int]:
    """Pass 1: append the scores of every unfinished batch to ``side``; returns counters of this run.

    The input is read in windows of ``batch_size · window`` valid samples; a window is sorted
    by length and cut into batches (less padding), each batch written as it finishes; a closing
    record marks the window done (its end in the input, its bad lines). A resumed run rereads
    an unfinished window and scores only the samples no written batch holds.
    """
    header = _header(model, tokenizer, src, chat, max_length)
    recs: list[dict] = []
    if side.exists() and not restart:
        old, recs, good = _read_records(side)
        if old is None:
            recs = []
        elif old != header:
            diff = sorted(k for k in header if old.get(k) != header[k])
            raise ValueError(
                f"{side} holds scores of another run (differs in {', '.join(diff)}); "
                "delete it or pass restart=True (--restart) to score from scratch"
            )
        if old is not None:
            with open(side, "r+b") as f:  # drop a line torn by the interruption
                f.truncate(good)
    if recs and recs[-1].get("done"):
        return {"batches": 0, "samples": 0, "resumed_at_line": recs[-1]["lines"]}
    if not recs or side.stat().st_size == 0 or restart:
        with open(side, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
        recs = []
    closed = max((j for j, r in enumerate(recs) if "end_offset" in r), default=-1)
    line = recs[closed]["end_line"] if closed >= 0 else 0
    offset = recs[closed]["end_offset"] if closed >= 0 else 0
    done = {x["line"] for r in recs[closed + 1 :] for x in r["samples"]}  # batches of an unfinished window
    n_batch = recs[-1]["batch"] + 1 if recs else 0
    counters = {"batches": 0, "samples": 0, "resumed_at_line": line}
    pad = _pad_id(tokenizer)
    bar = _Bar(src.stat().st_size, "eu-plane: scoring", unit="bytes") if progress else None
    if bar:
        bar.advance(offset)

    def write(out, rec: dict[str, Any]) -> None:
        nonlocal n_batch
        out.write(json.dumps(dict(rec, batch=n_batch)) + "\n")
        out.flush()
        n_batch += 1

    with open(src, "rb") as f, open(side, "a", encoding="utf-8") as out:
        f.seek(offset)
        eof = False
        while not eof:
            todo, bad, n_valid = [], [], 0
            while n_valid < batch_size * window:
                raw = f.readline()
                if not raw:
                    eof = True
                    break
                line += 1
                if line in done:
                    n_valid += 1
                    continue
                try:
                    _, ids, resp = _parse_line(raw.rstrip(b"\r\n"), tokenizer, chat, max_length)
                except ValueError as exc:
                    bad.append({"line": line, "reason": str(exc)})
                    if on_bad:
                        on_bad(line, str(exc))
                    continue
                todo.append((line, ids, resp))
                n_valid += 1
            todo.sort(key=lambda t: len(t[1]))  # stable: equal lengths stay in line order
            for b in range(0, len(todo), batch_size):
                chunk = todo[b : b + batch_size]
                rec = _score_chunk(model, chunk, pad, on_bad)
                bad += rec.pop("bad_after")
                write(out, rec)
                counters["batches"] += 1
                counters["samples"] += len(chunk)
                if bar:
                    bar.advance(0, f"{counters['samples']} samples this run, line {chunk[-1][0]}")
            write(out, {"end_line": line, "end_offset": f.tell(), "samples": [],
                        "bad": sorted(bad, key=lambda x: x["line"])})
            if bar:
                bar.advance(f.tell() - offset)
            offset = f.tell()
        out.write(json.dumps({"done": True, "lines": line}) + "\n")
        out.flush()
    if bar:
        bar.close()
    return counters


def _score_chunk(model, chunk, pad: int, on_bad) -> dict[str, Any]:
    """One batch record; samples whose scores are not finite (a broken model) become bad lines."""
    scored = score_batch(model, [(i, r) for _, i, r in chunk], pad_id=pad)
    rec: dict[str, Any] = {"samples": [], "bad": [], "bad_after": []}
    for (n, _, _), s in zip(chunk, scored, strict=True):
        if math.isfinite(s.error) and math.isfinite(s.uncertainty):
            rec["samples"].append(_sample_record(n, s))
        else:
            why = f"non-finite scores (error {s.error}, uncertainty {s.uncertainty})"
            rec["bad_after"].append({"line": n, "reason": why})
            if on_bad:
                on_bad(n, why)
    return rec


def _iter_records(side: Path) -> Iterator[dict]:
    with open(side, encoding="utf-8") as f:
        next(f)
        for raw in f:
            yield json.loads(raw)


def _iter_samples(side: Path) -> Iterator[dict]:
    """The scored samples in input-line order (each window's batches are sorted by length on disk)."""
    buf: list[dict] = []
    for rec in _iter_records(side):
        buf += rec.get("samples", [])
        if "end_offset" in rec or rec.get("done"):
            yield from sorted(buf, key=lambda x: x["line"])
            buf = []
    yield from sorted(buf, key=lambda x: x["line"])


def _decide_pass(src: Path, side: Path, dst: Path, *, sample_keep, token_keep, lam, kept_only) -> dict[str, Any]:
    """Pass 2: thresholds from all scores, then the output, streamed; returns the summary."""
    lines, err, unc, bad = [], [], [], []
    for rec in _iter_records(side):
        bad += rec.get("bad", [])
    for x in _iter_samples(side):
        lines.append(x["line"])
        err.append(x["error"])
        unc.append(x["uncertainty"])
    bad.sort(key=lambda b: b["line"])
    if not lines:
        raise ValueError(f"{src}: no valid sample to decide on ({len(bad)} bad lines)")
    d = decide(torch.tensor(err, dtype=torch.float64), torch.tensor(unc, dtype=torch.float64),
               sample_keep=sample_keep)
    at = {n: j for j, n in enumerate(lines)}
    tmp = dst.with_name(dst.name + ".tmp")
    kept_tokens = all_tokens = written = 0
    with open(src, "rb") as f, open(tmp, "w", encoding="utf-8") as out:
        recs = _iter_samples(side)
        nxt = next(recs, None)
        for n, raw in enumerate(f, start=1):
            if nxt is None or nxt["line"] != n:
                continue
            j = at[n]
            q = d.quadrant[j]
            nll = torch.tensor(nxt["nll"], dtype=torch.float64)
            if q == "Q2":
                mask = token_loss_mask(nll, token_keep, lam)
            else:
                mask = torch.full((nll.numel(),), q == "Q4", dtype=torch.bool)
            kept_tokens += int(mask.sum()) if bool(d.keep[j]) else 0
            all_tokens += nll.numel()
            if bool(d.keep[j]) or not kept_only:
                obj = json.loads(raw)
                obj["eu_plane"] = {
                    "quadrant": q,
                    "label": QUADRANTS[q][0],
                    "keep": bool(d.keep[j]),
                    "error": nxt["error"],
                    "uncertainty": nxt["uncertainty"],
                    "error_rank": float(d.error_rank[j]),
                    "uncertainty_rank": float(d.uncertainty_rank[j]),
                    "n_tokens": nll.numel(),
                    "n_loss_tokens": int(mask.sum()),
                    "token_ids": nxt["ids"],
                    "loss_mask": mask.to(torch.uint8).tolist(),
                }
                out.write(json.dumps(obj, ensure_ascii=False) + "\n")
                written += 1
            nxt = next(recs, None)
    os.replace(tmp, dst)
    return {
        "samples": len(lines),
        "kept": int(d.keep.sum()),
        "written": written,
        "target": d.target,
        "quadrants": d.counts(),
        "level_q": d.level,
        "thresholds": d.thresholds,
        "kept_response_tokens": kept_tokens,
        "response_tokens": all_tokens,
        "bad_lines": bad,
        "error": err,
        "uncertainty": unc,
        "quadrant": d.quadrant,
    }


def eu_plane_jsonl(
    model,
    tokenizer,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    sample_keep: float = 0.5,
    token_keep: float = 0.7,
    lam: float = 0.5,
    batch_size: int = 8,
    window: int = 16,
    chat: bool | None = None,
    max_length: int | None = None,
    scores: str | os.PathLike | None = None,
    restart: bool = False,
    kept_only: bool = False,
    progress: bool = True,
    on_bad: Callable[[int, str], None] | None = None,
    plot: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """:func:`fuq.prune.eu_plane` over a JSONL file, streamed and resumable (see this module's docstring).

    Args:
        model, tokenizer, sample_keep, token_keep, lam, batch_size, chat, max_length: as in
            :func:`fuq.prune.eu_plane`.
        src: input JSONL, one sample per line (``{"prompt", "response"}``, Alpaca's
            ``{"instruction", "input", "output"}`` or ``{"messages": [...]}``; other keys are kept).
        dst: output JSONL (written whole at the end, atomically).
        window: batches per window; the samples of a window are sorted by length before they are
            cut into batches, so that little padding is computed (1: batches in input order).
        scores: the side file of pass 1 (default ``dst + ".scores.jsonl"``); kept afterwards.
        restart: score from scratch even if the side file holds finished batches.
        kept_only: write only the kept samples (default: all, with ``keep`` true/false).
        progress: rich progress bar over the input bytes.
        on_bad: called ``(line_number, reason)`` for each bad line as it is met.
        plot: also draw the plane to this file (see :func:`plot_plane`).

    Returns:
        A summary dict: ``samples``, ``kept``, ``written``, ``quadrants`` (counts), ``level_q``,
        ``thresholds``, ``kept_response_tokens`` / ``response_tokens``, ``bad_lines``
        (``[{"line", "reason"}]``), ``this_run`` (batches and samples scored now,
        ``resumed_at_line``), ``scores`` (the side file), ``plot`` (the file written), and
        per sample ``error``, ``uncertainty``, ``quadrant``.

    Example:
        >>> s = eu_plane_jsonl(model, tok, "sft.jsonl", "sft.pruned.jsonl", plot="plane.png")  # doctest: +SKIP
        >>> s["quadrants"], s["bad_lines"][:3]  # doctest: +SKIP
    """
    sk, tk, lm = _check_args(sample_keep, token_keep, lam, batch_size)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"input {str(src)!r} is not a file")
    if src.resolve() == dst.resolve():
        raise ValueError("the output must not be the input file")
    side = Path(scores) if scores is not None else dst.with_name(dst.name + ".scores.jsonl")
    L = _max_length(model, max_length)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    run = _score_pass(model, tokenizer, src, side, batch_size=batch_size, window=window, chat=chat, max_length=L,
                      restart=restart, progress=progress, on_bad=on_bad)
    summary = _decide_pass(src, side, dst, sample_keep=sk, token_keep=tk, lam=lm, kept_only=kept_only)
    summary["this_run"] = run
    summary["scores"] = str(side)
    summary["sample_keep"], summary["token_keep"], summary["lam"] = sk, tk, lm
    if plot is not None:
        summary["plot"] = plot_plane(summary["error"], summary["uncertainty"], summary["quadrant"],
                                     summary["thresholds"], plot, title=f"{src.name}: {_model_name(model)}")
    return summary


# ---------------------------------------------------------------------------------------------
# the plot

_COLOURS = {"Q1": "#d62728", "Q2": "#ff7f0e", "Q3": "#7f7f7f", "Q4": "#1f77b4"}


def _legend(quadrant: list[str]) -> dict[str, str]:
    return {q: f"{q} {QUADRANTS[q][0]} ({'kept' if QUADRANTS[q][1] else 'dropped'}): {quadrant.count(q)}"
            for q in QUADRANTS}


def plot_plane(error, uncertainty, quadrant: list[str], thresholds: dict[str, float], path: str | os.PathLike,
               *, title: str = "error-uncertainty plane") -> str:
    """Draw the plane: error (perplexity, log axis) against uncertainty (mean entropy), thresholds, quadrants.

    ``path`` ending in ``.html`` gives a self-contained SVG scatter page; any other suffix is
    drawn with matplotlib when it is installed, else the HTML page is written next to it
    (same name, ``.html``). Returns the path written.
    """
    path = Path(path)
    e = [float(x) for x in error]
    u = [float(x) for x in uncertainty]
    if path.suffix.lower() not in (".html", ".htm"):
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            path = path.with_suffix(".html")
        else:
            return _plot_matplotlib(plt, e, u, quadrant, thresholds, path, title)
    path.write_text(_plot_html(e, u, quadrant, thresholds, title), encoding="utf-8")
    return str(path)


def _plot_matplotlib(plt, e, u, quadrant, thr, path: Path, title: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 5.2), dpi=120)
    lo_e, hi_e = min(e) / 1.15, max(e) * 1.15
    pad_u = 0.05 * (max(u) - min(u) or 1.0)
    lo_u, hi_u = min(u) - pad_u, max(u) + pad_u
    ax.fill_between([thr["error_hi"], hi_e], thr["uncertainty_hi"], hi_u, color=_COLOURS["Q1"], alpha=0.08, lw=0)
    ax.fill_between([lo_e, thr["error_lo"]], lo_u, thr["uncertainty_lo"], color=_COLOURS["Q3"], alpha=0.12, lw=0)
    names = _legend(quadrant)
    for q in QUADRANTS:
        idx = [i for i, x in enumerate(quadrant) if x == q]
        ax.scatter([e[i] for i in idx], [u[i] for i in idx], s=16, c=_COLOURS[q], label=names[q],
                   marker="o" if QUADRANTS[q][1] else "x", linewidths=1)
    for k in ("error_lo", "error_hi"):
        ax.axvline(thr[k], color="k", ls="--", lw=0.8)
    for k in ("uncertainty_lo", "uncertainty_hi"):
        ax.axhline(thr[k], color="k", ls=":", lw=0.8)
    ax.set_xscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo_e, hi_e)
    ax.set_ylim(lo_u, hi_u)
    ax.set_xlabel("error: perplexity of the response (log scale)")
    ax.set_ylabel("uncertainty: mean entropy of the response (nats)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def _plot_html(e, u, quadrant, thr, title: str) -> str:
    W, H, M = 720, 520, 60
    le = [math.log10(x) for x in e]
    x0, x1 = min(le) - 0.05, max(le) + 0.05
    pad = 0.05 * (max(u) - min(u) or 1.0)
    y0, y1 = min(u) - pad, max(u) + pad

    def X(v: float) -> float:
        return M + (math.log10(v) - x0) / (x1 - x0 or 1.0) * (W - 2 * M)

    def Y(v: float) -> float:
        return H - M - (v - y0) / (y1 - y0 or 1.0) * (H - 2 * M)

    def clampx(v):
        return min(max(X(v), M), W - M)

    def clampy(v):
        return min(max(Y(v), M), H - M)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
             'font-size="11">', f'<rect x="{M}" y="{M}" width="{W - 2 * M}" height="{H - 2 * M}" fill="none" '
             'stroke="#444"/>']
    ax, ay = clampx(thr["error_hi"]), clampy(thr["uncertainty_hi"])
    parts.append(f'<rect x="{ax:.1f}" y="{M}" width="{W - M - ax:.1f}" height="{ay - M:.1f}" '
                 f'fill="{_COLOURS["Q1"]}" fill-opacity="0.08"/>')
    bx, by = clampx(thr["error_lo"]), clampy(thr["uncertainty_lo"])
    parts.append(f'<rect x="{M}" y="{by:.1f}" width="{bx - M:.1f}" height="{H - M - by:.1f}" '
                 f'fill="{_COLOURS["Q3"]}" fill-opacity="0.12"/>')
    for k in ("error_lo", "error_hi"):
        x = clampx(thr[k])
        parts.append(f'<line x1="{x:.1f}" y1="{M}" x2="{x:.1f}" y2="{H - M}" stroke="#000" stroke-dasharray="5,3"/>')
    for k in ("uncertainty_lo", "uncertainty_hi"):
        y = clampy(thr[k])
        parts.append(f'<line x1="{M}" y1="{y:.1f}" x2="{W - M}" y2="{y:.1f}" stroke="#000" stroke-dasharray="2,3"/>')
    for d in range(math.floor(x0), math.ceil(x1) + 1):  # decades, and 2x / 5x between them
        for m in (1, 2, 5):
            v = m * 10.0**d
            if x0 <= math.log10(v) <= x1:
                parts.append(f'<text x="{X(v):.1f}" y="{H - M + 15}" text-anchor="middle">{v:g}</text>')
    for j in range(6):
        v = y0 + (y1 - y0) * j / 5
        parts.append(f'<text x="{M - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    for i, (a, b, q) in enumerate(zip(e, u, quadrant, strict=True)):
        tip = html.escape(f"#{i}: error {a:.3g}, uncertainty {b:.3g} nats, {q} {QUADRANTS[q][0]}")
        parts.append(f'<circle cx="{X(a):.1f}" cy="{Y(b):.1f}" r="4" fill="{_COLOURS[q]}" fill-opacity="0.8">'
                     f"<title>{tip}</title></circle>")
    parts.append(f'<text x="{W / 2}" y="{H - 15}" text-anchor="middle">error: perplexity of the response '
                 "(log scale)</text>")
    parts.append(f'<text x="15" y="{H / 2}" text-anchor="middle" transform="rotate(-90 15 {H / 2})">'
                 "uncertainty: mean entropy of the response (nats)</text>")
    parts.append(f'<text x="{W / 2}" y="25" text-anchor="middle" font-size="13">{html.escape(title)}</text>')
    parts.append("</svg>")
    legend = "".join(f'<li><span style="color:{_COLOURS[q]}">&#9679;</span> {html.escape(t)}</li>'
                     for q, t in _legend(quadrant).items())
    lines = ", ".join(f"{k} = {v:.4g}" for k, v in thr.items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title></head>"
            "<body style='font-family:sans-serif'>" + "".join(parts) + f"<ul style='list-style:none'>{legend}</ul>"
            f"<p>Thresholds (dashed: error, dotted: uncertainty): {html.escape(lines)}. Shaded: the dropped corners "
            "(top right: noise, bottom left: already known).</p></body></html>")

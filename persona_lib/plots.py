"""Every matplotlib figure in persona-lab: plain functions that take data and return a Figure.

Figures are built on matplotlib's Agg canvas without pyplot, so nothing here touches global
plotting state, works on a headless box, and still displays in a notebook when returned from a
cell. Pass `path=` to also save the figure (atomically; the format follows the suffix).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Sequence

from persona_lib.io import atomic_write_bytes


def new_figure(width: float = 7.0, height: float = 4.0):
    """An empty Figure on the Agg canvas (matplotlib is imported here, not at package import)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    _show_inline(Figure)
    return fig


def _show_inline(figure_type) -> None:
    """In IPython, display a returned Figure as a PNG. pyplot's inline backend registers this
    formatter; figures made without pyplot would otherwise show as `<Figure size ...>` text."""
    from IPython import get_ipython  # ipykernel brings IPython wherever a notebook runs

    shell = get_ipython()
    if shell is None:
        return
    from IPython.core.pylabtools import print_figure

    shell.display_formatter.formatters["image/png"].for_type(figure_type, lambda fig: print_figure(fig, "png"))


def save_figure(fig, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save atomically: readers see the old image or the new one, never half a PNG."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def _finish(fig, path):
    if path is not None:
        save_figure(fig, path)
    return fig


def token_length_histogram(example_lengths: Sequence[int], assistant_lengths: Sequence[int] | None = None, *,
                           unit: str = "tokens", max_tokens: int | None = None, bins: int = 40,
                           title: str = "Conversation length", path: str | os.PathLike | None = None):
    """Histogram of whole-example lengths (and the assistant replies' share, if given), with the
    model's `max_tokens` marked: examples past the line would be cut off in training."""
    fig = new_figure()
    ax = fig.add_subplot()
    top = max([*example_lengths, *(assistant_lengths or []), max_tokens or 0, 1])
    edges = [top * k / bins for k in range(bins + 1)]
    ax.hist(example_lengths, bins=edges, alpha=0.75, label="whole example")
    if assistant_lengths is not None:
        ax.hist(assistant_lengths, bins=edges, alpha=0.6, label="assistant replies")
    if max_tokens is not None:
        ax.axvline(max_tokens, color="crimson", linestyle="--", label=f"max_tokens = {max_tokens}")
    ax.set_xlabel(f"length per conversation ({unit})")
    ax.set_ylabel("conversations")
    ax.set_title(title)
    ax.legend()
    return _finish(fig, path)


def topic_coverage_bar(topic_counts: Mapping[str, int], *, min_count: int | None = None,
                       title: str = "Conversations per topic", path: str | os.PathLike | None = None):
    """Horizontal bars, most-covered topic on top; `min_count` draws the coverage target and
    colours the topics below it, which are the ones to write or generate more data for."""
    items = sorted(topic_counts.items(), key=lambda kv: (kv[1], kv[0]))
    fig = new_figure(7.0, max(2.5, 0.3 * len(items) + 1.2))
    ax = fig.add_subplot()
    names = [name or "(no topic)" for name, _ in items]
    counts = [count for _, count in items]
    colours = ["tab:orange" if min_count is not None and c < min_count else "tab:blue" for c in counts]
    ax.barh(names, counts, color=colours)
    if min_count is not None:
        ax.axvline(min_count, color="crimson", linestyle="--", label=f"target: {min_count}")
        ax.legend(loc="best")
    ax.set_xlabel("conversations")
    ax.set_title(title)
    return _finish(fig, path)


def duplicate_similarity_histogram(similarities: Sequence[float], threshold: float, *, bins: int = 40,
                                   title: str = "Near-duplicate candidates",
                                   path: str | os.PathLike | None = None):
    """Exact Jaccard of every MinHash/LSH candidate pair, with the dedup threshold marked:
    pairs right of the line were dropped as near-duplicates, the rest were kept."""
    fig = new_figure()
    ax = fig.add_subplot()
    edges = [k / bins for k in range(bins + 1)]
    dropped = sum(s >= threshold for s in similarities)
    ax.hist(similarities, bins=edges, color="tab:blue")
    ax.axvline(threshold, color="crimson", linestyle="--",
               label=f"threshold {threshold:g}: {dropped} of {len(similarities)} pairs at or above")
    ax.set_xlim(0, 1)
    ax.set_xlabel("Jaccard similarity of word-shingle sets")
    ax.set_ylabel("candidate pairs")
    ax.set_title(title)
    ax.legend()
    return _finish(fig, path)


def loss_curve(log_rows: Sequence[Mapping], *, title: str = "Training loss",
               path: str | os.PathLike | None = None):
    """Train loss per logged step (with a 5-step mean) and validation loss at each evaluation
    (persona_lib.train's loss log rows: {"step", "loss"} or {"step", "eval_loss"}). A validation
    curve that turns up while the train loss keeps falling is the model memorising the examples'
    wording. The loss is over assistant tokens only."""
    fig = new_figure()
    ax = fig.add_subplot()
    train = [(r["step"], r["loss"]) for r in log_rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in log_rows if "eval_loss" in r]
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=1.0, label="train, per step")
        # Steps differ in their batch's conversations; a 5-step mean shows the trend.
        mean = [sum(losses[max(0, k - 4):k + 1]) / len(losses[max(0, k - 4):k + 1]) for k in range(len(losses))]
        ax.plot(steps, mean, color="tab:blue", linewidth=2.0, label="train, 5-step mean")
    if evals:
        ax.plot(*zip(*evals), color="tab:orange", marker="o", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    return _finish(fig, path)


def sweep_figure(rows: Sequence[Mapping], *, baseline: Mapping | None = None,
                 title: str = "How many examples, which rank?", path: str | os.PathLike | None = None):
    """Two panels over the number of training examples, one line per LoRA rank: the persona
    measure (signature-vocabulary rate) and knowledge recall. `rows` hold "examples", "rank",
    "signature_rate" and "knowledge_recall"; `baseline` (the untuned model) is drawn dashed."""
    fig = new_figure(10.0, 4.0)
    panels = [("signature_rate", "replies with a signature phrase"), ("knowledge_recall", "knowledge facts recalled")]
    for k, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        for rank in sorted({r["rank"] for r in rows}):
            pts = sorted((r["examples"], r[key]) for r in rows if r["rank"] == rank)
            ax.plot(*zip(*pts), marker="o", label=f"rank {rank}")
        if baseline is not None:
            ax.axhline(baseline[key], color="grey", linestyle="--", label="base model")
        ax.set_xlabel("training examples")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _finish(fig, path)


# --------------------------------------------------------------------------- evaluation (lesson 5)


def _interval(ci: Mapping | None) -> tuple[float, float, float]:
    """(value, lower error, upper error) of a {"mean", "low", "high"} interval; NaN when empty."""
    if not ci or ci.get("mean") is None:
        return float("nan"), 0.0, 0.0
    return ci["mean"], ci["mean"] - ci["low"], ci["high"] - ci["mean"]


def interval_bars(groups: Mapping[str, Mapping[str, Mapping]], *, ylabel: str, ylim: tuple[float, float] | None = None,
                  title: str = "", path: str | os.PathLike | None = None):
    """Grouped bars with 95% interval whiskers: one colour per series (e.g. a system), one group
    per measure (e.g. a trait). `groups` is {series: {measure: {"mean", "low", "high"}}}."""
    series = list(groups)
    measures = list(dict.fromkeys(m for s in series for m in groups[s]))
    fig = new_figure(max(6.0, 1.3 * len(measures) + 2.5), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for k, name in enumerate(series):
        values = [_interval(groups[name].get(m)) for m in measures]
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(measures))]
        ax.bar(xs, [v[0] for v in values], width, label=name,
               yerr=[[v[1] for v in values], [v[2] for v in values]], capsize=3)
    ax.set_xticks(range(len(measures)), [m.replace("_", " ") for m in measures], rotation=15)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", ncols=min(len(series), 4))
    return _finish(fig, path)


def win_rate_bars(rates: Mapping[str, Mapping], *, title: str = "Pairwise win rate of the tuned model (ties = 1/2)",
                  path: str | os.PathLike | None = None):
    """Horizontal win-rate bars with 95% intervals and the 0.5 line (no better, no worse):
    `rates` is {comparison: {"mean", "low", "high", "wins", "ties", "losses"}}."""
    names = list(rates)
    fig = new_figure(7.0, max(2.2, 0.6 * len(names) + 1.2))
    ax = fig.add_subplot()
    values = [_interval(rates[n]) for n in names]
    ax.barh(names, [v[0] for v in values], xerr=[[v[1] for v in values], [v[2] for v in values]], capsize=4,
            color="tab:green")
    for i, n in enumerate(names):
        r = rates[n]
        ax.text(0.01, i, f"{r.get('wins', 0)}W {r.get('ties', 0)}T {r.get('losses', 0)}L", va="center",
                color="white", fontsize="small")
    ax.axvline(0.5, color="crimson", linestyle="--", label="0.5: no preference")
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _finish(fig, path)


def length_boxplot(lengths: Mapping[str, Sequence[float]], *, unit: str = "words", title: str = "Reply length",
                   path: str | os.PathLike | None = None):
    """One box per system (median, quartiles, whiskers at 1.5 IQR, outliers as dots) with each
    reply drawn as a faint dot: a system that rambles or collapses to one length stands out."""
    names = list(lengths)
    fig = new_figure(max(6.0, 1.4 * len(names) + 2.0), 4.0)
    ax = fig.add_subplot()
    data = [list(lengths[n]) or [0] for n in names]
    ax.boxplot(data, tick_labels=names)
    for i, values in enumerate(data, start=1):
        jitter = [i + 0.15 * ((k * 0.618) % 1 - 0.5) for k in range(len(values))]
        ax.plot(jitter, values, ".", alpha=0.35, color="tab:blue")
    ax.set_ylabel(f"reply length ({unit})")
    ax.set_title(title)
    return _finish(fig, path)


def persona_probability_heatmap(distributions: Mapping[str, Mapping[str, float]], *,
                                title: str = "Which persona does the classifier hear?",
                                path: str | os.PathLike | None = None):
    """Rows: systems (or adapters); columns: personas; cells: the mean classifier probability.
    A persona-tuned model lights up its own column; bleed shows as colour elsewhere."""
    rows = list(distributions)
    cols = list(dict.fromkeys(c for r in rows for c in distributions[r]))
    values = [[distributions[r].get(c, 0.0) for c in cols] for r in rows]
    fig = new_figure(max(5.0, 1.6 * len(cols) + 2.5), max(2.5, 0.55 * len(rows) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [c.replace("_", " ") for c in cols])
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black")
    fig.colorbar(image, ax=ax, label="mean probability")
    ax.set_title(title)
    return _finish(fig, path)


def drift_lines(per_turn: Mapping[str, Sequence[Mapping]], *, ylabel: str,
                title: str = "Persona over a scripted dialogue", path: str | os.PathLike | None = None):
    """A persona measure per dialogue turn, one line per system with a 95% band: does the
    persona hold to the last turn, or fade back into the generic assistant?"""
    fig = new_figure()
    ax = fig.add_subplot()
    for name, cis in per_turn.items():
        turns = list(range(1, len(cis) + 1))
        values = [_interval(c) for c in cis]
        mean = [v[0] for v in values]
        ax.plot(turns, mean, marker="o", label=name)
        ax.fill_between(turns, [m - v[1] for m, v in zip(mean, values)], [m + v[2] for m, v in zip(mean, values)],
                        alpha=0.2)
    ax.set_xticks(range(1, 1 + max((len(c) for c in per_turn.values()), default=0)))
    ax.set_xlabel("turn")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend()
    return _finish(fig, path)


def memory_traces(traces: Mapping[str, Sequence[Mapping]], *, title: str = "Memory of a CPU training",
                  path: str | os.PathLike | None = None):
    """Resident memory (solid) and the size of glibc's heap (dashed) after every update, one
    colour per setting (`bench/bench_kept_memory.py`): does the process level off or keep growing?"""
    fig = new_figure()
    ax = fig.add_subplot()
    for name, rows in traces.items():
        steps = [r["step"] for r in rows]
        (line,) = ax.plot(steps, [r["resident_gb"] for r in rows], label=f"{name}: resident")
        ax.plot(steps, [r["heap_gb"] for r in rows], linestyle="--", color=line.get_color(), label=f"{name}: heap")
    ax.set_xlabel("update")
    ax.set_ylabel("GiB")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _finish(fig, path)


def generation_report_figure(report: Mapping, *, baseline_coverage: Mapping[str, float] | None = None,
                             title: str = "Generated batch", path: str | os.PathLike | None = None):
    """A generation run at a glance (`generate.run(...).report`). Left: what became of each
    example this run: kept, rejected by reason, or lost to a request failure. Right: the share of
    generated replies using each signature phrase, beside `baseline_coverage` (the shipped
    data's, say): a phrase at zero is a part of the voice the new data does not teach."""
    fig = new_figure(11.0, 4.5)
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.3))
    outcomes = [("kept", report["accepted_this_run"], "tab:green")]
    outcomes += [(f"rejected: {k}", v, "tab:orange") for k, v in report["rejected_this_run"].items()]
    outcomes += [(f"failed: {k}", v, "tab:red") for k, v in report["failed_this_run"].items()]
    names, counts, colours = zip(*reversed(outcomes))
    left.barh(names, counts, color=colours)
    left.set_xlabel("examples")
    left.set_title(f"Outcomes ({report['requests']} requests)")
    coverage = report["vocabulary"]["per_phrase"]
    phrases = list(coverage)[::-1]
    y = range(len(phrases))
    height = 0.4 if baseline_coverage is not None else 0.8
    right.barh([k + (height / 2 if baseline_coverage is not None else 0) for k in y],
               [coverage[p] for p in phrases], height=height, color="tab:blue", label="generated")
    if baseline_coverage is not None:
        right.barh([k - height / 2 for k in y], [baseline_coverage.get(p, 0.0) for p in phrases], height=height,
                   color="tab:gray", label="baseline")
        right.legend(loc="lower right")
    right.set_yticks(list(y), phrases)
    right.set_xlabel("share of replies using the phrase")
    right.set_title("Signature vocabulary")
    fig.suptitle(title)
    return _finish(fig, path)


def persona_bleed_matrices(matrices: Mapping[str, Mapping], *, title: str = "Persona bleed",
                           path: str | os.PathLike | None = None):
    """Confusion matrices side by side, one panel per {title: matrix} (persona_lib.multi's
    `confusion` schema: "rows", "labels", "rates", "counts", "diagonal"). Rows are the persona
    asked for, columns the persona attributed; each cell shows the row's share and its count,
    each panel title its mean diagonal. Put the classifier's own matrix first: its diagonal is
    the ceiling the others are read against."""
    panels = list(matrices.items())
    fig = new_figure(4.2 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, m) in zip(axes, panels):
        ax.imshow(m["rates"], vmin=0, vmax=1, cmap="Blues")
        for i, row in enumerate(m["rates"]):
            for j, rate in enumerate(row):
                ax.text(j, i, f"{rate:.2f}\n({m['counts'][i][j]})", ha="center", va="center", fontsize=8,
                        color="white" if rate > 0.6 else "black")
        ax.set_xticks(range(len(m["labels"])), [_slug_label(x) for x in m["labels"]], rotation=30, ha="right")
        ax.set_yticks(range(len(m["rows"])), [_slug_label(x) for x in m["rows"]])
        ax.set_xlabel("attributed by the classifier")
        ax.set_title(f"{name}\nmean diagonal {m['mean_diagonal']:.2f}", fontsize=10)
    axes[0].set_ylabel("persona asked for")
    fig.suptitle(title)
    return _finish(fig, path)


def _slug_label(slug: str) -> str:
    return slug.replace("_", " ")


def blend_curve_plot(curve: Mapping, *, path: str | os.PathLike | None = None):
    """Classifier probabilities of both voices against the blend weight (0: all the first
    adapter, 1: all the second), with the share of replies attributed to the second voice."""
    weights = [r["weight"] for r in curve["rows"]]
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot(weights, [r["p_a"] for r in curve["rows"]], "o-", label=f"P({_slug_label(curve['a'])})")
    ax.plot(weights, [r["p_b"] for r in curve["rows"]], "s-", label=f"P({_slug_label(curve['b'])})")
    ax.plot(weights, [r["share_b"] for r in curve["rows"]], "^--", color="grey",
            label=f"share of replies attributed to {_slug_label(curve['b'])}")
    ax.set_xlabel(f"blend weight on {_slug_label(curve['b'])}")
    ax.set_ylabel("mean classifier probability / share")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(weights)
    ax.set_title(f"Blending {_slug_label(curve['a'])} into {_slug_label(curve['b'])} ({curve['combination']}): "
                 f"{curve['trend']}")
    ax.legend(fontsize=8)
    return _finish(fig, path)


def gguf_tensor_types(types: Mapping[str, Mapping], *, title: str = "What each GGUF file really holds",
                      path: str | os.PathLike | None = None):
    """Stacked bars: megabytes of each tensor type per GGUF file (from `export.tensor_types`),
    labelled with the file type it declares, so fallbacks from the requested quant show."""
    fig = new_figure(7.0, 0.9 + 0.6 * len(types))
    ax = fig.add_subplot()
    names = list(types)
    kinds = sorted({k for t in types.values() for k in t["bytes"]}, key=lambda k: (k.startswith("F"), k))
    left = [0.0] * len(names)
    for kind in kinds:
        widths = [types[n]["bytes"].get(kind, 0) / 1e6 for n in names]
        ax.barh(range(len(names)), widths, left=left, label=kind)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(range(len(names)), [f"{n}\n(file type {types[n]['file_type']})" for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("MB of tensors")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=min(len(kinds), 6), loc="lower right")
    return _finish(fig, path)

"""The main job's plots and report page: training curves from a run's metrics.jsonl (SFT and RL), accuracy before
and after RL as grouped bars, and the report itself as markdown plus one self-contained HTML page (the plots inline,
every trajectory browsable in litere.viewer's page).

Plots are drawn on matplotlib `Figure` objects (no pyplot, no GUI backend). A missing series is left out; a plot
with nothing to draw says "no data".
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from . import viewer

FIGSIZE = (9.0, 4.0)  # inches
DPI = 110
MOVING_AVERAGE_MAX = 50  # steps


# ----------------------------------------------------------------------------------------------- metrics
def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl in step order, one per step (the last written: a resumed run may repeat
    steps). A missing file, lines that are not JSON objects (one cut short by a crash) and records without a
    numeric "step" give nothing."""
    path = Path(path)
    if not path.is_file():
        return []
    by_step = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and _number(record.get("step")) is not None:
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records whose `key` is a finite number."""
    pairs = [(r["step"], _number(r.get(key))) for r in records]
    pairs = [(s, v) for s, v in pairs if v is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def moving_average(values: list[float], window: int) -> list[float]:
    """Centred mean over `window` values (fewer at the ends), so the curve does not lag the raw one."""
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    half = window // 2
    out = []
    for i in range(len(values)):
        lo, hi = max(0, i - half), min(len(values), i - half + window)
        out.append((prefix[hi] - prefix[lo]) / (hi - lo))
    return out


def question_type(source: str) -> str:
    """A data_source as a question type: 'world-direct' -> 'direct', 'world-2hop' -> '2-hop'; others as they are."""
    if match := re.fullmatch(r"(?:.*-)?(\d+)-?hop", source):
        return f"{match.group(1)}-hop"
    return "direct" if source == "direct" or source.endswith("-direct") else source


def _type_order(label: str) -> tuple:
    hops = re.fullmatch(r"(\d+)-hop", label)
    return (0, 1, "") if label == "direct" else (0, int(hops.group(1)), "") if hops else (1, 0, label)


# ----------------------------------------------------------------------------------------------- figures
class PlainLogFormatter(LogFormatter):
    """A log axis' labels as 0.4, 2, 3 (not 4x10^-1), on the ticks LogFormatter thins its labels to."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def _figure(panels: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _save(fig: Figure, out_png: Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png", dpi=DPI)
    return out_png


def _no_data(ax, title: str, why: str = "no data"):
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=13, color="#8a90a0")
    ax.set_xticks([])
    ax.set_yticks([])


def _finish(ax, title: str, ylabel: str, legend: bool = True):
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = ax.get_xlim()
    if hi - lo < 2:  # a single step: a step either side, not ticks at fractions of one
        ax.set_xlim((lo + hi) / 2 - 1, (lo + hi) / 2 + 1)
    ax.grid(True, alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=9)


def _legend_below(fig: Figure, handles: list):
    """One legend under the plot, where it cannot cover a line or a bar's value."""
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=9, frameon=False)


def _fraction_axis(ax, values: list[float], percent: bool = False):
    """0..1 (0..100 for percentages) with a margin, when every value lies in that range."""
    top = 100.0 if percent else 1.0
    if values and all(0 <= v <= top for v in values):
        ax.set_ylim(-0.03 * top, 1.03 * top)


# ----------------------------------------------------------------------------------------------- SFT
def plot_sft(metrics: Path, out_png: Path) -> Path:
    """Supervised loss (raw and a moving average) and held-out losses per step on a log scale, the learning rate
    on a twin axis, and a vertical line where the learning rate started to decay."""
    records = read_metrics(metrics)
    fig, (ax,) = _figure()
    title = "SFT: training and held-out loss"
    losses = [series(records, key) for key in ("loss", "eval_loss", "eval_copy_loss", "eval_number_loss")]
    if not any(steps for steps, _ in losses):
        _no_data(ax, title)
        return _save(fig, out_png)
    (steps, loss), held_out, copy, number = losses
    if steps:
        window = min(MOVING_AVERAGE_MAX, max(1, len(loss) // 20))
        if window > 1:
            ax.plot(steps, loss, color="C0", alpha=0.25, linewidth=0.8, label="supervised loss")
            ax.plot(steps, moving_average(loss, window), color="C0", linewidth=1.8,
                    label=f"supervised loss ({window}-step mean)")
        else:
            ax.plot(steps, loss, color="C0", linewidth=1.5, marker="." if len(loss) < 30 else None,
                    label="supervised loss")
    if held_out[0]:
        ax.plot(*held_out, color="C3", marker="o", markersize=4, linewidth=1.5, label="held-out loss")
    if copy[0]:
        ax.plot(*copy, color="C2", marker="s", markersize=4, linewidth=1.5, linestyle="--",
                label="held-out loss, copy targets")
    if number[0]:
        ax.plot(*number, color="C4", marker="^", markersize=4, linewidth=1.5, linestyle=":",
                label="held-out loss, digits")
    if all(v > 0 for _, values in losses for v in values):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(PlainLogFormatter())
        ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
    _decay_line(ax, records)
    lr_line = _lr_axis(ax, records)
    _finish(ax, title, "loss (nats / token)", legend=False)
    _legend_below(fig, ax.get_legend_handles_labels()[0] + lr_line)
    return _save(fig, out_png)


def decay_starts(records: list[dict]) -> list:
    """The steps where the SFT lr began to decay (more than one after a rewarm), from metrics records."""
    return sorted({d for r in records if (d := _number(r.get("decay_start"))) is not None and d < r["step"]})


def _decay_line(ax, records: list[dict]):
    """A vertical line where each decay started."""
    for i, decay in enumerate(decay_starts(records)):
        label = f"lr decay starts (step {decay:g})" if i == 0 else f"lr decays again (step {decay:g})"
        ax.axvline(decay, color="#5a6275", linestyle=":" if i == 0 else "-.", linewidth=1.2, label=label)


def _lr_axis(ax, records: list[dict]) -> list:
    """The learning rate on a twin y axis; returns its line, for the main axis' legend."""
    steps, lr = series(records, "lr")
    if not steps:
        return []
    twin = ax.twinx()
    lines = twin.plot(steps, lr, color="#8a90a0", linewidth=1.2, linestyle="--", label="learning rate")
    twin.set_ylabel("learning rate", color="#5a6275")
    twin.set_ylim(0, max(lr) * 1.15 or 1.0)
    twin.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_zorder(twin.get_zorder() + 1)  # the loss lines and the legend over the lr line, not under it
    ax.patch.set_visible(False)
    return lines


# ----------------------------------------------------------------------------------------------- RL
def plot_rl(metrics: Path, out_png: Path) -> Path:
    """Two panels per RL step: the rollouts' mean reward and accuracy; the held-out probe accuracy per question
    type (the probe runs every few steps, and at step 0 on the start model)."""
    records = read_metrics(metrics)
    fig, (left, right) = _figure(2)
    _rl_reward_panel(left, records)
    _rl_probe_panel(right, records)
    return _save(fig, out_png)


def _rl_reward_panel(ax, records: list[dict]):
    title = "RL: reward of the step's rollouts"
    drawn = []
    reward, accuracy = series(records, "reward_mean"), series(records, "accuracy")
    lines = [(reward, "mean reward", "C0"), (accuracy, "accuracy", "C2")]
    if reward == accuracy:  # an exact-match reward: one line, rather than one hidden under the other
        lines = [(reward, "mean reward = accuracy", "C0")]
    for (steps, values), label, color in lines:
        if steps:
            ax.plot(steps, values, color=color, linewidth=1.5, marker="." if len(steps) <= 60 else None, label=label)
            drawn += values
    if not drawn:
        return _no_data(ax, title)
    _fraction_axis(ax, drawn)
    _finish(ax, title, "reward / accuracy")


def _rl_probe_panel(ax, records: list[dict]):
    title = "held-out probe accuracy"
    by_type: dict[str, tuple[list, list]] = {}
    for r in records:
        probe = r.get("probe") if isinstance(r.get("probe"), dict) else {}
        for source, acc in probe.items():
            if _number(acc) is not None:
                steps, values = by_type.setdefault(question_type(str(source)), ([], []))
                steps.append(r["step"])
                values.append(100 * acc)
    if not by_type:
        return _no_data(ax, title)
    for label in sorted(by_type, key=_type_order):
        ax.plot(*by_type[label], marker="o", markersize=4, linewidth=1.5, label=label)
    _fraction_axis(ax, [v for _, values in by_type.values() for v in values], percent=True)
    _finish(ax, title, "accuracy (%)")


def plot_rl_behaviour(metrics: Path, out_png: Path) -> Path:
    """Two panels per RL step: response length in tokens (mean, and the longest), and tool calls and assistant
    turns per trajectory."""
    records = read_metrics(metrics)
    fig, (left, right) = _figure(2)
    _lines(left, records, "RL: response length", "tokens per trajectory",
           [("response_tokens_mean", "mean", "C0", "-"), ("response_tokens_max", "longest", "C0", ":")])
    _lines(right, records, "RL: tool use", "per trajectory",
           [("tool_calls_mean", "tool calls", "C1", "-"), ("assistant_turns_mean", "assistant turns", "C4", "--")])
    return _save(fig, out_png)


def _lines(ax, records: list[dict], title: str, ylabel: str, keys: list[tuple[str, str, str, str]]):
    drawn = False
    for key, label, color, style in keys:
        steps, values = series(records, key)
        if steps:
            ax.plot(steps, values, color=color, linestyle=style, linewidth=1.5,
                    marker="." if len(steps) <= 60 else None, label=label)
            drawn = True
    if not drawn:
        return _no_data(ax, title)
    ax.set_ylim(bottom=0)
    _finish(ax, title, ylabel)


# ----------------------------------------------------------------------------------------------- accuracy bars
def plot_accuracy(before: dict[str, float], after: dict[str, float], out_png: Path,
                  labels: tuple[str, str] = ("after SFT", "after RL")) -> Path:
    """Grouped bars, one group per question type (the keys of both, in order), accuracies given as fractions and
    shown in %, with each bar's value written on it. A type missing from one side has no bar there."""
    fig, (ax,) = _figure()
    title = "accuracy by question type"
    kinds = list(dict.fromkeys([*before, *after]))
    sides = [(labels[0], before, "#9bb7e0"), (labels[1], after, "#1f5fbf")]
    width = 0.38
    drawn = False
    for i, (label, values, color) in enumerate(sides):
        xs = [k + (i - 0.5) * width for k, kind in enumerate(kinds) if _number(values.get(kind)) is not None]
        heights = [100 * values[kind] for kind in kinds if _number(values.get(kind)) is not None]
        if not xs:
            continue
        bars = ax.bar(xs, heights, width, color=color, label=label)
        ax.bar_label(bars, labels=[f"{h:.1f}%" for h in heights], padding=2, fontsize=9)
        drawn = True
    if not drawn:
        _no_data(ax, title)
        return _save(fig, out_png)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylim(0, 108)  # room for the value above a 100% bar
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(title)
    ax.set_xlabel("question type")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _legend_below(fig, ax.get_legend_handles_labels()[0])
    return _save(fig, out_png)


# ----------------------------------------------------------------------------------------------- markdown
_TABLE_SEPARATOR_RE = re.compile(r"^\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?$")
_HEADING_RE = re.compile(r"^(#{1,3})\s+(.*)$")


def inline(text: str) -> str:
    """Escaped text with `code` spans and **bold** (which may hold code spans, whose text stays literal)."""
    codes = []

    def stash(match) -> str:
        codes.append(f"<code>{match.group(1)}</code>")
        return f"\x00{len(codes) - 1}\x00"

    out = re.sub(r"`([^`]+)`", stash, html.escape(text.replace("\x00", "")))
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"\x00(\d+)\x00", lambda m: codes[int(m.group(1))], out)


def _cells(row: str) -> list[str]:
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") else row
    return [cell.strip() for cell in row.split("|")]


def _table(rows: list[str]) -> str:
    header, aligns = None, []
    if len(rows) >= 2 and _TABLE_SEPARATOR_RE.match(rows[1].strip()):
        header = _cells(rows[0])
        aligns = ["right" if c.endswith(":") and not c.startswith(":") else "center" if c.startswith(":")
                  and c.endswith(":") else "" for c in _cells(rows[1])]
        rows = rows[2:]

    def row_html(cells, tag):
        out = []
        for i, cell in enumerate(cells):
            align = aligns[i] if i < len(aligns) else ""
            style = f' style="text-align: {align}"' if align else ""
            out.append(f"<{tag}{style}>{inline(cell)}</{tag}>")
        return "<tr>" + "".join(out) + "</tr>"

    head = f"<thead>{row_html(header, 'th')}</thead>" if header else ""
    return f"<table>{head}<tbody>{''.join(row_html(_cells(r), 'td') for r in rows)}</tbody></table>"


def _line_kind(line: str) -> str:
    stripped = line.strip()
    if not stripped:
        return "blank"
    if _HEADING_RE.match(stripped):
        return "heading"
    if stripped.startswith("- "):
        return "list"
    if stripped.startswith("|"):
        return "table"
    return "paragraph"


def markdown_to_html(text: str) -> str:
    """The markdown a report body uses as HTML: `#` to `###` headings, paragraphs, `- ` lists, pipe tables,
    `code` spans and **bold**; every text is escaped."""
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        kind = _line_kind(line)
        if kind == "blank":
            blocks.append(("blank", []))
        elif kind != "heading" and blocks and blocks[-1][0] == kind:
            blocks[-1][1].append(line.strip())
        else:
            blocks.append((kind, [line.strip()]))
    out = []
    for kind, lines in blocks:
        if kind == "heading":
            hashes, title = _HEADING_RE.match(lines[0]).groups()
            out.append(f"<h{len(hashes)}>{inline(title)}</h{len(hashes)}>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{inline(line[2:].strip())}</li>" for line in lines) + "</ul>")
        elif kind == "table":
            out.append(_table(lines))
        elif kind == "paragraph":
            out.append(f"<p>{inline(' '.join(lines))}</p>")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- the report
REPORT_STYLE = """<style>
#extra .report { max-width: 1100px; }
#extra .report h1, #extra .report h2, #extra .report h3 { margin: 14px 0 6px; }
#extra .report table { width: auto; table-layout: auto; margin: 8px 0; font-size: 13px; }
#extra .report th { position: static; width: auto; color: #1d2330; }
#extra .report th, #extra .report td { padding: 3px 10px; border: 1px solid #dde1e8; white-space: normal; }
#extra .report code { background: #eef0f4; padding: 0 3px; border-radius: 3px; }
#extra .plots { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 8px; }
#extra .plots img { width: 990px; max-width: 100%; border: 1px solid #eef0f4; }
</style>"""


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def write_report(out_dir: Path, name: str, title: str, body_markdown: str, plots: list[Path],
                 trajectories: list[Path]) -> tuple[Path, Path]:
    """Write out_dir/{name}.md (the title, the body, the plots by relative path) and out_dir/{name}.html: one
    self-contained page with the body, the plots inline and every trajectory of `trajectories` (files or
    directories, as litere.viewer.load takes them) in the viewer. Plots that do not exist are left out.
    Returns (md_path, html_path)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [Path(p) for p in plots if Path(p).is_file()]
    md_path = out_dir / f"{name}.md"
    images = "".join(f"![{p.stem}]({_relative(p, out_dir)})\n\n" for p in plots)
    md_path.write_text(f"# {title}\n\n{body_markdown.strip()}\n\n{images}".rstrip() + "\n", encoding="utf-8")

    figures = "".join(f'<img alt="{html.escape(p.stem)}" src="{_data_uri(p)}">' for p in plots)
    extra = (REPORT_STYLE + f'<div class="report">{markdown_to_html(body_markdown)}</div>'
             + (f'<div class="plots">{figures}</div>' if figures else ""))
    records = viewer.load(trajectories) if trajectories else []
    html_path = viewer.write_viewer(records, out_dir / f"{name}.html", title=title, extra_html=extra)
    return md_path, html_path

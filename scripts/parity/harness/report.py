"""How every command reports, one way: progress lines on stderr, Markdown tables, JSON
files, and PNG plots with labelled axes, a title and a one-line conclusion.

    progress("round 1/3 …")                      # stderr, at once; stdout is the result
    markdown_table(["route", "req/s"], rows, align="-r")
    write_json(out / "result.json", result)
    with figure(out / "plot.png", title="…", conclusion="…") as fig:
        axis = fig.subplots()                     # what is drawn is the command's business
        axis.plot(xs, ys)
        axis.set_xlabel("…")
        axis.set_ylabel("…")                       # refused on exit if a label is missing

matplotlib is imported only when a figure is drawn, so a command that never plots (and
`parity --help`) does not pay for it.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# --- progress ----------------------------------------------------------------------------


def progress(message: str) -> None:
    """One line for the person watching, on stderr and flushed at once: stdout stays the
    command's result (a table, JSON) and can be piped."""
    print(message, file=sys.stderr, flush=True)


# --- Markdown ----------------------------------------------------------------------------

# One character per column in `align`: how its separator cell is written.
ALIGNMENTS = {"-": "---", "l": ":---", "r": "---:", "c": ":---:"}


def markdown_table(
    header: Sequence[object], rows: Iterable[Sequence[object]], align: str | None = None
) -> str:
    """A GitHub Markdown table, without a trailing newline:

        | header | cells |
        |---|---:|
        | a | 1 |

    Each cell is `str(cell)` between single spaces; an empty cell is written `| |`, and a
    `|` inside a cell is escaped so it cannot split the cell. `align` has one character
    per column: "-" no alignment (`---`), "l" left, "r" right, "c" centre; None: "-" for
    every column. A row with another number of cells than the header, or a cell with a
    line break, is refused (ValueError) rather than drawn as a broken table.
    """
    width = len(header)
    align = "-" * width if align is None else align
    if len(align) != width:
        raise ValueError(f"align {align!r} has {len(align)} columns, the header {width}")
    unknown = sorted(set(align) - set(ALIGNMENTS))
    if unknown:
        raise ValueError(f"align {align!r}: {unknown} not among {sorted(ALIGNMENTS)}")
    lines = [_markdown_row(header), "|" + "|".join(ALIGNMENTS[a] for a in align) + "|"]
    for number, row in enumerate(rows, 1):
        if len(row) != width:
            raise ValueError(f"row {number} has {len(row)} cells, the header {width}: {row!r}")
        lines.append(_markdown_row(row))
    return "\n".join(lines)


def _markdown_row(cells: Sequence[object]) -> str:
    texts = [str(cell).replace("|", r"\|") for cell in cells]
    broken = [text for text in texts if "\n" in text]
    if broken:
        raise ValueError(f"a Markdown table cell is one line: {broken[0]!r}")
    return "|" + "|".join(f" {text} " if text else " " for text in texts) + "|"


# --- JSON --------------------------------------------------------------------------------


def write_json(path: Path, data: object) -> None:
    """`data` as JSON indented by 2 with a final newline; the directory is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# --- plots -------------------------------------------------------------------------------

TITLE_SIZE = 11  # points
CONCLUSION_SIZE = 9  # points
MARGIN = 0.08  # inches between the conclusion and the figure's lower edge, and above it


@contextmanager
def figure(
    path: Path,
    *,
    title: str,
    conclusion: str,
    size: tuple[float, float] = (8.0, 4.8),
    dpi: int = 110,
) -> Iterator[Figure]:
    """A PNG at `path`, the same frame around every command's plot.

    Yields an empty matplotlib Figure (Agg, headless; not registered with pyplot, so
    nothing to close) of `size` inches: the caller makes its axes (`fig.subplots(...)`),
    draws, and labels every axis. On leaving the block: each axes that shows data must
    have an x and a y label (an axis shared with one that has a label counts as
    labelled, so a column of `sharex` panels or a `twinx` needs one), else ValueError
    naming the axes and the missing label; then the title goes on top, the conclusion
    (one line of text, wrapped only if wider than the figure) centred under the axes,
    the layout is tightened around both, the directory is created and the PNG saved at
    `dpi`. If the block raises, nothing is written.
    """
    if not title.strip():
        raise ValueError(f"{path.name}: a plot needs a title")
    if not conclusion.strip() or "\n" in conclusion:
        raise ValueError(f"{path.name}: the conclusion must be one line of text: {conclusion!r}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    yield fig
    missing = missing_axis_labels(fig)
    if missing:
        raise ValueError(f"{path.name} ({title}): " + "; ".join(missing))
    fig.suptitle(title, fontsize=TITLE_SIZE)
    bottom = _add_conclusion(fig, conclusion)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)


def missing_axis_labels(fig: Figure) -> list[str]:
    """What `figure` refuses: one line per axes that shows data without an x or a y label,
    e.g. "axes 2 of 3 ('Throughput') has no y label"."""
    missing = []
    for number, axes in enumerate(fig.axes, 1):
        if not axes.has_data() or not axes.axison or axes.get_label() == "<colorbar>":
            continue
        unlabelled = [
            name
            for name, siblings, label in (
                ("x", axes.get_shared_x_axes().get_siblings(axes), "get_xlabel"),
                ("y", axes.get_shared_y_axes().get_siblings(axes), "get_ylabel"),
            )
            if not any(getattr(sibling, label)().strip() for sibling in siblings)
        ]
        if unlabelled:
            name = f"axes {number} of {len(fig.axes)}"
            if axes.get_title():
                name += f" ({axes.get_title()!r})"
            missing.append(f"{name} has no {' and no '.join(unlabelled)} label")
    return missing


def _add_conclusion(fig: Figure, conclusion: str) -> float:
    """Write the conclusion centred at the bottom, wrapped to the figure's width if it
    must be; return the fraction of the figure's height it takes, margins included."""
    margin = MARGIN / fig.get_figheight()
    note = fig.text(0.5, margin, conclusion, ha="center", va="bottom", fontsize=CONCLUSION_SIZE)
    limit, width = 0.96 * fig.bbox.width, len(conclusion)
    while note.get_window_extent().width > limit and width > 20:
        width = int(width * 0.9)
        note.set_text(textwrap.fill(conclusion, width))
    return float(note.get_window_extent().y1 / fig.bbox.height) + margin

"""parity.harness.report, the one way commands report: progress on stderr, Markdown
tables, JSON files, and PNG plots that carry a title, a one-line conclusion and a label
on every axis that shows data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from parity.harness.report import figure, markdown_table, progress, write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- progress ----------------------------------------------------------------------------


def test_progress_goes_to_stderr_leaving_stdout_for_the_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress("round 1/3")
    captured = capsys.readouterr()
    assert captured.err == "round 1/3\n"
    assert captured.out == ""


# --- Markdown tables ---------------------------------------------------------------------


def test_a_table_is_a_header_a_separator_and_one_line_per_row() -> None:
    table = markdown_table(["route", "req/s"], [["read", "1,200"], ["list", 950]], align="-r")
    assert table == "| route | req/s |\n|---|---:|\n| read | 1,200 |\n| list | 950 |"


def test_without_align_no_column_is_aligned_and_empty_cells_are_one_space() -> None:
    table = markdown_table(["", "bare", "full"], [["p50", "1.0 ms", ""]])
    assert table.splitlines() == ["| | bare | full |", "|---|---|---|", "| p50 | 1.0 ms | |"]


def test_each_alignment_has_its_separator() -> None:
    table = markdown_table(["a", "b", "c", "d"], [], align="-lrc")
    assert table.splitlines()[1] == "|---|:---|---:|:---:|"


def test_a_pipe_inside_a_cell_is_escaped() -> None:
    assert markdown_table(["x"], [["a|b"]]).splitlines()[2] == r"| a\|b |"


@pytest.mark.parametrize(
    ("header", "rows", "align", "message"),
    [
        (["a", "b"], [["only one"]], None, "row 1 has 1 cells, the header 2"),
        (["a", "b"], [], "r", "has 1 columns, the header 2"),
        (["a", "b"], [], "rx", "['x'] not among"),
        (["a"], [["two\nlines"]], None, "one line"),
    ],
)
def test_a_table_that_would_render_broken_is_refused(
    header: list[str], rows: list[list[str]], align: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        markdown_table(header, rows, align=align)


# --- JSON --------------------------------------------------------------------------------


def test_write_json_round_trips_indented_with_a_final_newline(tmp_path: Path) -> None:
    data = {"summary": {"ratio": 0.45, "routes": ["read", "list"]}, "errors": 0, "µ": None}
    path = tmp_path / "new" / "dir" / "result.json"
    write_json(path, data)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == data
    assert text == json.dumps(data, indent=2) + "\n"


# --- plots -------------------------------------------------------------------------------


def test_a_figure_is_a_png_with_its_title_and_conclusion(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "latency.png"
    with figure(
        path, title="Latency by load", conclusion="p50 doubles at 16 connections", size=(6, 4),
        dpi=50,
    ) as fig:  # fmt: skip
        axis = fig.subplots()
        axis.plot([1, 4, 16], [1.0, 1.2, 2.4])
        axis.set_xlabel("connections")
        axis.set_ylabel("p50 (ms)")
    assert path.read_bytes().startswith(PNG_MAGIC)
    with Image.open(path) as image:
        assert image.size == (300, 200)  # size × dpi
    assert fig.get_suptitle() == "Latency by load"
    title, conclusion = fig.texts  # the title on top, the conclusion under the axes
    assert title.get_text() == "Latency by load"
    assert conclusion.get_text() == "p50 doubles at 16 connections"
    assert title.get_window_extent().y0 > conclusion.get_window_extent().y1


def test_a_figure_with_an_unlabelled_axis_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    refused = pytest.raises(ValueError, match=r"axes 2 of 2 \('Memory'\) has no y label")
    with refused, figure(path, title="t", conclusion="c") as fig:
        left, right = fig.subplots(1, 2)
        left.bar([0, 1], [3, 4])
        left.set_xlabel("server")
        left.set_ylabel("req/s")
        right.plot([0, 1], [5, 6])
        right.set_xlabel("server")
        right.set_title("Memory")
    assert not path.exists()


def test_a_missing_x_and_y_label_are_both_named(tmp_path: Path) -> None:
    refused = pytest.raises(ValueError, match="axes 1 of 1 has no x and no y label")
    with refused, figure(tmp_path / "plot.png", title="t", conclusion="c") as fig:
        fig.subplots().scatter([1], [1])


def test_a_shared_axis_is_labelled_once(tmp_path: Path) -> None:
    """A column of panels sharing x, and a right-hand twin axis, need one x label."""
    path = tmp_path / "shared.png"
    with figure(path, title="t", conclusion="c", size=(6, 5)) as fig:
        top, bottom = fig.subplots(2, 1, sharex=True)
        top.plot([0, 1], [1, 2])
        top.set_ylabel("requests / s")
        twin = top.twinx()
        twin.plot([0, 1], [10, 20])
        twin.set_ylabel("latency (ms)")
        bottom.plot([0, 1], [2, 2])
        bottom.set_ylabel("replicas")
        bottom.set_xlabel("seconds")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_axes_without_data_need_no_label(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    with figure(path, title="t", conclusion="c") as fig:
        drawn, empty = fig.subplots(1, 2)
        drawn.plot([0, 1], [0, 1])
        drawn.set_xlabel("x")
        drawn.set_ylabel("y")
        empty.text(0.5, 0.5, "no profile taken")
    assert path.exists()


@pytest.mark.parametrize(("title", "conclusion"), [("", "c"), ("t", ""), ("t", "two\nlines")])
def test_a_figure_needs_a_title_and_a_one_line_conclusion(
    tmp_path: Path, title: str, conclusion: str
) -> None:
    refused = pytest.raises(ValueError, match=r"needs a title|must be one line")
    with refused, figure(tmp_path / "plot.png", title=title, conclusion=conclusion):
        pass


def test_a_long_conclusion_is_wrapped_inside_the_figure(tmp_path: Path) -> None:
    long = "the full app keeps 47% of the bare route's throughput at 64 connections; " * 3
    with figure(tmp_path / "plot.png", title="t", conclusion=long.strip(), size=(4, 3)) as fig:
        axis = fig.subplots()
        axis.plot([0, 1], [0, 1])
        axis.set_xlabel("x")
        axis.set_ylabel("y")
    note = fig.texts[-1]
    assert "\n" in note.get_text()
    assert note.get_text().split() == long.split()
    extent = note.get_window_extent()
    assert extent.x0 >= 0
    assert extent.x1 <= fig.bbox.width


def test_nothing_is_written_when_the_drawing_fails(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    with pytest.raises(KeyError), figure(path, title="t", conclusion="c"):
        raise KeyError("p50_ms")
    assert not path.exists()

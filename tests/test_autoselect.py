"""The latency-table rules of export.autoselect, exactly: equal latency, front, choice of N,
the table file and its refusals (no torch, no measurement)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from export.autoselect import (
    MARGIN,
    LatencyTable,
    Measured,
    check_grid,
    choose_spread,
    dominates,
    latency_margin,
    measured,
    pareto_front,
    quality_of,
    read_table,
    same_latency,
    select,
    table_document,
    write_table,
)
from export.errors import LatencyTableError

SHA = "ab" * 32


def row(w: float, r: int, acc: float | None, p50: float, spread: float = 0.0, *,
        runs: int = 100, macs: int | None = None, precision: str = "fp32",
        load: float | None = None) -> Measured:
    return measured(w, r, precision=precision, macs=macs or int(w * r * r * 1000),
                    accuracy=acc, p50_ms=p50, p90_ms=p50 + spread, runs=runs, load=load)


def table(*rows: Measured, cpu_count: int | None = 2) -> LatencyTable:
    return LatencyTable("tiny_mobilenet", SHA, tuple(rows), "2026-01-01T00:00:00Z", cpu_count)


def labels(rows: tuple[Measured, ...]) -> list[str]:
    return [m.label for m in rows]


# -- rule 1: equal latency ------------------------------------------------------------------

def test_equal_latency_is_within_3_percent_or_two_standard_errors() -> None:
    a = row(0.25, 20, 10.0, 1.00)
    assert same_latency(a, row(0.5, 20, 11.0, 1.03))        # the 3 % floor
    assert not same_latency(a, row(0.5, 20, 11.0, 1.031))
    assert latency_margin(a, row(0.5, 20, 11.0, 1.2)) == pytest.approx(MARGIN * 1.0)
    # spread 1 ms over 100 runs: each p50 is uncertain by 0.1 ms; twice the combined 0.141
    noisy = row(0.25, 24, 10.0, 1.0, spread=1.0)
    other = row(0.5, 24, 11.0, 1.28, spread=1.0)
    assert latency_margin(noisy, other) == pytest.approx(2 * (0.1 ** 2 * 2) ** 0.5)
    assert same_latency(noisy, other)
    assert not same_latency(noisy, row(0.5, 24, 11.0, 1.29, spread=1.0))
    # more runs sharpen the same spread
    assert not same_latency(row(0.25, 24, 10.0, 1.0, 1.0, runs=10000),
                            row(0.5, 24, 11.0, 1.1, 1.0, runs=10000))


# -- rule 2: the front ----------------------------------------------------------------------

def test_front_drops_the_dominated_and_notes_the_equal_latency_drops() -> None:
    rows = [row(0.25, 20, 10.0, 1.0), row(0.5, 20, 12.0, 1.02),   # equal latency: 12 wins
            row(0.25, 24, 11.0, 2.0), row(0.5, 24, 11.0, 2.01),   # equal, as accurate: p50
            row(0.75, 20, 11.0, 3.0),                             # slower, no better: gone
            row(1.0, 20, 20.0, 4.0)]
    front, notes = pareto_front(rows)
    assert labels(front) == ["w0.50-r20", "w1.00-r20"]
    # w0.25-r24 / w0.50-r24 are beaten by the faster, more accurate w0.50-r20 outright
    assert len(notes) == 1
    assert notes[0].startswith("indistinguishable in latency from w0.50-r20")
    assert "w0.25-r20 (p50 1 ms" in notes[0]


def test_equal_accuracy_and_equal_latency_keep_the_lower_p50() -> None:
    a, b = row(0.25, 24, 11.0, 2.0), row(0.5, 24, 11.0, 2.01)
    q = quality_of([a, b])[0]
    assert dominates(a, b, q) and not dominates(b, a, q)
    front, notes = pareto_front([b, a])
    assert labels(front) == ["w0.25-r24"] and "w0.50-r24" in notes[0]


def test_front_is_non_dominated_increasing_and_pairwise_distinguishable() -> None:
    rng = random.Random(0)
    for _ in range(50):
        rows = [row(w, r, round(rng.uniform(0, 30), 1), round(rng.uniform(0.5, 5), 3),
                    round(rng.uniform(0, 0.5), 3), runs=rng.choice([10, 100, 1000]))
                for w in (0.25, 0.5, 0.75, 1.0) for r in (20, 24, 28, 32)]
        front, _ = pareto_front(rows)
        q = quality_of(rows)[0]
        assert front, "a front is never empty"
        for m in front:  # nobody dominates a front point, by the rule or by plain p50
            assert not any(dominates(o, m, q) for o in rows)
            assert not any(q(o) >= q(m) and o.p50_ms <= m.p50_ms and (
                q(o) > q(m) or o.p50_ms < m.p50_ms) for o in rows)
        for a, b in zip(front, front[1:], strict=False):
            assert a.p50_ms < b.p50_ms and q(a) < q(b) and not same_latency(a, b)


# -- rule 3: N points spread over the latency range -------------------------------------------

SPREAD = [row(0.25, 20, 10.0, 1.0), row(0.5, 20, 11.0, 2.0), row(0.75, 20, 12.0, 4.0),
          row(1.0, 20, 13.0, 8.0), row(1.0, 24, 14.0, 16.0)]


@pytest.mark.parametrize(("n", "want"), [
    (1, ["w1.00-r24"]),                                         # N = 1: the most accurate
    (2, ["w0.25-r20", "w1.00-r24"]),                            # the two ends
    (3, ["w0.25-r20", "w0.75-r20", "w1.00-r24"]),               # log-middle of 1..16 is 4
    (4, ["w0.25-r20", "w0.50-r20", "w0.75-r20", "w1.00-r24"]),  # 2 and 8 tie: the faster
    (5, ["w0.25-r20", "w0.50-r20", "w0.75-r20", "w1.00-r20", "w1.00-r24"]),
    (9, ["w0.25-r20", "w0.50-r20", "w0.75-r20", "w1.00-r20", "w1.00-r24"]),
])
def test_choose_spread_exactly(n: int, want: list[str]) -> None:
    assert labels(choose_spread(SPREAD, n)) == want


def test_select_on_a_given_table_exactly_with_ties_and_equal_latency() -> None:
    rows = [*SPREAD,
            row(0.5, 24, 11.5, 2.05),      # equal latency to w0.50-r20, more accurate: wins
            row(0.75, 24, 12.0, 4.0, macs=1),  # same p50 and top-1 as w0.75-r20, fewer MACs
            row(0.25, 24, 9.0, 3.0)]       # slower and less accurate than w0.50-r24: gone
    sel = select(table(*rows), 4)
    assert labels(sel.front) == ["w0.25-r20", "w0.50-r24", "w0.75-r24", "w1.00-r20",
                                 "w1.00-r24"]
    # ends 1 and 16 ms, then 4 (log-middle), then 8 (log distance 0.693) over 2.05 (0.668)
    assert labels(sel.chosen) == ["w0.25-r20", "w0.75-r24", "w1.00-r20", "w1.00-r24"]
    assert sel.pairs() == ((0.25, 20), (0.75, 24), (1.0, 20), (1.0, 24))
    assert [n.split(" (")[0] for n in sel.notes] == [
        "indistinguishable in latency from w0.50-r24",
        "indistinguishable in latency from w0.75-r24"]
    assert "w0.50-r20 (p50 2 ms" in sel.notes[0] and "w0.75-r20" in sel.notes[1]


def test_a_short_front_ships_whole_with_a_note() -> None:
    sel = select(table(row(0.25, 20, 10.0, 1.0), row(1.0, 20, 9.0, 2.0)), 4)
    assert labels(sel.chosen) == ["w0.25-r20"]
    assert sel.notes[-1] == ("the accuracy-latency front has 1 point(s), fewer than the 4 "
                             "asked for: shipping those 1")


def test_without_accuracy_macs_stand_in_and_load_is_noted() -> None:
    rows = (row(0.25, 20, None, 1.0, macs=10, load=5.0), row(1.0, 20, 30.0, 2.0, macs=40))
    sel = select(table(*rows), 2)
    assert sel.quality == "MACs" and labels(sel.chosen) == ["w0.25-r20", "w1.00-r20"]
    assert any(n.startswith("measured under load (load average up to 5.0 on 2 cores)")
               for n in sel.notes)
    assert any(n.startswith("no accuracy recorded") for n in sel.notes)


def test_precisions_are_candidates_of_their_own() -> None:
    sel = select(table(row(1.0, 20, 20.0, 4.0), row(1.0, 20, 19.8, 1.5, precision="int8")), 2)
    assert labels(sel.chosen) == ["w1.00-r20 int8", "w1.00-r20"]
    assert sel.pairs() == ((1.0, 20),) and sel.precisions() == ("int8", "fp32")


# -- the file ---------------------------------------------------------------------------------

def test_table_round_trip_and_the_selection_block(tmp_path: Path) -> None:
    t = table(*SPREAD, row(0.5, 24, None, 0.5, 0.25, precision="int8", load=1.25))
    assert read_table(write_table(tmp_path / "t.json", t)) == t
    sel = select(t, 3)
    back = read_table(write_table(tmp_path / "s.json", t, sel))
    assert back == t
    assert json.loads((tmp_path / "s.json").read_text())["selection"]["chosen"] == \
        labels(sel.chosen)


def _bad(doc_change) -> dict:
    doc = table_document(table(*SPREAD[:2]))
    doc_change(doc)
    return doc


@pytest.mark.parametrize(("change", "says"), [
    (lambda d: d.update(extra=1), "unknown key 'extra' in the table"),
    (lambda d: d["rows"][1].update(p99_ms=3.0), "unknown key 'p99_ms' in rows[1]"),
    (lambda d: d["rows"][0].pop("runs"), "rows[0] lacks 'runs'"),
    (lambda d: d.update(version=2), "version 2 latency table"),
    (lambda d: d.update(format="other"), "is not a latency table"),
    (lambda d: d.update(rows=[]), "the table has no rows"),
    (lambda d: d["rows"][0].update(p90_ms=0.5, spread_ms=-0.5), "0 < p50_ms <= p90_ms"),
    (lambda d: d["rows"][0].update(spread_ms=0.7), "spread_ms 0.7 is not p90_ms - p50_ms"),
    (lambda d: d["rows"][0].update(id="w1.00-r32"), "is not 'w0.25-r20'"),
    (lambda d: d["rows"].append(dict(d["rows"][0])), "w0.25-r20 appears twice"),
    (lambda d: d["rows"][0].update(runs=True), "rows[0].runs must be int"),
    (lambda d: d["rows"][0].update(precision="int4"), "precision 'int4'"),
    (lambda d: d["rows"][0].update(accuracy=101.0), "0..100 or null"),
    (lambda d: d.update(selection={"n": 2, "why": "x"}), "unknown key 'why' in selection"),
])
def test_bad_tables_are_refused_saying_what(tmp_path: Path, change, says: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_bad(change)))
    with pytest.raises(LatencyTableError, match="mutualnet profile DIR --latency-table") as e:
        read_table(path)
    assert says in str(e.value) and e.value.exit_code == 2


@pytest.mark.parametrize(("text", "says"), [
    ('{"format": NaN}', "NaN and Infinity are refused"),
    ('{"format": "mutualnet-latency-table", ', "not valid JSON"),
    ("[" * 100 + "]" * 100, "nests 100 levels deep"),
])
def test_unreadable_tables_are_refused(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(LatencyTableError, match=says):
        read_table(path)


def test_check_grid_names_the_mismatch() -> None:
    t = table(row(0.25, 20, 10.0, 1.0), row(1.0, 40, 20.0, 2.0))
    grid = [(0.25, 20), (1.0, 20)]
    with pytest.raises(LatencyTableError, match=r"missing w1\.00-r20; not in the checkpoint's "
                                                r"grid: w1\.00-r40"):
        check_grid(t, grid, checkpoint_sha256=SHA, source="t.json")
    with pytest.raises(LatencyTableError, match="another checkpoint"):
        check_grid(t, [(0.25, 20), (1.0, 40)], checkpoint_sha256="cd" * 32, source="t.json")
    check_grid(t, [(0.25, 20), (1.0, 40)], checkpoint_sha256=SHA, source="t.json")

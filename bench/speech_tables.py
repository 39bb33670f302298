"""Plain-text tables and their JSON for the speech benchmarks, and two runs side by side.

``speech_accuracy.py`` and ``speech_latency.py`` build every result as a :class:`Table` (a title,
typed columns, one dict per row), print it aligned and write all of them with ``--json OUT``.
Run this module on two such files (say one run per model) to see each table with both runs'
numbers in one cell, ``A | B``:

    .venv/bin/python bench/speech_tables.py tiny.json base.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Value = float | int | str | None


@dataclass(frozen=True)
class Column:
    """``key`` in each row; ``spec``: a format spec for numbers ("d", ".1f"), "" for text."""

    key: str
    header: str
    spec: str = ""

    def cell(self, value: Value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, str) or not self.spec:
            return str(value)
        return format(value, self.spec)


@dataclass
class Table:
    """One benchmark table: ``rows`` are dicts with a "label" and one value per column key."""

    name: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Value]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    label_header: str = "condition"

    def add(self, label: str, **values: Value) -> None:
        self.rows.append({"label": label, **values})

    def render(self) -> str:
        header = [self.label_header, *(c.header for c in self.columns)]
        body = [
            [str(row["label"]), *(c.cell(row.get(c.key)) for c in self.columns)]
            for row in self.rows
        ]
        lines = [self.title, *_aligned([header, *body])]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "label_header": self.label_header,
            "columns": [{"key": c.key, "header": c.header, "spec": c.spec} for c in self.columns],
            "rows": self.rows,
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> Table:
        return cls(
            name,
            data["title"],
            [Column(c["key"], c["header"], c["spec"]) for c in data["columns"]],
            list(data["rows"]),
            list(data.get("notes", [])),
            data.get("label_header", "condition"),
        )


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Label column left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  "
        + "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def pct(part: float, whole: float) -> float | None:
    """``part`` as a percentage of ``whole``; None (printed "-") when there is no whole."""
    return 100.0 * part / whole if whole else None


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile, linear between the closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU count, the CPUs this process may use, the load."""
    model = ""
    virtual = False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.partition(":")[2].strip()
            elif line.startswith("flags"):
                virtual = virtual or "hypervisor" in line.split()
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": model or platform.processor(),
        "virtual_machine": virtual,
        "load_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
    }


def machine_line(info: dict[str, Any]) -> str:
    load = info.get("load_1_5_15")
    load_text = ", ".join(f"{x:.2f}" for x in load) if load else "?"
    kind = "vCPUs of a virtual machine" if info.get("virtual_machine") else "logical CPUs"
    return (
        f"machine: os.cpu_count() = {info['cpu_count']} {kind} ({info['usable_cpus']} usable by "
        f"this process), {info['cpu_model'] or 'unknown CPU'}; load average {load_text} "
        "(1/5/15 min; other jobs on these CPUs slow every number here)"
    )


def write_json(path: Path, data: dict[str, Any], tables: Iterable[Table]) -> None:
    data = {**data, "tables": {t.name: t.to_json() for t in tables}}
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def load_tables(path: Path) -> tuple[dict[str, Any], dict[str, Table]]:
    data = json.loads(path.read_text())
    tables = {name: Table.from_json(name, t) for name, t in data.get("tables", {}).items()}
    return data, tables


def side_by_side(a: Table | None, b: Table | None) -> str:
    """One table with each cell "A | B" (rows and columns of either run; "-" where missing)."""
    base = a or b
    assert base is not None
    columns = list(base.columns)
    for extra in (b or base).columns:
        if all(c.key != extra.key for c in columns):
            columns.append(extra)
    rows_a = {str(r["label"]): r for r in (a.rows if a else [])}
    rows_b = {str(r["label"]): r for r in (b.rows if b else [])}
    labels = list(dict.fromkeys([*rows_a, *rows_b]))
    body = [
        [
            label,
            *(
                f"{c.cell(rows_a.get(label, {}).get(c.key))} | "
                f"{c.cell(rows_b.get(label, {}).get(c.key))}"
                for c in columns
            ),
        ]
        for label in labels
    ]
    header = [base.label_header, *(c.header for c in columns)]
    return "\n".join([base.title, *_aligned([header, *body])])


def main() -> None:
    parser = argparse.ArgumentParser(description="Two benchmark JSON files side by side.")
    parser.add_argument("a", type=Path, help="--json output of one run (left of each |)")
    parser.add_argument("b", type=Path, help="--json output of another run (right of each |)")
    args = parser.parse_args()
    meta_a, tables_a = load_tables(args.a)
    meta_b, tables_b = load_tables(args.b)
    for name, meta in ((args.a, meta_a), (args.b, meta_b)):
        print(f"{name}: model {meta.get('model')!r}, {meta.get('elapsed_s', '?')} s")
    for key in dict.fromkeys([*tables_a, *tables_b]):
        print()
        print(side_by_side(tables_a.get(key), tables_b.get(key)))


if __name__ == "__main__":
    main()

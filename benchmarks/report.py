"""Render benchmark results as the Markdown page docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FINDINGS = Path(__file__).resolve().parent / "findings.md"

ROLE_NAMES = {"subject": "flowengine", "peer": "peer", "floor": "floor", "info": ""}


def markdown(results: dict[str, Any]) -> str:
    """Return the whole report page for `results` as Markdown text."""
    lines = [
        "# Benchmarks",
        "",
        "This page is written by `benchmarks/run.py`; the same data is in",
        "`benchmarks.json` next to it. Medians are over the runs listed in each",
        "section. A ratio is this row's median divided by the peer's or the",
        "floor's median, so for times lower is better and for rates higher is",
        "better.",
        "",
        f"- command: `{results['command']}` (mode: {results['mode']})",
        f"- started: {results['started_at']}, took {results.get('seconds', '?')} s",
        f"- source revision: {results.get('source_revision') or 'unknown'}",
        "",
        *_machine(results["machine"], results.get("load_average_at_end")),
        "",
        *_packages(results["packages"]),
        "",
        "## Targets",
        "",
        "| benchmark | target | result | met |",
        "|---|---|---|---|",
    ]
    for item in results["sections"]:
        lines.append(_target_line(item))
    lines.append("")
    if FINDINGS.exists():
        lines.extend([FINDINGS.read_text(encoding="utf-8").rstrip(), ""])
    for item in results["sections"]:
        lines.extend(_section(item))
    return "\n".join(lines).rstrip() + "\n"


def _machine(machine: dict[str, Any], load_at_end: list[float] | None) -> list[str]:
    return [
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs "
        f"({machine['usable_cpus']} usable)",
        f"- OS: {machine['os']}",
        f"- Python: {machine['python']} ({machine['python_implementation']}), "
        f"SQLite {machine['sqlite']}",
        f"- load average (1, 5, 15 min): {_load(machine.get('load_average'))} at "
        f"the start, {_load(load_at_end)} at the end",
    ]


def _load(values: list[float] | None) -> str:
    return "unknown" if values is None else ", ".join(f"{v:.2f}" for v in values)


def _packages(versions: dict[str, str | None]) -> list[str]:
    listed = ", ".join(
        f"{name} {version or 'not installed'}" for name, version in versions.items()
    )
    return ["## Package versions", "", listed]


def _target_line(item: dict[str, Any]) -> str:
    if "error" in item:
        return f"| {item['title']} | — | the benchmark failed | — |"
    goal = item.get("target") or {}
    met = {True: "yes", False: "**no**", None: "—"}[goal.get("met")]
    cells = [item["title"], goal.get("text", ""), goal.get("detail", ""), met]
    return "| " + " | ".join(cells) + " |"


def _section(item: dict[str, Any]) -> list[str]:
    lines = [f"## {item['title']}", ""]
    if "error" in item:
        return [*lines, "The benchmark failed:", "", "```", item["error"], "```", ""]
    setup = ", ".join(f"{key}: {value}" for key, value in item["setup"].items())
    lines.extend([f"Setup: {setup}. Took {item.get('seconds', '?')} s.", ""])
    lines.extend(_table(item))
    lines.append("")
    for note in item["notes"]:
        lines.extend([f"- {note}"])
    if item["notes"]:
        lines.append("")
    if item.get("profile"):
        lines.extend(_profile(item["profile"]))
    return lines


def _table(item: dict[str, Any]) -> list[str]:
    extra_columns = [tuple(column) for column in item["extra_columns"]]
    headers = [
        "measurement",
        "role",
        f"median ({item['unit']})",
        "min – max",
        "runs",
        "× peer",
        "× floor",
        *(title for _, title in extra_columns),
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for entry in item["rows"]:
        if entry.get("not_measured"):
            cells = [
                entry["label"],
                ROLE_NAMES.get(entry["role"], entry["role"]),
                f"not measured: {entry['not_measured']}",
                *([""] * (len(headers) - 3)),
            ]
        else:
            cells = [
                entry["label"],
                ROLE_NAMES.get(entry["role"], entry["role"]),
                _number(entry["median"]),
                f"{_number(entry['min'])} – {_number(entry['max'])}",
                str(len(entry["runs"])),
                _ratio(entry.get("ratio_to_peer")),
                _ratio(entry.get("ratio_to_floor")),
                *(_cell(entry["extra"].get(key)) for key, _ in extra_columns),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _profile(profile: dict[str, Any]) -> list[str]:
    lines = [
        f"Profile of Engine.fire (cProfile, {profile['transitions_profiled']} "
        "transitions; shares of own time):",
        "",
        "| code | share |",
        "|---|---|",
    ]
    for origin, share in profile["share_by_origin"].items():
        lines.append(f"| {origin} | {share:.0%} |")
    lines.extend(
        ["", "| function | calls per transition | own share |", "|---|---|---|"]
    )
    for function in profile["top_functions"]:
        lines.append(
            f"| `{function['function']}` | {function['calls_per_transition']} "
            f"| {function['own_share']:.0%} |"
        )
    lines.append("")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, dict):
        return ", ".join(f"{key}: {count}" for key, count in value.items()) or "none"
    return str(value)


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"

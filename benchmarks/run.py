"""Run the flowengine benchmarks and write docs/benchmarks.md and .json.

Usage:
    python benchmarks/run.py            # full run, several minutes
    python benchmarks/run.py --quick    # smaller counts, under two minutes
    python benchmarks/run.py --smoke    # tiny counts, to check that it works
    python benchmarks/run.py --only transition,grant --output /tmp/bench

Every server the benchmarks send requests to is started on 127.0.0.1 by the
benchmarks themselves, except the Redis and PostgreSQL servers given by
--redis-url and --postgres-url.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent

# Run as a script, Python puts benchmarks/ first on sys.path. Import the
# checkout's flowengine and the benchmarks package from the repository root.
if sys.path and Path(sys.path[0]).resolve() == REPOSITORY / "benchmarks":
    sys.path.pop(0)
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from benchmarks import environment, report  # noqa: E402
from benchmarks.common import SCALES, Scale  # noqa: E402

BENCHMARKS = ("transition", "grant", "memory", "stores", "storm", "web")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.render is not None:
        return _render(args.render, args.output)
    scale = SCALES[args.mode]
    chosen = _chosen(args.only)
    results: dict[str, Any] = {
        "command": _command(argv),
        "mode": scale.name,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": environment.machine(),
        "packages": environment.packages(),
        "source_revision": environment.source_revision(),
        "sections": [],
    }
    failures = 0
    started = time.monotonic()
    for name in chosen:
        print(f"benchmark {name} ({scale.name}) ...", flush=True)
        began = time.monotonic()
        try:
            outcome = _runner(name)(scale, args)
        except Exception:  # noqa: BLE001 (reported, and the run goes on)
            failures += 1
            print(f"benchmark {name} failed:", file=sys.stderr)
            traceback.print_exc()
            outcome = {"id": name, "title": name, "error": traceback.format_exc()}
        outcome["seconds"] = round(time.monotonic() - began, 1)
        results["sections"].append(outcome)
        print(f"benchmark {name} done in {outcome['seconds']} s", flush=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["load_average_at_end"] = environment.load_average()

    args.output.mkdir(parents=True, exist_ok=True)
    json_path = args.output / "benchmarks.json"
    markdown_path = args.output / "benchmarks.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    markdown_path.write_text(report.markdown(results), encoding="utf-8")
    print(f"wrote {markdown_path} and {json_path}")
    return 1 if failures else 0


def _render(json_path: Path, output: Path) -> int:
    """Rewrite benchmarks.md in `output` from the results in `json_path`."""
    results = json.loads(json_path.read_text(encoding="utf-8"))
    output.mkdir(parents=True, exist_ok=True)
    markdown_path = output / "benchmarks.md"
    markdown_path.write_text(report.markdown(results), encoding="utf-8")
    print(f"wrote {markdown_path} from {json_path}")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the flowengine benchmarks and write the report."
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="smaller counts and one run of the slow benchmarks (under two minutes)",
    )
    modes.add_argument(
        "--smoke",
        dest="mode",
        action="store_const",
        const="smoke",
        help="tiny counts that only check that every benchmark runs",
    )
    parser.set_defaults(mode="full")
    parser.add_argument(
        "--output",
        type=Path,
        default=REPOSITORY / "docs",
        help="folder for benchmarks.md and benchmarks.json (default: docs/)",
    )
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated benchmarks to run (default: {','.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="run nothing; write benchmarks.md in --output from an earlier "
        "benchmarks.json, for example after editing benchmarks/findings.md",
    )
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help=f"Redis server for the store benchmark (default: {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="PostgreSQL database for the store benchmark "
        f"(default: {DEFAULT_POSTGRES_URL})",
    )
    return parser.parse_args(argv)


def _chosen(only: str) -> list[str]:
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(
            f"unknown benchmark(s) {', '.join(unknown)}; "
            f"choose from {', '.join(BENCHMARKS)}"
        )
    return names


def _command(argv: list[str] | None) -> str:
    words = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "benchmarks/run.py", *words])


def _runner(name: str) -> Callable[[Scale, argparse.Namespace], dict[str, Any]]:
    # Each benchmark module is imported only when it runs, so a missing
    # optional package (authlib, redis, psycopg) affects only its benchmark.
    if name == "transition":
        from benchmarks import transition

        return lambda scale, _args: transition.run(scale)
    if name == "grant":
        from benchmarks import grant

        return lambda scale, _args: grant.run(scale)
    if name == "memory":
        from benchmarks import memory

        return lambda scale, _args: memory.run(scale)
    if name == "stores":
        from benchmarks import stores

        return lambda scale, args: stores.run(scale, args.redis_url, args.postgres_url)
    if name == "storm":
        from benchmarks import refresh_storm

        return lambda scale, _args: refresh_storm.run(scale)
    from benchmarks import web_client

    return lambda scale, _args: web_client.run(scale)


if __name__ == "__main__":
    sys.exit(main())

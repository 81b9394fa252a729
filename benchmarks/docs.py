"""Tie documented numbers to the results files that measured them: ``python -m benchmarks.docs --check``.

A number in README.md or docs/*.md is followed by a marker naming its source, an HTML comment that
Markdown does not render::

    validation accuracy 0.855 <!-- results: benchmarks/results/toy_deq_cpu.json#results.runs.seed0.accuracy -->
    98 % <!-- results: benchmarks/results/toy_deq_cpu.json#results.runs.seed0.converged scale=100 -->

A line holding only ``<!-- results: FILE -->`` names the file for the markers of its section (until the next
heading), which then write ``<!-- results: #PATH -->``. ``PATH`` is dot-separated: dict keys (a key that
itself holds dots or spaces, e.g. ``above_0.9``, is found too), list indices, and ``name[key=value]`` for
the one element of list ``name`` whose ``key`` equals ``value``.

For every marker the check (a) reads the file and the value at PATH and verifies that the number printed
just before the marker equals it to the printed precision (``0.86`` matches 0.8555; ``scale`` multiplies the
value first); (b) verifies that the file carries a ``provenance`` block whose commit is not older than the
last commit touching the code it measures (the file's ``code`` list, else deqkit/, applications/, examples/
and benchmarks/ but not benchmarks/results/). Missing files, paths and differing values are errors; stale,
dirty and no-provenance results are reported, and are errors with ``--strict``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CODE = ("deqkit", "applications", "examples", "benchmarks", ":(exclude)benchmarks/results")
MARKER = re.compile(r"<!--\s*results:\s*(?P<file>[^#\s]*)(?:#(?P<path>.+?))?(?P<opts>(?:\s+scale=\S+)*)\s*-->")
NUMBER = re.compile(r"[-−]?(?:\d+\.\d+|\.\d+|\d+)(?:[eE][-+]?\d+)?")
UNMARKED = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")  # a decimal number that is no version, name or path
HARD = ("missing", "mismatch")  # always errors
SOFT = ("stale", "dirty", "no provenance", "unknown commit")  # errors with --strict


@dataclass
class Finding:
    """One marker's verdict: ``status`` is ok, missing, mismatch, stale, dirty, no provenance or unknown commit."""

    doc: str
    line: int
    printed: str
    source: str
    status: str
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.doc}:{self.line}"
        detail = f"  ({self.detail})" if self.detail else ""
        return f"{self.status:<14} {where:<28} {self.printed:>10}  {self.source}{detail}"


# ------------------------------------------------------------------------------------------ markdown


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def markers(text: str) -> list[tuple[int, str, str, str, dict[str, str]]]:
    """``(line, printed number, results file, json path, options)`` for each marker of a Markdown text."""
    found, section_file = [], ""
    for number, line in _prose_lines(text):
        if line.startswith("#"):
            section_file = ""
        start, code = 0, [m.span() for m in re.finditer(r"`[^`]*`", line)]
        for match in MARKER.finditer(line):
            if any(a <= match.start() < b for a, b in code):  # a marker shown as code, e.g. in these docs
                continue
            opts = dict(opt.split("=", 1) for opt in match["opts"].split())
            if match["path"] is None:  # a section's file
                section_file = match["file"]
                start = match.end()
                continue
            before = re.sub(r"`[^`]*`", " ", line[start:match.start()])
            numbers = NUMBER.findall(before)
            found.append((number, numbers[-1] if numbers else "", match["file"] or section_file, match["path"], opts))
            start = match.end()
    return found


def unmarked_numbers(text: str) -> list[tuple[int, str]]:
    """Decimal numbers of prose and tables that no marker follows (inline code and comments left out)."""
    found = []
    for number, line in _prose_lines(text):
        if line.startswith("#") or line.lstrip().startswith("!["):
            continue
        spans = [m.span() for m in MARKER.finditer(line)]
        stripped = re.sub(r"`[^`]*`|<!--.*?-->|\]\([^)]*\)|https?://\S+", lambda m: " " * len(m[0]), line)
        for match in UNMARKED.finditer(stripped):
            next_marker = next((s for s in spans if s[0] >= match.end()), None)
            if next_marker is None or NUMBER.search(line[match.end():next_marker[0]]):
                found.append((number, match[0]))
    return found


# --------------------------------------------------------------------------------------- json paths


def _segments(path: str) -> list[str]:
    """Split at dots outside brackets: ``rows[tol=1e-3].nfe`` -> ``["rows[tol=1e-3]", "nfe"]``."""
    parts, depth, current = [], 0, ""
    for char in path:
        depth += (char == "[") - (char == "]")
        if char == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def _same(a: Any, text: str) -> bool:
    try:
        return float(a) == float(text)
    except (TypeError, ValueError):
        return str(a) == text


def lookup(data: Any, path: str) -> Any:
    """The value at ``path`` in ``data``; ``KeyError`` naming the first segment that is not there."""
    rest = _segments(path)
    while rest:
        node = None
        if isinstance(data, dict):
            for j in range(len(rest), 0, -1):  # longest first: keys may hold dots (above_0.9)
                key = ".".join(rest[:j])
                parts = re.fullmatch(r"(?P<name>[^\[\]]+)(?:\[(?P<selector>[^\[\]]+)\])?", key)
                if parts and parts["name"] in data:
                    data, rest, node = data[parts["name"]], rest[j:], True
                    if parts["selector"]:
                        data = _select(data, parts["selector"], key)
                    break
        elif isinstance(data, list) and re.fullmatch(r"-?\d+", rest[0]) and -len(data) <= int(rest[0]) < len(data):
            data, rest, node = data[int(rest[0])], rest[1:], True
        if node is None:
            raise KeyError(rest[0])
    return data


def _select(items: Any, selector: str, key: str) -> Any:
    """The one dict of list ``items`` whose fields match ``k=v,k2=v2``."""
    wanted = [pair.split("=", 1) for pair in selector.split(",")]
    if not isinstance(items, list) or any(len(pair) != 2 for pair in wanted):
        raise KeyError(key)
    hits = [item for item in items if isinstance(item, dict)
            and all(k in item and _same(item[k], v) for k, v in wanted)]
    if len(hits) != 1:
        raise KeyError(f"{key} ({len(hits)} matches)")
    return hits[0]


def matches(printed: str, value: Any, scale: float = 1.0) -> bool:
    """Whether ``printed`` is ``value * scale`` rounded to the printed precision (half a unit of its last digit)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        shown = Decimal(printed.replace("−", "-"))
    except InvalidOperation:
        return False
    unit = Decimal(1).scaleb(shown.as_tuple().exponent)
    return abs(Decimal(repr(float(value) * scale)) - shown) <= unit / 2 * Decimal("1.000001")


# ------------------------------------------------------------------------------------------ git


def _git(args: list[str], root: Path) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def freshness(results: dict, root: Path) -> tuple[str, str]:
    """``(status, detail)`` of a results file's provenance against the last change of the code it measures."""
    block = results.get("provenance") if isinstance(results, dict) else None
    commit = block.get("commit") if isinstance(block, dict) else None
    if not commit:
        return "no provenance", "no commit recorded (written before provenance existed, or outside a checkout)"
    code = results.get("code") or list(DEFAULT_CODE)
    done = _git(["log", "-1", "--format=%H", "--", *code], root)
    last = done.stdout.strip() if done is not None and done.returncode == 0 else ""
    if not last:
        return "unknown commit", f"measured at {commit[:12]}; git cannot tell when {', '.join(code)} last changed"
    ancestor = _git(["merge-base", "--is-ancestor", last, commit], root)
    if ancestor is None or ancestor.returncode not in (0, 1):
        return "unknown commit", f"measured at {commit[:12]}, a commit this clone does not hold"
    if ancestor.returncode == 1:
        return "stale", f"measured at {commit[:12]}, code changed since (in {last[:12]})"
    if block.get("dirty"):
        return "dirty", f"measured at {commit[:12]} with uncommitted changes"
    return "ok", f"measured at {commit[:12]}"


# ------------------------------------------------------------------------------------------ check


def check(docs: list[Path], root: Path = ROOT) -> list[Finding]:
    """A :class:`Finding` per marker of ``docs`` (paths of results files are relative to ``root``)."""
    findings, loaded, fresh = [], {}, {}
    for doc in docs:
        name = doc.relative_to(root).as_posix() if doc.is_relative_to(root) else str(doc)
        for line, printed, file, path, opts in markers(doc.read_text(encoding="utf-8")):
            source = f"{file}#{path}"
            if not file:
                findings.append(Finding(name, line, printed, source, "missing", "no results file named in the "
                                        "marker or its section"))
                continue
            if file not in loaded:
                try:
                    loaded[file] = json.loads((root / file).read_text(encoding="utf-8"))
                except (OSError, ValueError) as err:
                    loaded[file] = err
            data = loaded[file]
            if isinstance(data, Exception):
                findings.append(Finding(name, line, printed, source, "missing", f"cannot read {file}: "
                                        f"{type(data).__name__}"))
                continue
            try:
                value = lookup(data, path)
            except KeyError as err:
                findings.append(Finding(name, line, printed, source, "missing", f"no {err.args[0]!r} in {file}"))
                continue
            scale = float(opts.get("scale", 1))
            if not printed or not matches(printed, value, scale):
                shown = value if scale == 1 else f"{value} × {opts['scale']}"
                findings.append(Finding(name, line, printed or "(none)", source, "mismatch", f"results say {shown}"))
                continue
            if file not in fresh:
                fresh[file] = freshness(data, root)
            findings.append(Finding(name, line, printed, source, *fresh[file]))
    return findings


def default_docs(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.exists()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="verify every marked number (the default action)")
    p.add_argument("--strict", action="store_true", help="stale, dirty or no-provenance results fail too")
    p.add_argument("--unmarked", action="store_true", help="also list decimal numbers without a marker")
    p.add_argument("--verbose", "-v", action="store_true", help="also list the verified results files")
    p.add_argument("--root", type=Path, default=ROOT, help="repository root (results paths are relative to it)")
    p.add_argument("docs", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    args = p.parse_args(argv)
    root = args.root.resolve()
    docs = [d.resolve() for d in args.docs] or default_docs(root)
    findings = check(docs, root)
    for finding in findings:
        if finding.status in HARD:
            print(finding)
    by_file: dict[tuple[str, str, str], list[Finding]] = {}
    for finding in findings:
        if finding.status not in HARD:
            by_file.setdefault((finding.status, finding.source.split("#")[0], finding.detail), []).append(finding)
    for (status, file, detail), group in by_file.items():
        if status != "ok" or args.verbose:
            where = ", ".join(dict.fromkeys(f"{f.doc}:{f.line}" for f in group))
            print(f"{status:<14} {file}: {len(group)} number{'s' * (len(group) > 1)} ({where}); {detail}")
    unmarked = {d: unmarked_numbers(d.read_text(encoding="utf-8")) for d in docs}
    if args.unmarked:
        for doc, numbers in unmarked.items():
            for line, number in numbers:
                print(f"{'unmarked':<14} {doc.name}:{line:<20} {number:>10}")
    counts = {status: sum(f.status == status for f in findings) for status in ("ok", *HARD, *SOFT)}
    print(f"{len(findings)} marked numbers: {len(findings) - counts['missing'] - counts['mismatch']} match their "
          f"results file, {counts['missing']} missing, {counts['mismatch']} mismatch; provenance: {counts['ok']} "
          f"fresh, {counts['stale']} stale, {counts['dirty']} dirty, {counts['no provenance']} none, "
          f"{counts['unknown commit']} unknown commit; {sum(map(len, unmarked.values()))} decimal numbers "
          f"without a marker")
    failing = HARD + (SOFT if args.strict else ())
    return 1 if any(f.status in failing for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.readme``: copy the committed benchmark results into the README's benchmark section.

Each block of the README between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` is the Markdown that a
benchmark command wrote to ``benchmarks/results/`` (its title dropped, its headings moved under the README's), so
every number in the README comes from a committed result of a committed command; ``tests/test_readme.py`` checks
that they still agree. ``--check`` only reports the blocks that differ (exit 1).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"

# block name -> (results file, top-level sections to keep (None: all), heading level of the file's "##")
BLOCKS: dict[str, tuple[str, tuple[str, ...] | None, int]] = {
    "main": ("BENCH.md", ("Acceptance", "Embedding speed", "Post-embedding stages by size"), 4),
    "weekly": ("weekly.md", None, 4),
    "hygiene": ("hygiene.md", ("Acceptance", "photos:", "digits:", "Neighbour search at scale"), 4),
    "objects": ("objects.md", None, 4),
    "segmentation": ("SEGMENTATION.md", ("Acceptance", "Quality on the demo", "Time and memory at scale"), 4),
}


def _sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text before the first ``## `` heading (title dropped), and each ``## `` section as (heading, body)."""
    lines = [line for line in text.splitlines() if not line.startswith("# ")]
    preamble: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("## "):
            sections.append((line[3:].strip(), [line]))
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    return "\n".join(preamble).strip(), [(h, "\n".join(body).strip()) for h, body in sections]


def _demote(text: str, level: int) -> str:
    """Move ``##`` headings to ``level`` (and deeper ones with them)."""
    shift = level - 2
    return re.sub(r"^(#{2,6}) ", lambda m: "#" * min(6, len(m.group(1)) + shift) + " ", text, flags=re.MULTILINE)


def block(name: str) -> str:
    """The Markdown of one README block, from its results file."""
    file, keep, level = BLOCKS[name]
    preamble, sections = _sections((RESULTS / file).read_text(encoding="utf-8"))
    chosen = [body for heading, body in sections if keep is None or heading.startswith(keep)]
    parts = [preamble, *(_demote(body, level) for body in chosen)]
    source = f"From `benchmarks/results/{file}` (regenerate the README's copy with `python -m benchmarks.readme`)."
    return "\n\n".join([source, *(p for p in parts if p)]) + "\n"


def _marked(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- bench:{name} -->\n)(.*?)(<!-- /bench:{name} -->)", re.DOTALL)


def current(text: str, name: str) -> str | None:
    """The README's copy of a block, or None when its markers are missing."""
    found = _marked(name).search(text)
    return None if found is None else found.group(2)


def update(text: str) -> str:
    for name in BLOCKS:
        pattern = _marked(name)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- bench:{name} --> ... <!-- /bench:{name} --> block")
        text = pattern.sub(lambda m, n=name: m.group(1) + block(n) + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report the blocks that differ (exit 1)")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    stale = [name for name in BLOCKS if current(text, name) != block(name)]
    if args.check:
        print("\n".join(f"stale: {name}" for name in stale) or "the README's benchmark blocks are current")
        return 1 if stale else 0
    README.write_text(update(text), encoding="utf-8")
    print(f"updated {', '.join(stale) or 'nothing (all current)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The code blocks of README.md and docs/*.md, and the markers that say how each is run.

A block is run as written unless an HTML comment directly above its opening fence (one
marker per line, invisible once the page is rendered) says otherwise::

    <!-- doc: skip REASON -->          illustrative only (other hosts, real certificates,
                                        a fragment of a larger program); REASON is required
    <!-- doc: tested-by PATH -->       run by the test module PATH, which has a harness of
                                        its own (it must exist and name the page)
    <!-- doc: needs SERVICE -->        start SERVICE (``SERVICES`` in tests/test_docs.py)
                                        before the block; it runs until the page is done
    <!-- doc: service SERVICE -->      the block starts a server: SERVICE is started in its
                                        place, on the page's free ports, and kept running
    <!-- doc: file PATH -->            save the block as PATH (a config file, a script)
    <!-- doc: expect TEXT -->          the block's output must contain TEXT (repeatable)

A marker on a line of its own (not directly above a fence) holds for every block of the
page: ``<!-- doc: tested-by tests/test_cluster_docs.py -->`` under a page's title hands the
whole page to that module.

Only ``python`` and ``sh`` blocks run; other languages (``toml``, ``ini``...) are saved
when marked ``file`` and otherwise read as text. Pages are found by globbing, so a new
page is run as soon as it exists.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Languages run by the doc runner; any other block is text (or a file when marked).
RUN_LANGUAGES = frozenset({"python", "sh"})

#: Marker verbs and whether they take an argument.
VERBS = {"skip": True, "tested-by": True, "needs": True, "service": True, "file": True,
         "expect": True}  # fmt: skip

_MARKER = re.compile(r"^\s*<!--\s*doc:\s*(\S+)\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


class MarkerError(ValueError):
    """A marker the runner does not understand (the message names page and line)."""


@dataclasses.dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    markers: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def marked(self, verb: str) -> list[str]:
        return [argument for name, argument in self.markers if name == verb]

    @property
    def runs(self) -> bool:
        """Run by the doc runner itself (not skipped, not someone else's)."""
        return (
            self.language in RUN_LANGUAGES
            and not self.marked("skip")
            and not self.marked("tested-by")
            and not self.marked("service")
            and not self.marked("file")
        )


def pages() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in order, with their markers; ``MarkerError`` if bad."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    whole_page = _page_markers(page, lines)
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, language = fence.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]
        ]
        markers = whole_page + _markers(page, lines, i)
        found.append(Block(page, i + 1, language, "\n".join(body) + "\n", markers))
        i = end + 1
    return found


def _page_markers(page: Path, lines: list[str]) -> tuple[tuple[str, str], ...]:
    """Markers in runs of marker lines that are not directly above a fence."""
    markers: list[tuple[str, str]] = []
    for j, line in enumerate(lines):
        if not _MARKER.match(line):
            continue
        end = j
        while end < len(lines) and _MARKER.match(lines[end]):
            end += 1
        if end < len(lines) and _FENCE.match(lines[end]):
            continue
        markers.extend(_markers(page, lines, j + 1)[-1:])
    return tuple(markers)


def _markers(page: Path, lines: list[str], fence: int) -> tuple[tuple[str, str], ...]:
    markers = []
    j = fence - 1
    while j >= 0 and (match := _MARKER.match(lines[j])):
        verb, argument = match.groups()
        if verb not in VERBS:
            raise MarkerError(f"{page.name}:{j + 1}: unknown doc marker {verb!r} ({sorted(VERBS)})")
        if VERBS[verb] and not argument:
            raise MarkerError(f"{page.name}:{j + 1}: doc marker {verb!r} needs an argument")
        markers.append((verb, argument))
        j -= 1
    return tuple(reversed(markers))

"""The page linter: what a reader page of ``outputs/<run>/report/`` must not show, and what it must.

A reader page is for a colleague, not for the lab: no Python reprs (dicts, lists), no raw missing
values (``NaN``, ``<NA>``, ``None``), intervals as ``[lo, hi]`` and never as tuples, no absolute path
of the machine that ran it, no library log or progress bar, nothing fetched from the network, no
formula markup left as text, table headers in words; and it carries a real title, the run's purpose
banner (a run with a purpose) and a link to the index.

    python -m rlff_utils.pagecheck outputs/smoke/report     # every reader page; exit 1 on a defect
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

# Reader pages of a report folder: the notebooks' report pages, the index, the transcript browser
# (a sweep's report folder: its results page).
READER_PAGES = ("[0-9][0-9]_*.html", "index.html", "transcripts.html", "sweep.html")
BANNER_CLASS = "rlff-banner"

_INVISIBLE = {"script", "style", "head", "title", "annotation", "template"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

# (name, pattern) checked on every visible text node
TEXT_RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("dict or list repr", re.compile(r"""\{\s*['"][^'"\n]{1,80}['"]\s*:|\[\s*['"][^'"\n]*['"]\s*[,\]]|^\s*(\{\}|\[\])\s*$""")),
    ("raw missing value", re.compile(r"(?<![\w-])(NaN|nan|NaT|None|<NA>)(?![\w-])")),
    ("tuple interval", re.compile(r"\(\s*[-−+]?\d+(?:\.\d+)?(?:e-?\d+)?\s*,\s*[-−+]?\d+(?:\.\d+)?(?:e-?\d+)?\s*\)")),
    ("absolute machine path", re.compile(
        r"(?<![^\s'\"(=\[])/(?:home|root|tmp|work|Users|usr|var|opt|mnt|srv|private|scratch|data|nfs)/\S*"
        r"|\b[A-Z]:\\\S+")),
    ("formula markup", re.compile(r"(?:^|\s)\\(?:\s|$)|\$\$|\\[A-Za-z]{2,}|\\[ ,;!]|\w\">|\$[^$\s][^$\n]{0,80}?[\\_^{][^$\n]{0,80}?\$")),
    ("library log or progress output", re.compile(
        r"\d+%\|| it/s\]|s/it\]|\b\w*Warning: |Traceback \(most recent call last\)|\bWARNING\b|\bINFO\b[: ]"
        r"|Training Loss|Converting and de-quantizing")),
    ("Python object repr", re.compile(r"<Figure size|<matplotlib\.|<pandas\.|object at 0x[0-9a-f]+|<Axes:")),
)
CODE_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$")  # a snake_case header: a code name, not words


@dataclass
class _Page(HTMLParser):
    """One pass over a page: visible text nodes, table headers, title, links, banner, sources."""

    texts: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    title: str = ""
    links: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    banner: bool = False
    tag_markup: list[str] = field(default_factory=list)
    _stack: list[str] = field(default_factory=list)
    _header: list[str] | None = None

    def __post_init__(self) -> None:
        HTMLParser.__init__(self, convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag not in ("script", "style") and any(re.search(r"<[a-zA-Z/]", v) for v in a.values()):
            self.tag_markup.append(f"<{tag} {' '.join(f'{k}={v[:60]}' for k, v in a.items())}>")
        if BANNER_CLASS in a.get("class", "").split():
            self.banner = True
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        for attr in ("src", "href") if tag in ("script", "img", "link", "iframe") else ():
            if re.match(r"^(https?:)?//", a.get(attr, "")):
                self.external.append(f"<{tag} {attr}={a[attr]}>")
        if tag == "th":
            self._header = []
        if tag not in _VOID:
            self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "th" and self._header is not None:
            self.headers.append(" ".join("".join(self._header).split()))
            self._header = None
        if tag in self._stack:
            while self._stack and self._stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if "title" in self._stack:
            self.title += data
        if _INVISIBLE & set(self._stack) or not data.strip():
            return
        self.texts.append(data)
        if self._header is not None:
            self._header.append(data)


def lint_html(html: str, is_index: bool = False, banner: bool = True) -> list[str]:
    """Every defect of one reader page, as readable lines (empty: the page is clean). ``banner``:
    the run has a purpose, so the page must carry its banner."""
    page = _Page()
    page.feed(html)
    page.close()
    problems = []
    title = " ".join(page.title.split())
    if not title or title.lower() == "notebook":
        problems.append(f"title: {title or '(none)'!r} is not a real title")
    if not is_index and "index.html" not in page.links:
        problems.append("no link to index.html")
    if banner and not page.banner:
        problems.append(f"no purpose banner (an element of class {BANNER_CLASS!r})")
    problems += [f"external source: {x}" for x in page.external]
    problems += [f"formula markup inside a tag's attribute (a broken anchor): {x}" for x in page.tag_markup]
    if "application/vnd.jupyter.widget" in html:
        problems.append("a widget output (it needs a script from the network to show anything)")
    for text in page.texts:
        for name, pattern in TEXT_RULES:
            m = pattern.search(text)
            if m:
                start = max(m.start() - 40, 0)
                problems.append(f"{name}: …{' '.join(text[start:m.end() + 40].split())}…")
    problems += [f"code name as a table header: {h!r}" for h in page.headers if CODE_NAME.match(h)]
    return problems


def reader_pages(report_dir: Path) -> list[Path]:
    """The reader pages of a report folder (not the full pages, which keep everything)."""
    return sorted({p for pattern in READER_PAGES for p in Path(report_dir).glob(pattern)})


def lint_report(report_dir: Path, banner: bool = True) -> dict[str, list[str]]:
    """Each reader page's defects, by file name (pages without defects left out)."""
    out = {}
    for page in reader_pages(report_dir):
        # a sweep's page is its folder's index (the runs' own indexes link to it)
        problems = lint_html(page.read_text(encoding="utf-8"), is_index=page.name in ("index.html", "sweep.html"),
                             banner=banner)
        if problems:
            out[page.name] = problems
    return out


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m rlff_utils.pagecheck <run folder>/report", file=sys.stderr)
        return 2
    pages = reader_pages(Path(args[0]))
    if not pages:
        print(f"no reader pages in {args[0]}", file=sys.stderr)
        return 2
    found = lint_report(Path(args[0]))
    for name, problems in found.items():
        print(f"{name}: {len(problems)} defect(s)")
        for p in problems:
            print(f"  {p}")
    print(f"{len(pages)} page(s), {len(found)} with defects")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

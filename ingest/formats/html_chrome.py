"""Page chrome of HTML: the parts of a page that belong to the site, not to the document.

A reader skims past them; indexed, they repeat in every page of a site and answer questions with menus.
`find_chrome` marks, in one pass over the tree:

- `<nav>`, and elements whose ARIA role is navigation, banner (a site header), contentinfo (a site
  footer) or search;
- `<header>` and `<footer>` that are not inside an `<article>`, `<aside>`, `<main>`, `<nav>` or
  `<section>`: HTML gives those the banner and contentinfo roles (an article's own header stays), unless
  the header holds the page's `<h1>`;
- the navigation blocks of generated manuals, by their class or id (DocBook `navheader`/`navfooter`,
  Texinfo `nav-panel`, Sphinx `related` and `sphinxsidebar`, Javadoc `topNav`, breadcrumbs...);
- link bars: a short block of two or more links whose words, outside the links, are only navigation
  words ("Next: ..., Previous: ..., Up: ... [Contents][Index]"), and that names at least one of them.

A table of contents (links with chapter names and nothing else) is content, and stays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bs4 import BeautifulSoup
from bs4.element import NavigableString, PreformattedString, Tag

_CHROME_ROLES = frozenset({"navigation", "banner", "contentinfo", "search"})
_SECTIONING = frozenset({"article", "aside", "main", "nav", "section"})
_CHROME_CLASSES = frozenset(
    {
        "navheader",
        "navfooter",
        "nav-panel",
        "navpath",
        "nav-path",
        "navbar",
        "navigation",
        "topnav",
        "bottomnav",
        "subnav",
        "breadcrumb",
        "breadcrumbs",
        "related",
        "sphinxsidebar",
        "skip-link",
        "skiplink",
    }
)
_BAR_TAGS = frozenset(
    {"p", "div", "table", "tbody", "tr", "td", "ul", "ol", "li", "center", "span", "header", "footer"}
)
_NAV_WORDS = re.compile(
    r"\b(?:next|previous|prev|up|home|index|contents|content|top|toc|back|forward|table of contents|go to"
    r"|skip to content|main page|first|last|page)\b",
    re.IGNORECASE,
)
_NOT_WORD = re.compile(r"[\W\d_]+")
_BAR_MAX_CHARS = 300


@dataclass(slots=True)
class _Stats:
    chars: int = 0  # of all text below
    links: int = 0
    nav_link: bool = False  # a link's text is a navigation word
    loose: str = ""  # text outside links, up to _BAR_MAX_CHARS (then `long`)
    long: bool = False


def find_chrome(soup: BeautifulSoup) -> set[int]:
    """The `id()`s of the elements that are page chrome (see the module docstring)."""
    chrome: set[int] = set()
    stats: dict[int, _Stats] = {}
    # Post-order without recursion (generated pages nest deeper than the recursion limit).
    stack: list[tuple[Tag, bool]] = [(soup, True)]
    while stack:
        tag, entering = stack.pop()
        if entering:
            stack.append((tag, False))
            stack.extend((child, True) for child in reversed(tag.contents) if isinstance(child, Tag))
            continue
        own = _Stats()
        is_link = tag.name == "a" and tag.get("href") is not None
        for child in tag.contents:
            if isinstance(child, Tag):
                sub = stats.pop(id(child), _Stats())
                own.chars += sub.chars
                own.links += sub.links
                own.nav_link = own.nav_link or sub.nav_link
                if not is_link:
                    _add_loose(own, sub.loose, sub.long)
            elif isinstance(child, NavigableString) and not isinstance(child, PreformattedString):
                text = str(child)
                own.chars += len(text)
                if not is_link:
                    _add_loose(own, text, False)
        if is_link:
            own.links += 1
            own.nav_link = own.nav_link or bool(_NAV_WORDS.fullmatch(tag.get_text(" ", strip=True)))
        stats[id(tag)] = own
        if tag is not soup and (_marked(tag) or _link_bar(tag, own)):
            chrome.add(id(tag))
    return chrome


def _add_loose(own: _Stats, text: str, long: bool) -> None:
    if own.long:
        return
    own.loose += text
    if long or len(own.loose) > _BAR_MAX_CHARS:
        own.long, own.loose = True, ""


def _attr(tag: Tag, name: str) -> str:
    value = tag.get(name)
    if value is None:
        return ""
    return value if isinstance(value, str) else " ".join(value)


def _marked(tag: Tag) -> bool:
    if tag.name == "nav":
        return True
    if _attr(tag, "role").strip().lower() in _CHROME_ROLES:
        return True
    if tag.name in ("header", "footer") and not any(p.name in _SECTIONING for p in tag.parents):
        return not (tag.name == "header" and tag.find("h1") is not None)
    tokens = {t.lower() for t in _attr(tag, "class").split()} | {_attr(tag, "id").strip().lower()}
    return not tokens.isdisjoint(_CHROME_CLASSES)


def _link_bar(tag: Tag, own: _Stats) -> bool:
    if tag.name not in _BAR_TAGS or own.links < 2 or own.long or own.chars > _BAR_MAX_CHARS:
        return False
    labels = _NAV_WORDS.findall(own.loose)
    rest = _NOT_WORD.sub("", _NAV_WORDS.sub("", own.loose))
    return not rest and (own.nav_link or bool(labels))

"""Elements and the element search path.

An element is a directory on the search path. Discovery follows diskimage-builder:

* every search-path entry must be a directory;
* every sub-directory of an entry (symlinks to directories count) is an element, named after
  the basename of its real path;
* an element in an earlier entry replaces a later entry's element of the same name whole
  (nothing is merged), with a warning naming both paths;
* the built-in elements directory comes last, so users override built-ins.

Parsing is done once, here: the rest of dib sees frozen :class:`Element` values.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from dib.errors import InvalidElementDir

log = logging.getLogger("dib.element")

#: Hook script names dib-run-parts accepts (``RUN_PARTS_REGEX`` in diskimage-builder).
HOOK_NAME = re.compile(r"^[0-9A-Za-z_-]+$")
#: environment.d file names.
ENV_NAME = re.compile(r"^[0-9A-Za-z_.-]+$")


def _read_list(path: Path) -> Tuple[str, ...]:
    """Read element-deps / element-provides: one name a line; blank and ``#`` lines skipped.

    diskimage-builder takes a ``# comment`` line as an element name; we do not.
    Repeated names are kept once, in first-seen order.
    """
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ()
    names: Dict[str, None] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names[line] = None
    return tuple(names)


_ADORNMENT = re.compile(r"^([=\-~^*#+`:.'\"_])\1*$")


def _first_paragraph(lines: Sequence[str]) -> str:
    """The first paragraph of prose, joined into one line.

    Section titles (a line with an adornment line under it), adornment lines, rst comments
    and directives (``.. x``) and Markdown headings are skipped; the paragraph ends at a blank
    line, a title, a directive or a field (``:Default:``)."""
    para: List[str] = []
    for i, line in enumerate(lines):
        text = line.strip()
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        structural = (not text or _ADORNMENT.match(text) or re.match(r"\.\.(\s|$)", text)
                      or text.startswith("#") or re.match(r":\w[^:]*:(\s|$)", text)
                      or bool(_ADORNMENT.match(nxt)))
        if structural:
            if para:
                break
            continue
        para.append(text)
    return " ".join(para)


_RST_MARKUP = (
    (re.compile(r"``(.+?)``"), r"\1"),                           # ``literal``
    (re.compile(r":[\w.+-]+:`([^`<]*?)\s*<[^`>]*>`"), r"\1"),     # :role:`text <target>`
    (re.compile(r":[\w.+-]+:`([^`]*)`"), r"\1"),                  # :role:`x`
    (re.compile(r"`([^`<]*?)\s*<[^`>]*>`__?"), r"\1"),            # `text <url>`_
    (re.compile(r"`([^`]+)`__?"), r"\1"),                        # `ref`_
    (re.compile(r"`([^`]+)`"), r"\1"),                           # `interpreted`, Markdown code
    (re.compile(r"\*\*(.+?)\*\*"), r"\1"),                       # **strong**
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])"), r"\1"),  # *emphasis*
    (re.compile(r"\\(.)"), r"\1"),                              # backslash escapes
)
_ABBREVIATIONS = ("e.g", "i.e", "etc", "cf", "vs", "approx", "incl", "resp")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def strip_rst(text: str) -> str:
    """Inline RST markup (literals, roles, references, emphasis) reduced to its text."""
    for pattern, repl in _RST_MARKUP:
        text = pattern.sub(repl, text)
    return text


def first_sentence(text: str) -> str:
    """Up to the first full stop (or ! or ?) that ends a sentence: followed by the end or by
    a space and a capital letter, and not ending an abbreviation such as "e.g."."""
    for m in _SENTENCE_END.finditer(text):
        head, tail = text[:m.start()], text[m.end():].lstrip()
        if head.lower().endswith(_ABBREVIATIONS) or head.endswith("."):
            continue
        if not tail or tail[0].isupper() or tail[0].isdigit() or tail[0] in "\"'(`*":
            return text[:m.end()]
    return text


def summarize(lines: Sequence[str], limit: int = 240) -> str:
    """The first sentence of the first paragraph of a README, markup stripped; a sentence
    longer than ``limit`` characters is cut at a word boundary and ends in "..."."""
    text = re.sub(r"\s*::$", ":", _first_paragraph(lines))  # "text::" opens a literal block
    sentence = first_sentence(strip_rst(text))
    if len(sentence) <= limit:
        return sentence
    cut = sentence[:limit - 3]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(",;:") + "..."


def run_parts_key(name: str) -> Tuple[int, bytes]:
    """dib-run-parts order: ``LANG=C sort -n`` -- leading number, then the bytes of the name."""
    m = re.match(r"\d+", name)
    return (int(m.group()) if m else 0, name.encode())


@dataclass(frozen=True)
class Element:
    name: str
    path: Path
    deps: Tuple[str, ...] = ()
    provides: Tuple[str, ...] = ()
    #: phase directory name (e.g. ``install.d``) -> hook script names, in run-parts order
    hooks: Mapping[str, Tuple[str, ...]] = field(default_factory=dict, compare=False)

    @property
    def summary(self) -> str:
        """The first sentence of README.rst (or README.md) after its title, inline markup
        stripped (:func:`summarize`), or ''."""
        for readme in ("README.rst", "README.md"):
            try:
                lines = (self.path / readme).read_text(errors="replace").splitlines()
            except OSError:
                continue
            return summarize(lines)
        return ""

    def environment_files(self) -> Tuple[Path, ...]:
        env_dir = self.path / "environment.d"
        if not env_dir.is_dir():
            return ()
        return tuple(env_dir / n for n in sorted(os.listdir(env_dir), key=run_parts_key)
                     if ENV_NAME.match(n) and (env_dir / n).is_file())


def load_element(path: Path) -> Element:
    """Build an :class:`Element` from its directory (already resolved to a real path)."""
    hooks: Dict[str, Tuple[str, ...]] = {}
    for entry in sorted(path.iterdir()):
        if entry.name.endswith(".d") and entry.is_dir() and entry.name != "environment.d":
            scripts = [p.name for p in entry.iterdir()
                       if HOOK_NAME.match(p.name) and p.is_file() and os.access(p, os.X_OK)]
            if scripts:
                hooks[entry.name] = tuple(sorted(scripts, key=run_parts_key))
    return Element(
        name=path.name,
        path=path,
        deps=_read_list(path / "element-deps"),
        provides=_read_list(path / "element-provides"),
        hooks=hooks,
    )


@dataclass(frozen=True)
class Catalogue:
    """Every element available on a search path, by name."""

    elements: Mapping[str, Element]
    search_path: Tuple[Path, ...]
    #: name -> paths of the same-named elements that the winner replaced, nearest first
    overridden: Mapping[str, Tuple[Path, ...]] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.elements

    def __getitem__(self, name: str) -> Element:
        return self.elements[name]

    def names(self) -> Tuple[str, ...]:
        return tuple(sorted(self.elements))

    def providers_of(self, virtual: str) -> Tuple[str, ...]:
        return tuple(sorted(n for n, e in self.elements.items() if virtual in e.provides))


def builtin_elements_dir() -> Path:
    """The elements shipped with dib: ``elements/`` beside the package in a checkout,
    else the copy installed as the ``dib._elements`` package data."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "elements"
    if checkout.is_dir() and (here.parent / "setup.cfg").is_file():
        return checkout
    return here / "_elements"


def search_path(elements_path: Optional[str], builtin: Optional[Path] = None) -> Tuple[Path, ...]:
    """``ELEMENTS_PATH`` entries (colon separated, earlier wins) followed by the built-ins,
    unless ELEMENTS_PATH names the built-in directory itself (then it stays where it is).

    An empty component (``a::b``, a leading or trailing ``:``) is an error, as in
    diskimage-builder. The built-in directory is left out when it does not exist (an install
    that ships no elements), so it never causes a "not a directory" error of its own.
    """
    entries: List[Path] = []
    if elements_path:
        for part in elements_path.split(":"):
            if not part:
                raise InvalidElementDir(
                    f"ELEMENTS_PATH entry '' is not a directory (ELEMENTS_PATH={elements_path!r})",
                    hint="remove the empty entry: a '::', or a leading or trailing ':'")
            entries.append(Path(part))
    builtin = builtin if builtin is not None else builtin_elements_dir()
    if any(e.resolve() == builtin.resolve() for e in entries):
        pass  # placed by the caller (ELEMENTS_PATH=$(element-info --builtin-path):...)
    elif builtin.is_dir():
        entries.append(builtin)
    else:
        log.debug("no built-in elements directory at %s", builtin)
    return tuple(entries)


def _is_element_dir(child: Path) -> bool:
    """Sub-directories are elements, except hidden ones and ``__pycache__`` (dib's own
    elements directory holds a ``__pycache__``, which dib registers as an element)."""
    return child.is_dir() and not child.name.startswith(".") and child.name != "__pycache__"


def discover(paths: Sequence[Path]) -> Catalogue:
    """Scan ``paths`` (earlier entries win) into a :class:`Catalogue`.

    Every entry is checked before any is scanned: one that is not a directory is an error even
    when every element could be found elsewhere.
    """
    paths = tuple(paths)
    for entry in paths:
        if not entry.is_dir():
            raise InvalidElementDir(
                f"element search path entry '{entry}' is not a directory",
                hint="check ELEMENTS_PATH: every colon-separated entry must be an existing "
                     "directory")
    found: Dict[str, Element] = {}
    overridden: Dict[str, List[Path]] = {}
    for entry in reversed(paths):  # later entries first, so earlier ones replace them
        try:
            children = sorted(entry.iterdir())
        except OSError as exc:
            raise InvalidElementDir(f"cannot read element search path entry '{entry}': "
                                    f"{exc.strerror or exc}") from exc
        for child in children:
            if not _is_element_dir(child):
                continue
            real = child.resolve()
            old = found.get(real.name)
            if old is not None and old.path == real:
                continue  # the same directory reached twice
            try:
                element = load_element(real)
            except OSError as exc:
                raise InvalidElementDir(f"cannot read element '{real.name}' at {real}: "
                                        f"{exc.strerror or exc}") from exc
            if old is not None:
                log.warning("element %s at %s overrides %s", element.name, real, old.path)
                overridden.setdefault(element.name, []).insert(0, old.path)
            found[element.name] = element
    return Catalogue(elements=dict(sorted(found.items())), search_path=paths,
                     overridden={k: tuple(v) for k, v in sorted(overridden.items())})


def hook_dirs(elements: Iterable[Element]) -> Tuple[str, ...]:
    """All phase directories used by ``elements``, sorted."""
    return tuple(sorted({d for e in elements for d in e.hooks}))

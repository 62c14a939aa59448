"""Cleaning untrusted entry names, breakout checks, and exclude patterns.

These lexical checks give Docker's error semantics (a hostile name fails the whole
extraction with a clear message). They are not the security boundary: the jail is.
"""

from __future__ import annotations

import posixpath

from chrootarchive.errors import BreakoutError, MalformedArchiveError, quoted

TYPE_CHECKING = False  # typing is not imported at run time: worker start-up
if TYPE_CHECKING:
    import re
    from collections.abc import Iterable

__all__ = ["EXCLUDE_STYLES", "PatternMatcher", "TarPatternMatcher", "check_symlink",
           "clean_name", "exclude_matcher", "hardlink_target", "strip_components"]

#: How exclude patterns match: ``docker`` (anchored at the root, ``*`` within one
#: component, ``!`` exceptions) or ``tar`` (GNU tar's ``--exclude``).
EXCLUDE_STYLES = ("docker", "tar")


def clean_name(unsafe_name: str) -> str:
    """Return the root-relative clean form of an entry name (``.`` for the root).

    Like Go's ``filepath.Clean`` then join to the root: a rooted name cannot climb
    above the root (``/../x`` is ``x``); a relative one that climbs is a breakout.

    Raises:
        BreakoutError: the name leaves the root.
        MalformedArchiveError: the name holds a NUL byte.
    """
    name = unsafe_name[2:] if unsafe_name.startswith("./") else unsafe_name
    # The same test is written out in Unpacker.apply (keep them alike).
    if (name and name[0] not in "./" and name[-1] != "/" and "//" not in name
            and "/." not in name and "\x00" not in name):
        return name  # already clean (most names): no normpath
    if "\x00" in unsafe_name:
        raise MalformedArchiveError("entry name contains a NUL byte", repr(unsafe_name))
    cleaned = posixpath.normpath(unsafe_name) if unsafe_name else "."
    if cleaned.startswith("/"):
        cleaned = posixpath.normpath("/" + cleaned.lstrip("/")).lstrip("/") or "."
    elif cleaned == ".." or cleaned.startswith("../"):
        raise BreakoutError("name would leave the destination", unsafe_name)
    return cleaned


def strip_components(unsafe_name: str, count: int) -> str | None:
    """GNU tar's ``--strip-components``: ``unsafe_name`` without its first ``count``
    components, or None when nothing is left (the entry is then skipped).

    As GNU tar counts them: leading slashes are skipped, a run of slashes is one
    separator, and ``.`` is a component (``./a/b`` stripped of 1 is ``a/b``).
    """
    end = len(unsafe_name)
    at = 0
    while at < end and unsafe_name[at] == "/":
        at += 1
    for _ in range(count):
        at = unsafe_name.find("/", at)
        if at < 0:
            return None
        while at < end and unsafe_name[at] == "/":
            at += 1
    return unsafe_name[at:] or None


def hardlink_target(unsafe_target: str, entry: str) -> str:
    """Clean a hardlink target (root-relative, absolute means root-relative)."""
    if not unsafe_target:
        raise MalformedArchiveError("hardlink with an empty target", entry)
    try:
        return clean_name(unsafe_target)
    except BreakoutError:
        raise BreakoutError(
            f"hardlink target {quoted(unsafe_target)} would leave the destination", entry
        ) from None


def check_symlink(name: str, unsafe_target: str, entry: str) -> None:
    """Docker's rule: a relative target that climbs above the root is a breakout.

    Absolute targets are allowed: inside the jail they resolve inside.
    """
    if "\x00" in unsafe_target:
        raise MalformedArchiveError("symlink target contains a NUL byte", entry)
    if unsafe_target.startswith("/") or ".." not in unsafe_target:
        return  # absolute, or no ".." at all (the usual target): it cannot climb
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), unsafe_target))
    if joined == ".." or joined.startswith("../"):
        raise BreakoutError(
            f"symlink target {quoted(unsafe_target)} would leave the destination", entry
        )


def _translate(pattern: str, *, across_slashes: bool = False) -> str:
    """One glob to a regex: Docker's (``filepath.Match`` plus ``**``: ``*`` and ``?``
    stay within one component) or, ``across_slashes``, GNU tar's (``*`` and ``?``
    match ``/`` too: tar's default for excludes; ``[]...]`` holds a ``]``)."""
    pieces = _pieces(pattern, across_slashes=across_slashes)
    return "".join(pieces if across_slashes else _placed_once(pieces))


_STAR = "[^/]*"  # Docker's "*": within one component


def _one_char(piece: str) -> bool:
    """Whether ``piece`` (of :func:`_pieces`) matches one character, never ``/``:
    every piece but the stars matches one character (a literal, ``?``, a class)."""
    import re  # see _pieces

    return piece not in (_STAR, ".*", "(?:.*/)?") and re.fullmatch(piece, "/") is None


def _placed_once(pieces: list[str]) -> list[str]:
    """Docker's pieces with each part between two stars that matches a fixed number
    of characters, none a ``/``, placed at its earliest (an atomic group, Python
    3.11): any later place would only have left more to the star after it, which
    could take it, as nothing there is a ``/``. As one plain regex, ``*a*a*a*b``
    took 0.3 s a component of 255 characters, every split among the stars tried."""
    from itertools import pairwise  # only for patterns

    stars = [i for i, piece in enumerate(pieces) if piece == _STAR]
    out = list(pieces)
    for start, end in pairwise(stars):
        middle = pieces[start + 1:end]
        if middle and all(_one_char(piece) for piece in middle):
            out[start] = "(?>[^/]*?" + "".join(middle) + ")"
            for i in range(start + 1, end):
                out[i] = ""
    return out


def _pieces(pattern: str, *, across_slashes: bool) -> list[str]:
    """:func:`_translate`'s regex, a piece for each part of the glob (``.*`` for each
    run of stars across slashes, and only for those)."""
    import re  # only for patterns (the worker imports it before the jail when needed)

    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if across_slashes:
                while i + 1 < n and pattern[i + 1] == "*":
                    i += 1  # a run of stars is one: no needless backtracking
                out.append(".*")
            elif pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    # "**/": whole components, or none (Docker's "(.*/)?"): "**/.git"
                    # is no "foo.git", "a/**/b" no "a/xb"
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            else:
                out.append(_STAR)
        elif c == "?":
            out.append("." if across_slashes else "[^/]")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            first = i + 2 if across_slashes and pattern.startswith("[]", i) else i + 1
            j = pattern.find("]", first)
            if j < 0:
                raise ValueError(f"bad exclude pattern {pattern!r}: unclosed '['")
            body = pattern[i + 1 : j]
            if body.startswith("^"):
                body = "!" + body[1:]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return out


def _tar_regex(pattern: str) -> str:
    """GNU tar's pattern as a regex of the name's tails that start after a ``/``, in
    time linear in the name for each of its parts: as one plain regex, ``*a*a*b``
    took 3 s a name of 2,000 characters (every start, every split among the stars).

    Each part between two stars is of fixed length, so its earliest place after the
    one before is as good as any (the star after it can take what a later place
    would skip): found once, in an atomic group (Python 3.11), never tried again. So
    is the earliest start: with a star after the first part, a match from a later
    start is also one from the earliest. Only the last star backtracks (the match may
    end at the name's end or before any ``/``)."""
    parts: list[list[str]] = [[]]
    for piece in _pieces(pattern, across_slashes=True):
        if piece == ".*":
            parts.append([])
        else:
            parts[-1].append(piece)
    texts = ["".join(part) for part in parts]
    if len(texts) == 1:  # no star: of fixed length, tried after each "/"
        return "(?:.*/)?" + texts[0]
    first, *middle, last = texts
    return ("(?>(?:.*?/)??" + first + ")" + "".join(f"(?>.*?{m})" for m in middle)
            + ".*" + last)


_GLOB_CHARS = frozenset("*?[\\")


class TarPatternMatcher:
    """GNU tar's ``--exclude``: a pattern matches the whole name, or any tail of it
    that starts after a ``/``, and a name below what it matches (``*.txt`` excludes
    ``a.txt`` and ``sub/b.txt``; ``sub`` excludes ``sub``, ``x/sub`` and ``sub/f``).
    No ``!`` exceptions: a leading ``!`` is literal, as in tar.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        import re  # see _translate

        alternatives = [_tar_regex(p.rstrip("/") or p) for p in patterns if p]
        self._regex = (re.compile("(?:" + "|".join(alternatives) + r")(?:/.*)?\Z",
                                  re.DOTALL) if alternatives else None)

    def __bool__(self) -> bool:
        return self._regex is not None

    def matches(self, path: str) -> bool:
        """True when ``path`` (clean, root-relative) is excluded."""
        return self._regex is not None and self._regex.match(path) is not None


def _parent_ends(path: str, count: int) -> list[int]:
    """Where the first ``count`` parents of ``path`` end (the "/" after each)."""
    ends: list[int] = []
    end = path.find("/")
    while end >= 0 and len(ends) < count:
        ends.append(end)
        end = path.find("/", end + 1)
    return ends


def exclude_matcher(patterns: Iterable[str], style: str = "docker"
                    ) -> PatternMatcher | TarPatternMatcher:
    """The matcher for ``style`` (:data:`EXCLUDE_STYLES`)."""
    if style == "tar":
        return TarPatternMatcher(patterns)
    return PatternMatcher(patterns)


class _ComponentGlob:
    """A Docker pattern with two or more ``**`` components (``a/**/b/**/c``), matched
    component by component: as one regex, each ``**`` a ``(?:.*/)?``, a name of 1,300
    components took seconds (the regex tries every split of it among them); here
    (components) x (pattern components) tests at most. It matches what its regex
    matches: the pattern, then ``/`` and anything, or the end."""

    __slots__ = ("_parts",)

    def __init__(self, parts: list[re.Pattern[str] | int]) -> None:
        # a component's regex, or for "**": 0 (any number of components), 1 (the
        # last: one or more, as "a/**" is "a/.*")
        self._parts = parts

    @classmethod
    def of(cls, text: str) -> _ComponentGlob | None:
        """The matcher of ``text`` (clean), or None where one regex does as well (one
        ``**``) or better (``**`` inside a component, ``[...]`` or ``\\`` escapes)."""
        import re  # see _translate

        names = text.split("/")
        if names.count("**") < 2 or "[" in text or "\\" in text or any(
                "**" in name and name != "**" for name in names):
            return None
        parts: list[re.Pattern[str] | int] = [
            (1 if i == len(names) - 1 else 0) if name == "**"
            else re.compile(_translate(name) + r"\Z") for i, name in enumerate(names)]
        return cls(parts)

    def match(self, path: str) -> bool | None:
        """True when the pattern matches ``path`` or one of its parents, else None."""
        names = path.split("/")
        count = len(names)
        reach = [0]  # the components matched so far, each way that got there (sorted)
        for part in self._parts:
            if isinstance(part, int):
                reach = list(range(reach[0] + part, count + 1))
            else:
                reach = [at + 1 for at in reach if at < count and part.match(names[at])]
            if not reach:
                return None
        return True


class PatternMatcher:
    """Docker's exclude patterns: globs per path, ``!`` exceptions, last match wins.

    A pattern that matches a directory also matches everything below it. Consecutive
    literal patterns (no glob characters) of the same polarity become one set lookup,
    so that a list of tens of thousands of names stays fast.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        # Each rule: (negated, regex or None, depth, literal set or None).
        self._rules: list[tuple[bool, re.Pattern[str] | _ComponentGlob | None, int,
                                set[str] | None]] = []
        for raw in patterns:
            text = raw.strip()
            if not text:
                continue
            negated = text.startswith("!")
            if negated:
                text = text[1:]
            text = posixpath.normpath(text).lstrip("/") or "."
            if not _GLOB_CHARS.intersection(text):
                # depth: the components of the deepest name in the set, the parents
                # of a path worth looking up (a path of 1,000 parts: not 1,000 joins)
                depth = text.count("/") + 1
                last = self._rules[-1] if self._rules else None
                if last is not None and last[3] is not None and last[0] == negated:
                    last[3].add(text)
                    self._rules[-1] = (negated, None, max(depth, last[2]), last[3])
                else:
                    self._rules.append((negated, None, depth, {text}))
                continue
            import re  # see _translate

            # The components a match spans, to test the one parent that could match;
            # 0: "**" spans any number, so the pattern may match any parent (Docker's
            # MatchesOrParentMatches: "**/.git" excludes ".git/config" and "a/.git/x"),
            # which one match says: the pattern, then "/" and anything, or the end.
            # DOTALL: a name may hold a newline, which "**" crosses as any character.
            regex: re.Pattern[str] | _ComponentGlob
            if "**" in text:
                regex, depth = _ComponentGlob.of(text) or re.compile(
                    _translate(text) + r"(?:/.*)?\Z", re.DOTALL), 0
            else:
                regex, depth = re.compile(_translate(text) + r"\Z"), text.count("/") + 1
            self._rules.append((negated, regex, depth, None))

    def __bool__(self) -> bool:
        return bool(self._rules)

    def matches(self, path: str) -> bool:
        """True when ``path`` (clean, root-relative) is excluded."""
        excluded = False
        parts: list[str] | None = None
        for negated, regex, depth, literals in self._rules:
            if excluded == (not negated):
                continue  # this rule could not change the answer
            if literals is not None:
                hit = path in literals or any(
                    path[:end] in literals for end in _parent_ends(path, depth))
            else:
                assert regex is not None
                hit = regex.match(path) is not None
                if not hit and depth:  # 0: the regex tested every parent already
                    if parts is None:
                        parts = path.split("/")
                    if depth < len(parts):
                        hit = regex.match("/".join(parts[:depth])) is not None
            if hit:
                excluded = not negated
        return excluded

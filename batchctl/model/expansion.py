"""How one plan entry stands for several items: a ``matrix`` of variables and
a ``dirs`` glob of test directories (docs/decisions.md, "Matrices and
directory globs").

An expanded item is named ``ENTRY[LABEL,...]``: the directory's label first
(for ``dirs``), then ``KEY=VALUE`` per matrix variable in the order written.
Every character of a label or value outside ``[A-Za-z0-9._-]`` is written as
``%XX`` (its UTF-8 bytes; a ``/`` of a label spanning directory levels
too), so a name holds nothing but ``[A-Za-z0-9._%=,[]-]``: it splits back
into its parts unambiguously, and is the same text in a JSON string, a log
line and a file name (a shell needs it quoted, for the brackets).
"""

from __future__ import annotations

import glob
import itertools
import math
import re
import string
from collections.abc import Iterator, Sequence
from pathlib import Path

# Per entry: a mistyped matrix must not make a batch of millions of items.
MAX_ITEMS_PER_ENTRY = 10_000
# A name fits in one file name (NAME_MAX), should anything ever file items by
# name, and in one line of a table.
MAX_ITEM_NAME = 255

SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._-")
# Python's glob syntax: a component with one of these is matched, not taken as written.
_MAGIC = re.compile(r"[*?[]")

MatrixAxes = tuple[tuple[str, tuple[str, ...]], ...]


class ExpansionProblem(ValueError):
    """An entry that cannot be expanded; the message is the one-line reason."""


def encode_label(text: str) -> str:
    """``text`` with every character outside ``[A-Za-z0-9._-]`` as ``%XX``."""
    if all(character in SAFE_CHARACTERS for character in text):
        return text
    return "".join(
        character
        if character in SAFE_CHARACTERS
        # surrogateescape: a directory name that is not UTF-8 keeps its bytes.
        else "".join(f"%{byte:02X}" for byte in character.encode("utf-8", "surrogateescape"))
        for character in text
    )


def item_name(entry: str, labels: Sequence[str]) -> str:
    return f"{entry}[{','.join(labels)}]"


def base_name(item: str) -> str:
    """The entry an item name comes from: ``test`` for ``test[py=3.11]``."""
    return item.partition("[")[0]


def combinations(axes: MatrixAxes) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Every combination of a matrix, first key outermost: its ``KEY=VALUE``
    labels and its variables."""
    keys = [key for key, _ in axes]
    for values in itertools.product(*(values for _, values in axes)):
        yield (
            [f"{key}={encode_label(value)}" for key, value in zip(keys, values, strict=True)],
            dict(zip(keys, values, strict=True)),
        )


def combination_count(axes: MatrixAxes) -> int:
    return math.prod(len(values) for _, values in axes)


def pattern_problem(pattern: str) -> str | None:
    """Why a ``dirs`` pattern is refused before it is matched, if it is."""
    if not pattern.strip():
        return "must not be empty"
    if "\0" in pattern:
        return "must not contain a NUL character"
    components = _components(pattern)
    if any("**" in component for component in components):
        return f"{pattern!r}: '**' (any depth) is not supported; use one '*' per directory level"
    if not any(_MAGIC.search(component) for component in components):
        return f"{pattern!r} has no wildcard (*, ? or [...]): for one directory, use 'dir'"
    return None


def _components(path: str) -> list[str]:
    # glob joins what it matched with single slashes and drops a trailing one.
    return [component for component in path.split("/") if component]


def glob_dirs(pattern: str, base_dir: Path) -> list[tuple[str, str]]:
    """Each directory ``pattern`` matches, relative to ``base_dir`` as ``dir``
    is (an absolute pattern gives absolute paths), sorted, with its label:
    the components the pattern's wildcards matched, joined with ``/`` and
    encoded (so ``tests/*/`` labels ``tests/api`` as ``api``,
    ``suites/*/tests/`` labels ``suites/api/tests`` as ``api``, and ``*/*/``
    labels ``a/x`` as ``a%2Fx``). Raises ExpansionProblem."""
    wild = [bool(_MAGIC.search(component)) for component in _components(pattern)]
    found: list[str] = []
    try:
        # glob, not Path.glob: an absolute pattern is allowed, as an absolute
        # 'dir' is, and Path.glob refuses one; and glob's '*' leaves hidden
        # directories out, as a shell's does, where Path.glob's takes them.
        for match in glob.iglob(pattern, root_dir=base_dir):  # noqa: PTH207
            if (base_dir / match).is_dir():
                found.append(match.rstrip("/") or match)
                if len(found) > MAX_ITEMS_PER_ENTRY:
                    raise ExpansionProblem(
                        f"{pattern!r} matches more than {MAX_ITEMS_PER_ENTRY:,} directories "
                        f"(at most {MAX_ITEMS_PER_ENTRY:,} items per entry)"
                    )
    except ExpansionProblem:
        raise
    except (OSError, ValueError) as exc:
        raise ExpansionProblem(f"{pattern!r} cannot be matched: {exc}") from None
    if not found:
        raise ExpansionProblem(f"{pattern!r} matches no directory (relative to {base_dir})")
    matches = []
    for match in sorted(found):
        try:
            match.encode("utf-8")
        except UnicodeEncodeError:
            raise ExpansionProblem(
                f"{pattern!r} matches {match.encode('utf-8', 'surrogateescape')!r}, "
                "whose name is not UTF-8 text"
            ) from None
        components = _components(match)
        if len(components) == len(wild):
            parts = [part for part, is_wild in zip(components, wild, strict=True) if is_wild]
        else:  # not seen: glob keeps one component per pattern component
            parts = components[-1:]
        matches.append((match, encode_label("/".join(parts))))
    return matches

"""Griffe extension: read the project's docstring conventions as Google-style sections.

The package's docstrings use a few conventions that griffe's Google parser does not read as
intended; this extension rewrites each docstring's text before it
is parsed, so the API reference renders what the docstring says:

* ``Example:`` (singular) opens an examples section (griffe reads it as an admonition, whose
  ``>>>`` lines Markdown then renders as nested quotes);
* ``:math:`x``` (reStructuredText) and a ``.. math::`` block become MathML, converted at build
  time by ``latex2mathml``: browsers typeset MathML themselves, so the site loads no math
  renderer and works offline (LaTeX that the converter refuses is shown as its source, in a
  code span or a ``tex`` block);
* a reStructuredText simple table (columns under runs of ``=``) becomes a Markdown table;
* ``a, b: text`` in an ``Args:``/``Arguments:`` section documents each of ``a`` and ``b``.

The source files are not changed.
"""

from __future__ import annotations

import re

import griffe
from latex2mathml.converter import convert as latex_to_mathml

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_MATH = re.compile(r":math:`([^`]*)`")
_ARGS = re.compile(r"^(\s*)(Args|Arguments|Parameters):\s*$")
_MATH_BLOCK = re.compile(r"^(\s*)\.\. math::[ \t]*(.*)$")
_BORDER = re.compile(r"^(\s*)(=+)((?: +=+)+)\s*$")
_GROUPED = re.compile(r"^(\s+)([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+):(\s.*|)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_grouped_arguments(text: str) -> str:
    """Write each ``a, b: text`` entry of an argument section as one entry per name."""
    lines = text.splitlines()
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() and section_indent is not None and _indent(line) <= section_indent:
            section_indent = None
        opened = _ARGS.match(line)
        grouped = _GROUPED.match(line) if section_indent is not None else None
        if opened:
            section_indent = len(opened.group(1))
        if not grouped:
            out.append(line)
            i += 1
            continue
        pad, names, rest = grouped.groups()
        body = []  # the entry's continuation lines: blank or indented deeper than its name
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(pad)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
            i -= 1
        for name in names.split(","):
            out += [f"{pad}{name.strip()}:{rest}", *body]
    return "\n".join(out)


def _math_blocks(text: str) -> str:
    """Write each ``.. math::`` directive (inline or with an indented body) as a tex code block."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        opened = _MATH_BLOCK.match(lines[i])
        if not opened:
            out.append(lines[i])
            i += 1
            continue
        pad, first = opened.groups()
        body = [first] if first.strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(pad)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        depth = min((_indent(b) for b in body[1 if first.strip() else 0 :] if b.strip()), default=0)
        code = [body[0].strip()] if first.strip() else []
        code += [b[depth:] for b in body[1 if first.strip() else 0 :]]
        mathml = _mathml(" ".join(c.strip() for c in code if c.strip()), display="block")
        if mathml is not None:
            out += ["", f"{pad}{mathml}", ""]
        else:
            out += [f"{pad}```tex", *(f"{pad}{c}" if c else "" for c in code), f"{pad}```", ""]
    return "\n".join(out)


def _mathml(latex: str, *, display: str = "inline") -> str | None:
    """`latex` as one line of MathML, or None where the converter cannot read it."""
    try:
        # "~" in these docstrings means "distributed as" (LaTeX would print a space)
        latex = latex.replace("~", r"\sim ")
        mathml = latex_to_mathml(latex, display=display).replace("\n", "")
    except Exception:  # noqa: BLE001 - any refusal of the converter: keep the source
        return None
    return None if "\\" in mathml else mathml  # a command it does not know, passed through


def _inline_math(match: re.Match) -> str:
    mathml = _mathml(match.group(1))
    # in a span: Markdown reads a line that starts with <math> as a block of HTML of its own
    return f'<span class="math">{mathml}</span>' if mathml is not None else f"`{match.group(1)}`"


def _simple_tables(text: str) -> str:
    """Write each simple table (border, header, border, rows, border) as Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        border = _BORDER.match(lines[i])
        closing = (
            [j for j in range(i + 2, len(lines)) if lines[j] == lines[i]][:2] if border else []
        )
        if len(closing) < 2 or closing[0] != i + 2:  # not border, header, border, ..., border
            out.append(lines[i])
            i += 1
            continue
        starts = [m.start() for m in re.finditer(r"=+", lines[i])]

        def cells(line: str, starts=starts) -> list[str]:
            # a cell that runs past its column's end pushes the next cell to its next blank
            cuts = [0]
            for start in starts[1:]:
                cut = max(start, cuts[-1])
                while 0 < cut < len(line) and line[cut - 1] != " ":
                    cut += 1
                cuts.append(cut)
            bounds = [*cuts[1:], None]
            return [
                line[a:b].strip().replace("|", "\\|") for a, b in zip(cuts, bounds, strict=True)
            ]

        pad = border.group(1)
        out.append(f"{pad}| " + " | ".join(cells(lines[i + 1])) + " |")
        out.append(f"{pad}|" + "---|" * len(starts))
        for row in lines[i + 3 : closing[1]]:
            if row.strip():
                out.append(f"{pad}| " + " | ".join(cells(row)) + " |")
        i = closing[1] + 1
    return "\n".join(out)


def rewrite(text: str) -> str:
    """The docstring `text` with the project's conventions written as griffe reads them."""
    text = _EXAMPLE.sub(r"\1Examples:", text)
    text = _simple_tables(_math_blocks(text))
    text = _MATH.sub(_inline_math, text)
    return _split_grouped_arguments(text)


class ProjectDocstrings(griffe.Extension):
    """Rewrite every docstring with `rewrite` when griffe loads the object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        """Rewrite `obj`'s docstring, if it has one."""
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)

"""The docs site's docstring rewriting (docs/hooks/griffe_docstrings.py): maths become MathML."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("griffe")
pytest.importorskip("latex2mathml")

_PATH = Path(__file__).resolve().parents[1] / "docs" / "hooks" / "griffe_docstrings.py"
_SPEC = importlib.util.spec_from_file_location("griffe_docstrings", _PATH)
hooks = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(hooks)


def test_inline_math_becomes_mathml_inside_a_span_that_keeps_the_paragraph():
    text = hooks.rewrite("The precision\n:math:`Q = \\tau^2 K` of the field.")
    assert text.startswith('The precision\n<span class="math"><math ')
    assert "<msup><mi>&#x003C4;</mi><mn>2</mn></msup>" in text  # tau squared
    assert text.endswith("</math></span> of the field.")


def test_a_math_block_becomes_display_mathml_and_unreadable_latex_stays_source():
    block = hooks.rewrite("Text:\n\n.. math::\n\n    a_n = b^{2}\n\nafter")
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">' in block
    assert "after" in block and ".. math::" not in block
    assert hooks.rewrite(":math:`a^{`") == "`a^{`"  # unbalanced: the source
    assert hooks.rewrite(":math:`\\nocommand x`") == "`\\nocommand x`"  # unknown: the source

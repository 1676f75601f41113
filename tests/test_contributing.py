"""CONTRIBUTING.md's "Adding a layer" shows the real files: the snippet is the layer's source,
and its registration line is the one in ``liplax/nn/__init__.py``."""

from __future__ import annotations

import re
from pathlib import Path

import liplax.nn as ln
from liplax.nn.registry import entry

ROOT = Path(__file__).resolve().parents[1]


def _blocks(text: str) -> list[tuple[str, str]]:
    """(the comment line before it, the code) of every ```python block."""
    return re.findall(r"(?:<!-- (\S+) -->\n)?```python\n(.*?)```", text, flags=re.S)


def test_adding_a_layer_shows_the_real_files():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text[text.index("## Adding a layer"):text.index("## Adding a bound")]
    blocks = _blocks(section)
    path, code = blocks[0]
    assert path == "liplax/nn/scaled_identity.py"
    assert code == (ROOT / path).read_text()
    line = blocks[1][1].strip()
    assert line in (ROOT / "liplax/nn/__init__.py").read_text().splitlines()
    assert entry(ln.ScaledIdentity(2.0)) is not None  # registered by that import

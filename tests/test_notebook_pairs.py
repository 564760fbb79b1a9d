"""Every notebook is paired with a jupytext `py:percent` file (the file people review and edit);
papermill executes the `.ipynb`. The two must hold the same cells."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PAIRS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in nb.cells]


def test_every_notebook_has_a_script():
    assert PAIRS, "no numbered notebooks"
    for ipynb in PAIRS:
        assert ipynb.with_suffix(".py").is_file(), f"{ipynb.name} has no paired .py (jupytext --sync)"
    scripts = {p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py")}
    assert scripts == {p.stem for p in PAIRS}, "a .py without its .ipynb"


@pytest.mark.parametrize("ipynb", PAIRS, ids=lambda p: p.stem)
def test_pair_in_sync(ipynb):
    nb = jupytext.read(ipynb)
    py = jupytext.read(ipynb.with_suffix(".py"))
    assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    assert _cells(py) == _cells(nb), (
        f"{ipynb.name} and {ipynb.with_suffix('.py').name} differ: edit the .py, then "
        f"`jupytext --sync notebooks/{ipynb.with_suffix('.py').name}`")

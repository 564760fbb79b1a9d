"""Write a notebook from a list of (kind, source) cells: notebooks are generated from readable
Python so their diffs review well, and committed without outputs.

    from tools.nbgen import write_notebook
    write_notebook("notebooks/01_data_prep.ipynb", [("md", "# Title"), ("params", ""), ("code", "x = 1")])
"""

from __future__ import annotations

import textwrap

import nbformat

PARAMETERS = 'params_file = "../params/smoke.yaml"\noverrides = {}'


def write_notebook(path: str, cells: list[tuple[str, str]]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src in cells:
        src = textwrap.dedent(src).strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        elif kind == "params":
            cell = nbformat.v4.new_code_cell(src or PARAMETERS)
            cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
        else:
            nb.cells.append(nbformat.v4.new_code_cell(src))
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    nbformat.validate(nb)
    nbformat.write(nb, path)

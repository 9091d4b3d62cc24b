"""The notebooks run top to bottom on the bundled data (executed with nbclient, as CI does)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_both_notebooks_are_there_and_match_their_builder() -> None:
    assert {p.name for p in NOTEBOOKS} == {"evaluation.ipynb", "retraining.ipynb"}
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_notebooks", NOTEBOOKS[0].parent / "build_notebooks.py"
    )
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    built = {"retraining.ipynb": builder.RETRAIN, "evaluation.ipynb": builder.EVALUATION}
    for name, cells in built.items():
        committed = nbformat.read(NOTEBOOKS[0].parent / name, as_version=4)
        assert [c.source for c in committed.cells] == [c.source for c in cells], (
            f"{name} differs from notebooks/build_notebooks.py: rerun it"
        )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # raises CellExecutionError naming the cell and its traceback
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors

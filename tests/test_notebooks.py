"""The notebooks run top to bottom (quick mode) and are committed without outputs.

Each notebook in ``notebooks/`` is executed with nbclient in a kernel running this interpreter (so a clean clone with
the test extra needs no registered Jupyter kernel), with ``CGT_TWIN_QUICK=1``: fewer optimiser steps and draws, never
skipped cells. A cell that raises fails the test with the cell's source and the error.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra: pip install -e '.[test]'")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra: pip install -e '.[test]'")
pytest.importorskip("ipykernel", reason="ipykernel is in the test extra: pip install -e '.[test]'")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600  # per cell; quick mode keeps whole notebooks far below this (see the report in the PR)


def _kernel_manager_class():
    """A kernel manager that starts ``sys.executable -m ipykernel_launcher`` whatever kernels are registered."""
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import KernelManager

    class ThisInterpreter(KernelManager):
        @property
        def kernel_spec(self) -> KernelSpec:
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name="cgt_twin test kernel", language="python", env={})

    return ThisInterpreter


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    for expected in ("01_quickstart", "02_calibrate_hybrid_cho", "04_mpc_feeding", "05_hek293_aav",
                     "06_tcell_expansion", "07_write_your_own_kinetics"):
        assert expected in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stripped(path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for index, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name} cell {index} has outputs: strip them before committing"
            assert cell.get("execution_count") is None, f"{path.name} cell {index} has an execution count"
    assert book.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("CGT_TWIN_QUICK", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    monkeypatch.chdir(tmp_path)  # whatever a notebook writes lands here; datasets are found from the package
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(book, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}},
                                     kernel_manager_class=_kernel_manager_class())
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{exc}", pytrace=False)
    seconds = time.perf_counter() - start
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    figures = sum(1 for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if "image/png" in o.get("data", {}))
    assert figures >= 1, f"{path.name} drew no figure"
    print(f"{path.name}: {seconds:.1f} s, {figures} figures")
    if os.environ.get("CGT_TWIN_NOTEBOOK_TIMES"):  # a file to collect the timings in
        with open(os.environ["CGT_TWIN_NOTEBOOK_TIMES"], "a", encoding="utf-8") as handle:
            handle.write(f"{path.stem} {seconds:.1f}\n")

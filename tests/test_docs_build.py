"""The documentation site builds with ``mkdocs build --strict`` (broken links, missing pages, docstring problems and
unknown references all fail it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is in the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is in the docs extra: pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    for page in ("index.html", "api/models/index.html", "how-to/calibrate/index.html", "models/cho/index.html"):
        assert (site / page).is_file(), page
    models = (site / "api/models/index.html").read_text(encoding="utf-8")
    assert "CHOFedBatch" in models and "TCellExpansion" in models  # mkdocstrings rendered the API

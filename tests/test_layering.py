"""The package layering of docs/architecture.md: what importing the model library pulls in."""

from __future__ import annotations

import subprocess
import sys


def _imported_after(statement: str) -> set[str]:
    roots = "{m.split('.')[0] for m in sys.modules}"
    code = f"import sys; {statement}; print(' '.join(sorted({roots})))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return set(done.stdout.split())


def test_importing_the_model_library_pulls_in_neither_benchmark_nor_rdkit() -> None:
    imported = _imported_after("import deepset_moe, deepset_moe.calculator")
    assert not imported & {"benchmark", "baselines", "rdkit", "tblite", "dscribe"}, imported


def test_importing_the_registry_pulls_in_no_benchmark() -> None:
    imported = _imported_after("import baselines")
    assert "benchmark" not in imported and "rdkit" not in imported, imported

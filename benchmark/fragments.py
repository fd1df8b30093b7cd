"""Fragment vocabulary of GMD-26 (per-atom labels).

The helper implementing SMARTS assignment extends this module; the vocabulary order below is
a contract shared with the model (fragment embeddings) and stored data: never reorder it.
"""

from __future__ import annotations

FRAGMENT_NAMES: tuple[str, ...] = (
    "carboxylic_acid",
    "hydroxyl",
    "primary_amine",
    "aldehyde",
    "CH3",
    "CH2",
    "CH",
    "C",
)
"""Fragment label i is ``FRAGMENT_NAMES[i]``; hydrogens take the label of their heavy atom."""

FRAGMENT_INDEX: dict[str, int] = {name: i for i, name in enumerate(FRAGMENT_NAMES)}
NUM_FRAGMENTS: int = len(FRAGMENT_NAMES)
SUPPORTED_ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O")

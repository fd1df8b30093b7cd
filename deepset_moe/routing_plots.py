"""Matplotlib figures of fragment x expert matrices (routing fractions, attributions).

Figures are built on the non-interactive Agg canvas so they work headless (TensorBoard,
CLI); callers own the returned figure (``writer.add_figure`` closes it, otherwise call
``matplotlib.pyplot.close(fig)`` or ``fig.savefig``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def draw_fragment_expert_heatmap(
    ax: Axes,
    matrix: np.ndarray,
    fragment_names: Sequence[str],
    title: str,
    colorbar_label: str,
    diverging: bool = False,
) -> None:
    """Draw an [F, K] matrix on ``ax`` with fragments as rows and experts as columns.

    NaN cells (absent fragments) are drawn blank. By default the matrix holds fractions and
    the colour scale is fixed to [0, 1] (comparable across epochs and splits); with
    ``diverging`` it is symmetric about zero (signed quantities such as attributions).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if diverging:
        finite = np.abs(matrix[np.isfinite(matrix)])
        bound = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    else:
        image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    num_fragments, num_experts = matrix.shape
    ax.set_xticks(range(num_experts), [str(e) for e in range(num_experts)])
    ax.set_yticks(range(num_fragments), list(fragment_names))
    ax.set_xlabel("expert")
    ax.set_ylabel("fragment")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label=colorbar_label)


def fragment_expert_figure(
    matrix: np.ndarray,
    fragment_names: Sequence[str],
    title: str,
    colorbar_label: str = "fraction of assignments",
    diverging: bool = False,
) -> Figure:
    """A standalone figure holding one :func:`draw_fragment_expert_heatmap`."""
    figure = Figure(figsize=(3.5 + 0.5 * matrix.shape[1], 1.5 + 0.4 * matrix.shape[0]))
    draw_fragment_expert_heatmap(
        figure.add_subplot(), matrix, fragment_names, title, colorbar_label, diverging
    )
    figure.tight_layout()
    return figure

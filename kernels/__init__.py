"""Hot-path kernels of DeepSet-MoE: segment sums, mixture-of-experts routing, expert MLPs.

Each op has a PyTorch reference (its definition), a Triton implementation, an autograd
Function whose backward is itself differentiable, and a public entry point that picks the
backend by device:

* :mod:`kernels.segment_sum`: ``segment_sum_csr``, ``segment_sum_index`` and their adjoints
  ``segment_broadcast_csr``, ``segment_broadcast_index``;
* :mod:`kernels.routing`: ``topk_gate``, ``dispatch``, ``combine``;
* :mod:`kernels.grouped`: ``grouped_linear``, ``grouped_mlp`` (per-expert layers on rows
  grouped by expert, without host synchronisation on the GPU);
* :mod:`kernels.backend`: the backend rule and the ``DEEPSET_MOE_KERNELS`` switch;
* :mod:`kernels.triton_segment_sum`, :mod:`kernels.triton_routing`,
  :mod:`kernels.triton_grouped`: the Triton kernels (imported only when they run);
* :mod:`kernels.check`: every kernel against its reference (``python -m kernels.check``);
* :mod:`kernels.bench`: micro-benchmarks of the kernels with their performance goals
  (``python -m kernels.bench``); the model-level speed (training step with kernels on/off,
  MD-step inference against MACE) is ``benchmark.evaluation.speed``.

``tools/gpu/run_all.sh`` runs check, bench and the model speed on a GPU machine and collects
their logs and JSON reports.
"""

"""Hot-path kernels of DeepSet-MoE: segment sums and mixture-of-experts routing.

Each op has a PyTorch reference (its definition), a Triton implementation, an autograd
Function whose backward is itself differentiable, and a public entry point that picks the
backend by device:

* :mod:`kernels.segment_sum`: ``segment_sum_csr``, ``segment_sum_index`` and their adjoints
  ``segment_broadcast_csr``, ``segment_broadcast_index``;
* :mod:`kernels.routing`: ``topk_gate``, ``dispatch``, ``combine``;
* :mod:`kernels.backend`: the backend rule and the ``DEEPSET_MOE_KERNELS`` switch;
* :mod:`kernels.triton_segment_sum`, :mod:`kernels.triton_routing`: the Triton kernels
  (imported only when they run);
* :mod:`kernels.check`: every kernel against its reference (``python -m kernels.check``);
* :mod:`kernels.bench`: micro-benchmarks and a training step (``python -m kernels.bench``).
"""

"""Gates of the DeepSet-MoE router: router logits [N, K] -> sparse gate weights [N, k].

Two gates (``DeepSetMoEConfig.gate``):

``topk`` (the original gate, :func:`kernels.routing.topk_gate`)
    keeps the k most probable experts and renormalises their probabilities. When an atom's
    k-th and (k+1)-th probabilities cross, one expert replaces another with a finite weight,
    so the energy *jumps* there: it is only piecewise smooth in the positions.

``smooth_topk`` (:func:`smooth_topk_gate`, the default of new models)
    keeps the sparse compute (at most k experts per atom get a non-zero weight, and only the
    top-k experts are evaluated) but gives weights that are C2 functions of the logits, so
    the energy is C2 in the positions wherever the logits are.

Smooth top-k gate
-----------------

Notation, per atom: logits l_e (e = 1..K), probabilities p = softmax(l), l_(r) the r-th
largest logit, ramp width tau > 0 (``gate_width``, in logit units, i.e. nats of probability
ratio) and threshold slack delta = :data:`THRESHOLD_SLACK` x tau.

1. Smooth threshold. With the log elementary symmetric polynomials

       S_m(l) = (1 / beta) log sum_{|A| = m} exp(beta sum_{e in A} l_e)      (A: m experts)

   (a smooth upper bound of the sum of the m largest logits: l_(1) + .. + l_(m) <= S_m
   <= l_(1) + .. + l_(m) + log C(K, m) / beta), the threshold is

       t = S_{k+1}(l) - S_k(l) + log C(K, k) / beta,
       beta = [log C(K, k+1) + log C(K, k)] / delta,

   so that l_(k+1) <= t <= l_(k+1) + delta. t is a symmetric C-infinity function of the
   logits: it does not depend on how the experts are ranked. (It is a smoothed (k+1)-th
   largest logit; computed by a log-space recurrence over the experts, O(K k).)
2. Ramp. Each expert's margin m_e = l_e - t goes through the quintic smoothstep

       g(x) = 0 (x <= 0),   10 x^3 - 15 x^4 + 6 x^5 (0 < x < 1),   1 (x >= 1),

   whose value, first and second derivatives are continuous (g'(0) = g''(0) = g'(1) =
   g''(1) = 0): g_e = g(m_e / tau). An expert is off while l_e <= t (so all but the top k,
   since t >= l_(k+1)) and fully on once l_e >= t + tau.
3. Weights. With the ramped odds r_e = g_e exp(m_e) (expert e's probability relative to
   that of the threshold, times its ramp) and Z = sum_e r_e,

       w_e = r_e / D(Z),   D(Z) = Z (Z >= 1),   D(Z) = Z - (Z - 1)^3 / 4 (Z < 1),

   D is C2 at Z = 1 (D = 1, D' = 1, D'' = 0), increasing, D >= Z and D(0) = 1/4. So once
   some expert is clearly above the threshold (Z >= 1) the weights are the renormalised
   ramped probabilities w_e = g_e p_e / sum_f g_f p_f and sum to one; for experts far above
   the threshold (g = 1) they are exactly the weights of the hard top-k gate. When the top
   k+1 logits lie within about tau of each other (Z < 1) the weights sum to Z / D(Z) < 1
   and fade to zero with Z, at a bounded rate (dw/dr <= 4). (A small floor would
   renormalise two barely-open experts against each other, w_B = r_B / (r_A + r_B) jumping
   from 0 to 1/2 while both r are tiny: transitions as sharp as the floor is small.)

The fading near ties is unavoidable for a continuous gate with at most k experts: at a tie
of the top k+1 logits each of those experts is excluded from one side, so continuity forces
every one of their weights to zero there.

Continuity argument. Think of the dense weight vector w in R^K (zero for experts not
chosen). Every step above is a C2 function of l that never looks at the ranking: t is
symmetric and smooth, g and D are C2 and D >= 1/4 > 0. So w(l) is C2. The sparse
representation (the k most probable experts, :func:`torch.topk`, with their weights) holds
exactly the same numbers, because experts ranked k+1..K have l_e <= l_(k+1) <= t and
therefore w_e = 0. Where the top-k *set* changes (the k-th and (k+1)-th logits cross) both
experts concerned sit below the threshold, so which of the two is listed does not matter:
its weight and its first two derivatives are zero. Hence the mixture
h_i = sum_e w_ie expert_e(x_i) is C2 in the logits and the energy is C2 in the positions
wherever the router logits are (all router modes: the latent, the spatial descriptor and
the embeddings are smooth in positions inside the cutoff, and every edge enters with an
envelope whose value and first two derivatives vanish at the cutoff). Forces are therefore
continuous, which is what energy conservation in molecular dynamics needs. (Continuous is
not the same as gentle: an expert switches over a logit change of about tau + delta, and
velocity Verlet conserves energy only if the time step resolves that, i.e. if the logits
change by much less than tau per step.)

When k = K every expert is used and the gate is the plain softmax (w = p). With K = 1 this
gives w = 1 (the no-MoE control).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kernels.routing import Gate, topk_gate

NORMALISATION_FLOOR = 1.0
"""Z below which the weights no longer sum to one and fade out with Z (step 3 of the module
docstring)."""

THRESHOLD_SLACK = 0.5
"""delta / tau: the smooth threshold lies within delta = THRESHOLD_SLACK * tau above the
(k+1)-th logit."""


def smoothstep(x: Tensor) -> Tensor:
    """Quintic smoothstep: 0 for x <= 0, 1 for x >= 1, 10x^3 - 15x^4 + 6x^5 between (C2)."""
    x = x.clamp(0.0, 1.0)
    return x * x * x * (10.0 + x * (-15.0 + 6.0 * x))


def soft_floor(z: Tensor, floor: float) -> Tensor:
    """D(z) of the module docstring: z for z >= floor, a C2 cubic > 0 below it."""
    x = z / floor
    below = floor * (x - (x - 1.0) ** 3 / 4.0)
    return torch.where(z >= floor, z, below)


def smooth_kth_threshold(logits: Tensor, k: int, delta: float) -> Tensor:
    """Smooth threshold t [N] with l_(k+1) <= t <= l_(k+1) + delta (module docstring, step 1).

    Args:
        logits: [N, K] float, K > k.
        k: experts per atom, 1 <= k < K.
        delta: bound > 0 on the excess t - l_(k+1), logit units.

    Returns:
        [N] thresholds, a symmetric C-infinity function of each row of ``logits``
        (differentiable to any order by autograd).
    """
    num_experts = logits.shape[-1]
    if not 1 <= k < num_experts:
        raise ValueError(f"k must be in [1, K={num_experts}) for a threshold, got {k}")
    log_choose_k = math.log(math.comb(num_experts, k))
    log_choose_k1 = math.log(math.comb(num_experts, k + 1))
    beta = (log_choose_k + log_choose_k1) / delta
    # t is translation-equivariant (t(l - c) = t(l) - c): shift by the largest logit so that
    # beta * logits <= 0 (the shift cancels exactly in value and derivatives).
    shift = logits.detach().amax(dim=-1, keepdim=True)
    scaled = beta * (logits - shift)
    # log e_m(exp(scaled)), m = 0..k+1, by the recurrence e_m <- e_m + x_j e_{m-1} over the
    # experts j, in log space. logsumexp rather than torch.logaddexp: the latter's double
    # backward is NaN once a term underflows (float32 logits ~100 / beta apart).
    # log(0) (e_m with m > j after j experts) is stood in for by a finite value far below any
    # defined entry (those are >= (k+1) * min(scaled)), so no derivative meets inf - inf.
    undefined = (k + 2) * scaled.detach().amin(dim=-1, keepdim=True) - 100.0
    log_e = torch.cat((torch.zeros_like(undefined), undefined.expand(-1, k + 1)), dim=-1)
    for j in range(num_experts):
        extended = log_e[:, :-1] + scaled[:, j : j + 1]
        updated = torch.logsumexp(torch.stack((log_e[:, 1:], extended)), dim=0)
        log_e = torch.cat((log_e[:, :1], updated), dim=-1)
    return (log_e[:, k + 1] - log_e[:, k] + log_choose_k) / beta + shift.squeeze(-1)


def smooth_topk_gate(logits: Tensor, k: int, width: float, slack: float = THRESHOLD_SLACK) -> Gate:
    """Smooth sparse top-k gate (module docstring).

    Args:
        logits: [N, K] float router logits.
        k: experts per atom, 1 <= k <= K.
        width: tau > 0, width of the ramp, logit units.
        slack: delta / tau, bound on the threshold's excess over the (k+1)-th logit.

    Returns:
        :class:`kernels.routing.Gate`: ``probs`` [N, K] softmax, ``experts`` [N, k] long (the
        k most probable, in decreasing probability), ``weights`` [N, k] >= 0 (C2 in the
        logits; they sum to one unless the top k+1 logits nearly tie), ``counts`` [K]
        assignments per expert (zero-weight slots included).
    """
    if width <= 0 or slack <= 0:
        raise ValueError(f"gate width and slack must be > 0, got {width}, {slack}")
    top = topk_gate(logits, k, normalize=False)
    if k == logits.shape[-1]:
        return top  # dense softmax: w = p, already smooth
    threshold = smooth_kth_threshold(logits, k, slack * width).unsqueeze(-1)
    margin = logits.gather(1, top.experts) - threshold  # [N, k], m_e = l_e - t
    ramp = smoothstep(margin / width)
    # Z = sum_e g_e exp(m_e), computed with exp(min(m, tau)) (no overflow): that is exp(m)
    # wherever Z < 1; an expert with m > tau has g = 1 and makes Z > exp(tau) > 1 =
    # NORMALISATION_FLOOR, where fade = 1 and only the ratios below are used.
    odds = (ramp * torch.exp(margin.clamp(max=width))).sum(-1, keepdim=True)
    fade = odds / soft_floor(odds, NORMALISATION_FLOOR)  # Z / D(Z): 1 once Z >= 1
    ramped = ramp * top.weights  # g_e p_e (top.weights: the chosen experts' probabilities)
    total = ramped.sum(-1, keepdim=True)
    # w_e = fade * g_e p_e / sum_f g_f p_f = r_e / D(Z); the sum is 0 only where Z is 0 too.
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    weights = torch.where(total > 0, fade * ramped / safe_total, torch.zeros_like(ramped))
    return top._replace(weights=weights)


def apply_gate(name: str, logits: Tensor, k: int, width: float) -> Gate:
    """Gate ``name`` (``smooth_topk`` or ``topk``) of [N, K] logits with k experts per atom."""
    if name == "smooth_topk":
        return smooth_topk_gate(logits, k, width)
    if name == "topk":
        return topk_gate(logits, k)
    raise ValueError(f"unknown gate {name!r}; expected 'smooth_topk' or 'topk'")

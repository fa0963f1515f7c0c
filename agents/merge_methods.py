"""Data-free merging of experts fine-tuned from one base: state dicts in, one state dict out.

Contract:

- ``merge(base, experts, method, owners=..., **options)`` takes plain ``dict[str, torch.Tensor]`` state
  dicts that share one key set and, per key, one shape and dtype, and returns a new state dict with the
  base's keys, shapes and dtypes. No returned tensor shares memory with an input.
- Parameters named in ``owners`` belong to one expert (a per-embodiment head) and are copied from it.
- Every other floating-point tensor is merged from the task vectors tau_i = theta_i - theta_base,
  computed in float64 and cast back to the base's dtype.
- Every other tensor (integer buffers) must be equal in the base and all experts, and is copied.
- Bad input raises :class:`MergeError` with one line naming the problem (key, expert, option).

Methods (``METHODS``; their options and defaults are ``DEFAULT_OPTIONS``):

- ``avg``: the mean of the experts' weights (model soup).
- ``task_arithmetic``: theta_0 + scale * sum_i tau_i (Ilharco et al., ICLR 2023).
- ``ties``: TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint mean, scale.
- ``wudi``: WUDI-Merging (Cheng et al., ICML 2025, arXiv 2503.08099), solved in closed form per 2-D weight.
- ``wudi_adam``: the same objective solved by Adam as FusionBench's ``wudi_merging`` does.

WUDI's objective for one weight matrix (out x in) is the quadratic

    L(tau) = sum_i ||(tau - tau_i) tau_i^T||_F^2 / ||tau_i||_F^2,

whose minimum-norm minimiser is tau* = (sum_i w_i tau_i A_i)(sum_i w_i A_i)^+ with A_i = tau_i^T tau_i and
w_i = 1 / ||tau_i||_F^2 (setting the gradient 2 sum_i w_i (tau - tau_i) A_i to zero). Adam started at
sum_i tau_i approaches the same loss given enough steps and a learning rate suited to the size of the task
vectors; the closed form is exact and has neither. With FusionBench's lr 1e-5 and 300 steps an entry moves
by at most about 3e-3, so on larger task vectors ``wudi_adam`` stops well short of the minimiser and the two
methods give different merges: the papers' numbers are for that early-stopped iterate.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch

METHODS = ("avg", "task_arithmetic", "ties", "wudi", "wudi_adam")

DEFAULT_OPTIONS: dict[str, dict[str, float | int]] = {
    "avg": {},
    # FusionBench's Task Arithmetic / TIES tuning (docs/algorithms/ties_merging.md) finds the average
    # accuracy peaks near lambda = 0.3 on CLIP ViT-B/32, ViT-L/14 and Flan-T5 and uses 0.3 in its
    # experiments (its config/method/task_arithmetic.yaml template says 0.5). Ilharco et al. pick
    # lambda on validation data; with none, 0.3 is the better-supported guess.
    "task_arithmetic": {"scale": 0.3},
    # TIES: keep the top 20% ("topk20" in the authors' README) and a disjoint mean. The disjoint mean
    # keeps an entry at the size of one expert's change, so lambda = 1 adds it once; the authors search
    # lambda in [0.8, 2.5] on validation data.
    "ties": {"keep": 0.2, "scale": 1.0},
    "wudi": {},
    # FusionBench's wudi_merging: Adam, lr 1e-5, no weight decay, 300 iterations (ACE-Brain-0 ran 1,000).
    # Adam moves an entry by about lr per step, so steps * lr bounds how far an entry can travel.
    "wudi_adam": {"steps": 300, "lr": 1e-5},
}

# Singular values of the stacked, weighted task vectors below this fraction of the largest count as zero.
# Keeping a direction of singular value s costs a round-off error of about eps * s_max^2 / s (eps = 2.2e-16
# in float64); dropping it costs about s. The two meet at s = sqrt(eps) * s_max = 1.5e-8 * s_max, below
# float32 resolution (1.2e-7), so no direction a float32 expert really changed is dropped.
RANK_RTOL = 1e-8

StateDict = Mapping[str, torch.Tensor]


class MergeError(ValueError):
    """Inputs that cannot be merged: mismatched state dicts, non-finite values, a bad method or option."""


def merge(
    base: StateDict,
    experts: Sequence[StateDict],
    method: str,
    *,
    owners: Mapping[str, int] | None = None,
    **options: float | int,
) -> dict[str, torch.Tensor]:
    """Merge ``experts`` (fine-tuned from ``base``) into one state dict with ``method``.

    ``owners`` maps a parameter name to the index of the expert that owns it; that tensor is copied from
    its owner unchanged. ``options`` are the method's (``DEFAULT_OPTIONS``); a missing one takes its
    default. For ``wudi`` and ``wudi_adam`` only 2-D float tensors are solved for; every other float
    tensor (biases, norms, 1-D or N-D parameters) gets the experts' average, as FusionBench does.
    """
    experts = list(experts)
    opts = _check_options(method, options)
    _check_models(base, experts)
    owned = _check_owners(owners, base, len(experts))

    merged_keys = [k for k, t in base.items() if k not in owned and t.is_floating_point()]
    for key, b in base.items():
        if key not in owned and not b.is_floating_point():
            for i, e in enumerate(experts):
                if not torch.equal(e[key], b):
                    raise MergeError(f"{key!r} is not floating-point and differs between the base and expert {i}; "
                                     "only floating-point tensors are merged")
    with torch.no_grad():
        taus = {k: [e[k].detach().double() - base[k].detach().double() for e in experts] for k in merged_keys}
        deltas = _MERGERS[method](taus, **opts)
        out: dict[str, torch.Tensor] = {}
        for key, b in base.items():
            if key in owned:
                out[key] = experts[owned[key]][key].detach().clone()
            elif key in deltas:
                out[key] = (b.detach().double() + deltas[key]).to(b.dtype)
            else:
                out[key] = b.detach().clone()
    return out


def wudi_loss(tau: torch.Tensor, task_vectors: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """WUDI's loss of the merged task vector ``tau`` (out x in): sum_i ||(tau - tau_i) tau_i^T||^2 / ||tau_i||^2.

    Differentiable in ``tau``; computed in ``tau``'s dtype. A zero task vector (an expert equal to the
    base in this layer) adds nothing: its term is zero for every ``tau``.
    """
    return _loss(tau, *_nonzero(_stack(task_vectors, tau.dtype, tau.shape)))


def solve_wudi(task_vectors: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """The minimum-norm minimiser of :func:`wudi_loss` for one weight matrix, in float64.

    The loss equals ||tau S^T - C||_F^2 with S the stacked sqrt(w_i) tau_i (n*out x in) and C the
    side-by-side sqrt(w_i) tau_i tau_i^T, so tau* = C (S^T)^+, which is the closed form
    (sum_i w_i tau_i A_i)(sum_i w_i A_i)^+. Solving through the SVD of S rather than inverting
    sum_i w_i A_i = S^T S avoids squaring its condition number, and singular values under ``RANK_RTOL``
    of the largest count as zero, so rank-deficient task vectors (n*rank < in) are handled. The rows of
    tau* lie in the span of the task vectors' rows, which is also where gradient descent started at
    sum_i tau_i stays. Zero task vectors are left out; if all are zero the result is zero.
    """
    tvs, norms = _nonzero(_stack(task_vectors, torch.float64, None))
    n, rows, cols = tvs.shape
    if n == 0:
        return torch.zeros(rows, cols, dtype=torch.float64, device=tvs.device)
    root_w = norms.rsqrt().view(n, 1, 1)
    s = (root_w * tvs).reshape(n * rows, cols)
    c = (root_w * (tvs @ tvs.transpose(1, 2))).transpose(0, 1).reshape(rows, n * rows)
    u, sigma, vh = torch.linalg.svd(s, full_matrices=False)
    keep = sigma > RANK_RTOL * sigma[0]
    return ((c @ u[:, keep]) / sigma[keep]) @ vh[keep]


def solve_wudi_adam(task_vectors: Sequence[torch.Tensor] | torch.Tensor, *, steps: int, lr: float) -> torch.Tensor:
    """Minimise :func:`wudi_loss` by Adam from tau = sum_i tau_i, as FusionBench's ``wudi_merging`` (float64).

    Kept as the reference iteration to compare :func:`solve_wudi` against. Adam scales each entry's step
    on its own, so unlike plain gradient descent it leaves the span of the task vectors' rows: its result
    can differ from the closed form there by a component the loss does not see.
    """
    tvs, norms = _nonzero(_stack(task_vectors, torch.float64, None))
    tau = tvs.sum(0).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([tau], lr=lr, weight_decay=0.0)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            _loss(tau, tvs, norms).backward()
            optimizer.step()
    return tau.detach()


def _stack(task_vectors: Sequence[torch.Tensor] | torch.Tensor, dtype: torch.dtype, shape) -> torch.Tensor:
    if isinstance(task_vectors, torch.Tensor):
        tvs = task_vectors.detach().to(dtype)
    else:
        if len(task_vectors) == 0:
            raise MergeError("no task vectors given")
        first = task_vectors[0].shape
        for i, t in enumerate(task_vectors):
            if t.shape != first:
                raise MergeError(f"task vector {i} has shape {tuple(t.shape)}, task vector 0 has {tuple(first)}")
        tvs = torch.stack([t.detach().to(dtype) for t in task_vectors])
    if shape is not None and tvs.shape[1:] != shape:
        raise MergeError(f"task vectors have shape {tuple(tvs.shape[1:])}, tau has {tuple(shape)}")
    if tvs.dim() != 3:
        raise MergeError(f"WUDI works on 2-D weights; got task vectors of shape {tuple(tvs.shape[1:])}")
    return tvs


def _nonzero(tvs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-zero task vectors of a stack and their squared Frobenius norms."""
    norms = tvs.flatten(1).pow(2).sum(1)
    return tvs[norms > 0], norms[norms > 0]


def _loss(tau: torch.Tensor, tvs: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    products = (tau.unsqueeze(0) - tvs) @ tvs.transpose(1, 2)
    return (products.pow(2).sum((1, 2)) / norms).sum()


# --- methods: task vectors per key (float64) -> merged task vector per key ---------------------------


def _avg(taus: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack(t).mean(0) for k, t in taus.items()}


def _task_arithmetic(taus: dict[str, list[torch.Tensor]], *, scale: float) -> dict[str, torch.Tensor]:
    return {k: scale * torch.stack(t).sum(0) for k, t in taus.items()}


def _ties(taus: dict[str, list[torch.Tensor]], *, keep: float, scale: float) -> dict[str, torch.Tensor]:
    """TIES-Merging, Algorithm 1 of the paper.

    1. Trim: each expert keeps the ``keep`` fraction of its task vector's entries with the largest
       magnitudes, counted over all merged tensors together (the paper's flattened task vector), not
       per tensor; entries tied with the smallest kept magnitude are kept too.
    2. Elect: the sign of each entry is the sign of the sum of the trimmed values.
    3. Disjoint mean: the mean over the experts whose trimmed value is non-zero with the elected sign;
       an entry with no such expert (elected sign 0) stays at the base.
    """
    if not taus:
        return {}
    keys = list(taus)
    n = len(taus[keys[0]])
    flat = torch.stack([torch.cat([taus[k][i].flatten() for k in keys]) for i in range(n)])
    size = flat.shape[1]
    n_keep = math.ceil(keep * size)
    thresholds = flat.abs().kthvalue(size - n_keep + 1, dim=1, keepdim=True).values
    trimmed = torch.where(flat.abs() >= thresholds, flat, torch.zeros_like(flat))
    elected = trimmed.sum(0).sign()
    agree = (trimmed.sign() == elected) & (trimmed != 0)
    count = agree.sum(0)
    merged = torch.where(agree, trimmed, torch.zeros_like(trimmed)).sum(0) / count.clamp(min=1)
    out, start = {}, 0
    for k in keys:
        numel = taus[k][0].numel()
        out[k] = scale * merged[start:start + numel].view_as(taus[k][0])
        start += numel
    return out


def _wudi(taus: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: solve_wudi(t) if t[0].dim() == 2 else torch.stack(t).mean(0) for k, t in taus.items()}


def _wudi_adam(taus: dict[str, list[torch.Tensor]], *, steps: int, lr: float) -> dict[str, torch.Tensor]:
    return {k: solve_wudi_adam(t, steps=steps, lr=lr) if t[0].dim() == 2 else torch.stack(t).mean(0)
            for k, t in taus.items()}


_MERGERS = {"avg": _avg, "task_arithmetic": _task_arithmetic, "ties": _ties, "wudi": _wudi, "wudi_adam": _wudi_adam}


# --- checks -----------------------------------------------------------------------------------------


def _check_options(method: str, options: Mapping[str, object]) -> dict[str, float | int]:
    if method not in DEFAULT_OPTIONS:
        raise MergeError(f"unknown merge method {method!r}; use one of {', '.join(METHODS)}")
    defaults = DEFAULT_OPTIONS[method]
    for name in options:
        if name not in defaults:
            known = f"its options are {', '.join(defaults)}" if defaults else "it takes no options"
            raise MergeError(f"merge method {method!r} has no option {name!r}; {known}")
    opts = {**defaults, **options}
    for name, value in opts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise MergeError(f"{method} option {name}={value!r} is not a finite number")
    if "keep" in opts and not 0 < opts["keep"] <= 1:
        raise MergeError(f"ties option keep={opts['keep']!r} must be a fraction in (0, 1]")
    if "steps" in opts and (not isinstance(opts["steps"], numbers.Integral) or opts["steps"] < 1):
        raise MergeError(f"wudi_adam option steps={opts['steps']!r} must be a positive integer")
    if "lr" in opts and opts["lr"] <= 0:
        raise MergeError(f"wudi_adam option lr={opts['lr']!r} must be positive")
    return opts


def _check_models(base: StateDict, experts: list[StateDict]) -> None:
    if not experts:
        raise MergeError("merging needs at least 1 expert; got none")
    models = [("the base", base)] + [(f"expert {i}", e) for i, e in enumerate(experts)]
    for name, model in models:
        if not isinstance(model, Mapping):
            raise MergeError(f"{name} is a {type(model).__name__}, not a state dict")
        for key, t in model.items():
            if not isinstance(t, torch.Tensor):
                raise MergeError(f"{key!r} in {name} is a {type(t).__name__}, not a tensor")
    for name, model in models[1:]:
        missing = [k for k in base if k not in model]
        if missing:
            raise MergeError(f"{name} lacks {_some(missing)} of the base")
        extra = [k for k in model if k not in base]
        if extra:
            raise MergeError(f"{name} has {_some(extra)} that the base lacks")
        for key, b in base.items():
            t = model[key]
            if t.shape != b.shape:
                raise MergeError(f"{key!r}: {name} has shape {tuple(t.shape)}, the base {tuple(b.shape)}")
            if t.dtype != b.dtype:
                raise MergeError(f"{key!r}: {name} has dtype {t.dtype}, the base {b.dtype}")
    for name, model in models:
        for key, t in model.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise MergeError(f"{key!r} in {name} has non-finite values (NaN or inf)")


def _some(keys: list[str]) -> str:
    return f"{keys[0]!r}" + (f" and {len(keys) - 1} more keys" if len(keys) > 1 else "")


def _check_owners(owners: Mapping[str, int] | None, base: StateDict, n_experts: int) -> dict[str, int]:
    owners = dict(owners or {})
    for key, index in owners.items():
        if key not in base:
            raise MergeError(f"owners names {key!r}, which is not in the base state dict")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_experts:
            raise MergeError(f"owners[{key!r}] = {index!r} is not an expert index in 0..{n_experts - 1}")
    return owners

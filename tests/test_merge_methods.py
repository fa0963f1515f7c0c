"""Data-free merging (agents/merge_methods.py): hand-computed AVG / TA / TIES, WUDI's closed form against
its loss, its gradient and FusionBench-style Adam, owners, averaged biases, one-line errors, no aliasing."""

from __future__ import annotations

import pytest
import torch

from agents.merge_methods import (
    DEFAULT_OPTIONS,
    METHODS,
    MergeError,
    merge,
    solve_wudi,
    solve_wudi_adam,
    wudi_loss,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def low_rank_task_vectors(seed: int, n: int = 3, out: int = 16, inp: int = 12, shared: int = 8, rank: int = 5):
    """n task vectors (out x inp) of rank ``rank`` whose rows share one ``shared``-dim subspace of R^inp.

    n * rank > shared, so the experts interfere; shared < inp, so sum_i w_i A_i is singular (rank 8 of 12).
    """
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(inp, shared, generator=g, dtype=F64)).Q.T
    return [0.1 * torch.randn(out, rank, generator=g, dtype=F64) @ torch.randn(rank, shared, generator=g, dtype=F64)
            @ basis for _ in range(n)]


def row_space_projector(tvs):
    m = sum(t.T @ t / t.pow(2).sum() for t in tvs)
    return m @ torch.linalg.pinv(m, hermitian=True, rtol=1e-10)


def gradient(tau, tvs):
    tau = tau.clone().requires_grad_(True)
    wudi_loss(tau, tvs).backward()
    return tau.grad


# Measured on seeds 0-3 of low_rank_task_vectors: 500 steps at lr 2e-2 reach the closed form's loss within
# 3.5e-8 (relative; seed 1, the worst, is the one tested) and its row-space part within 2e-4 * ||tau*||;
# 500 steps at lr 1e-2 are up to 1.3e-3 off in loss, 3,000 at 1e-3 up to 4e-3. FusionBench's lr 1e-5 would
# need about 1e5 steps here: Adam moves an entry by about lr per step and tau* is O(1) from sum_i tau_i.
ADAM_STEPS, ADAM_LR = 500, 2e-2


@pytest.fixture(scope="module")
def wudi_case():
    tvs = low_rank_task_vectors(seed=1)
    return tvs, solve_wudi(tvs), solve_wudi_adam(tvs, steps=ADAM_STEPS, lr=ADAM_LR)


def model(seed: int, scale: float = 1.0, base: dict | None = None) -> dict[str, torch.Tensor]:
    """A small float32 state dict (two linear layers, a norm and an int buffer), or base + noise * scale."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"l1.weight": (6, 5), "l1.bias": (6,), "norm.weight": (6,), "l2.weight": (3, 6), "head.weight": (2, 3)}
    sd = {k: torch.randn(*s, generator=g) * scale for k, s in shapes.items()}
    if base is not None:
        sd = {k: base[k] + v for k, v in sd.items()}
    sd["steps"] = torch.tensor([7, 8])
    return sd


# --- WUDI: closed form ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,rank", [((6, 5), 5), ((8, 6), 2), ((3, 40), 3)])
def test_wudi_of_one_expert_is_that_expert(shape, rank):
    """tau A A^+ = tau up to float64 round-off: full rank, rank-deficient (2 of 6) and wide (3 x 40) layers.

    Integer-valued weights keep the rank-2 task vector exactly rank 2 after the float32 sum base + tau;
    an entry that should be 0 may come out as 1e-15, which float32 can hold, so the check is not bitwise."""
    g = torch.Generator().manual_seed(3)
    base = {"w": torch.randint(-9, 10, shape, generator=g).float(), "b": torch.randn(shape[0], generator=g)}
    tau = (torch.randint(-3, 4, (shape[0], rank), generator=g) @ torch.randint(-3, 4, (rank, shape[1]), generator=g))
    assert torch.linalg.matrix_rank(tau.double()) == rank
    expert = {"w": base["w"] + tau, "b": base["b"] + 1}
    merged = merge(base, [expert], "wudi")
    assert (merged["w"] - expert["w"]).abs().max() < 1e-12 * expert["w"].abs().max()
    assert torch.equal(merged["b"], expert["b"])


def test_wudi_of_one_rank_deficient_float32_expert_is_within_float32_resolution():
    """Rounding base + tau to float32 gives tau singular values near 1e-8 * s_max, at RANK_RTOL, so a few of
    them are dropped: the result may differ from the expert by an ulp of float32, not more."""
    g = torch.Generator().manual_seed(3)
    base = {"w": torch.randn(8, 6, generator=g)}
    expert = {"w": base["w"] + torch.randn(8, 2, generator=g) @ torch.randn(2, 6, generator=g)}
    merged = merge(base, [expert], "wudi")
    assert (merged["w"] - expert["w"]).abs().max() <= torch.finfo(torch.float32).eps * expert["w"].abs().max()


def test_closed_form_is_the_stationary_point_and_beats_the_alternatives(wudi_case):
    tvs, closed, adam = wudi_case
    total = sum(tvs)
    # gradient ~0 at tau* (relative to the gradient at the FusionBench start sum_i tau_i)
    assert gradient(closed, tvs).norm() < 1e-10 * gradient(total, tvs).norm()
    loss = wudi_loss(closed, tvs)
    for other in (total, total / len(tvs), adam, *tvs):
        assert loss <= wudi_loss(other, tvs)
    assert loss < 0.5 * wudi_loss(total, tvs)  # the case has real interference: the optimum is far better
    # a quadratic with its minimum at tau*: any step away costs
    g = torch.Generator().manual_seed(0)
    assert wudi_loss(closed + 1e-3 * torch.randn(closed.shape, generator=g, dtype=F64), tvs) > loss


def test_closed_form_matches_the_pseudo_inverse_formula_and_stays_in_the_row_space():
    tvs = low_rank_task_vectors(seed=2)
    w = [1 / t.pow(2).sum() for t in tvs]
    m = sum(wi * t.T @ t for wi, t in zip(w, tvs, strict=True))
    b = sum(wi * t @ t.T @ t for wi, t in zip(w, tvs, strict=True))
    closed = solve_wudi(tvs)
    assert torch.allclose(closed, b @ torch.linalg.pinv(m, hermitian=True, rtol=1e-10), rtol=0, atol=1e-10)
    assert torch.allclose(closed @ row_space_projector(tvs), closed, rtol=0, atol=1e-10)  # minimum norm


def test_closed_form_on_a_wide_layer_is_stationary():
    """n * out < in: the SVD of the stacked task vectors is short and wide."""
    g = torch.Generator().manual_seed(4)
    tvs = [torch.randn(4, 3, generator=g, dtype=F64) @ torch.randn(3, 50, generator=g, dtype=F64) for _ in range(3)]
    closed = solve_wudi(tvs)
    assert gradient(closed, tvs).norm() < 1e-10 * gradient(sum(tvs), tvs).norm()
    assert wudi_loss(closed, tvs) < wudi_loss(sum(tvs), tvs)


def test_adam_reaches_the_closed_form_loss(wudi_case):
    """Compared by loss and by the part inside the task vectors' row space: Adam scales each entry's step
    on its own, so it leaves that space (here by a third of ||tau*||), which the loss cannot see."""
    tvs, closed, adam = wudi_case
    loss, adam_loss = wudi_loss(closed, tvs).item(), wudi_loss(adam, tvs).item()
    assert 0 <= (adam_loss - loss) / loss < 1e-6  # measured 3.5e-8
    projector = row_space_projector(tvs)
    assert ((adam - closed) @ projector).norm() < 1e-3 * closed.norm()  # measured 2e-4
    outside = (adam @ (torch.eye(projector.shape[0], dtype=F64) - projector)).norm()
    assert outside > 0.1 * closed.norm()  # measured 0.33: why raw parameters are not compared


def test_zero_task_vectors_are_weighted_out():
    g = torch.Generator().manual_seed(5)
    tau = torch.randn(5, 4, generator=g, dtype=F64)
    zero = torch.zeros(5, 4, dtype=F64)
    assert torch.allclose(solve_wudi([zero, tau]), tau, atol=1e-12)
    assert torch.equal(solve_wudi([zero, zero]), zero)
    assert wudi_loss(tau, [zero, tau]) == 0
    assert torch.isfinite(solve_wudi_adam([zero, tau], steps=3, lr=1e-3)).all()

    base = model(0)
    expert = model(1, 0.1, base)
    merged = merge(base, [dict(base), expert], "wudi")
    assert torch.allclose(merged["l1.weight"], expert["l1.weight"], atol=1e-6)  # the unchanged expert adds nothing
    assert torch.allclose(merged["l1.bias"], (base["l1.bias"] + expert["l1.bias"]) / 2)  # biases are still averaged


@pytest.mark.parametrize("method", ["wudi", "wudi_adam"])
def test_wudi_averages_every_tensor_that_is_not_2d(method):
    base = model(0)
    base["conv.weight"] = torch.randn(2, 3, 2)
    experts = [model(i, 0.1, base) for i in (1, 2, 3)]
    for i, e in enumerate(experts):
        e["conv.weight"] = base["conv.weight"] + i
    merged = merge(base, experts, method, steps=20, lr=1e-3) if method == "wudi_adam" else merge(base, experts, method)
    for key in ("l1.bias", "norm.weight", "conv.weight"):
        assert torch.allclose(merged[key], torch.stack([e[key] for e in experts]).mean(0), atol=1e-6), key
    average = torch.stack([e["l1.weight"] for e in experts]).mean(0)
    assert not torch.allclose(merged["l1.weight"], average, atol=1e-3)  # 2-D weights are solved for


# --- AVG, task arithmetic, TIES on hand-computed numbers ----------------------------------------------


def test_avg_and_task_arithmetic_by_hand():
    base = {"w": torch.tensor([1.0, 1.0])}
    experts = [{"w": torch.tensor([2.0, 3.0])}, {"w": torch.tensor([0.0, 5.0])}]  # tau = [1, 2], [-1, 4]
    assert torch.equal(merge(base, experts, "avg")["w"], torch.tensor([1.0, 4.0]))
    assert torch.equal(merge(base, experts, "task_arithmetic", scale=0.5)["w"], torch.tensor([1.0, 4.0]))
    assert torch.allclose(merge(base, experts, "task_arithmetic")["w"], torch.tensor([1.0, 1.0 + 0.3 * 6]))
    assert DEFAULT_OPTIONS["task_arithmetic"]["scale"] == 0.3


def test_ties_by_hand():
    """Five entries per expert split over two tensors; keep=0.4 keeps 2 per expert over both together.

    tau_1 = [3, -1, .5 | 2, 0]    -> trimmed [3, 0, 0 | 2, 0]
    tau_2 = [-2, -4, .1 | 1, 1]   -> trimmed [-2, -4, 0 | 0, 0]
    tau_3 = [4, .2, -.3 | -5, 1]  -> trimmed [4, 0, 0 | -5, 0]
    sum [5, -4, 0 | -3, 0], elected signs [+, -, 0 | -, 0]
    disjoint mean [(3 + 4) / 2, -4, 0 | -5, 0]
    """
    base = {"a": torch.tensor([1.0, 1.0, 1.0]), "b": torch.tensor([-1.0, -1.0])}
    taus = [[3.0, -1.0, 0.5, 2.0, 0.0], [-2.0, -4.0, 0.1, 1.0, 1.0], [4.0, 0.2, -0.3, -5.0, 1.0]]
    experts = [{"a": base["a"] + torch.tensor(t[:3]), "b": base["b"] + torch.tensor(t[3:])} for t in taus]
    merged = merge(base, experts, "ties", keep=0.4, scale=0.5)
    assert torch.allclose(merged["a"], torch.tensor([1.0 + 0.5 * 3.5, 1.0 - 0.5 * 4, 1.0]))
    assert torch.allclose(merged["b"], torch.tensor([-1.0 - 0.5 * 5, -1.0]))
    # keep=1 trims nothing; with one expert TIES at scale 1 returns it
    assert torch.allclose(merge(base, experts[:1], "ties", keep=1.0)["a"], experts[0]["a"])


# --- owners, dtypes, aliasing --------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_owned_parameters_are_copied_and_nothing_aliases(method):
    base = model(0)
    experts = [model(i, 0.1, base) for i in (1, 2)]
    before = [{k: v.clone() for k, v in sd.items()} for sd in (base, *experts)]
    options = {"steps": 5, "lr": 1e-3} if method == "wudi_adam" else {}
    merged = merge(base, experts, method, owners={"head.weight": 1}, **options)

    assert list(merged) == list(base)
    for key, b in base.items():
        assert merged[key].shape == b.shape and merged[key].dtype == b.dtype, key
    assert torch.equal(merged["head.weight"], experts[1]["head.weight"])
    assert torch.equal(merged["steps"], base["steps"])
    assert not torch.equal(merged["l1.weight"], base["l1.weight"])
    for t in merged.values():
        t.add_(1)
    for original, sd in zip(before, (base, *experts), strict=True):
        assert all(torch.equal(original[k], sd[k]) for k in sd)


def test_dtypes_are_kept():
    base = {"w16": torch.ones(3, 2, dtype=torch.bfloat16), "w64": torch.ones(3, 2, dtype=F64),
            "half": torch.ones(4, dtype=torch.float16)}
    experts = [{k: v + 0.5 for k, v in base.items()}, {k: v - 0.25 for k, v in base.items()}]
    for method in ("avg", "ties", "wudi"):
        merged = merge(base, experts, method)
        assert {k: v.dtype for k, v in merged.items()} == {k: v.dtype for k, v in base.items()}


# --- errors -------------------------------------------------------------------------------------------


def one_line_error(match: str, *args, **kwargs) -> str:
    with pytest.raises(MergeError, match=match) as info:
        merge(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_mismatched_state_dicts_name_the_key():
    base = model(0)
    good = model(1, 0.1, base)

    missing = {k: v for k, v in good.items() if k != "l2.weight"}
    one_line_error(r"expert 1 lacks 'l2\.weight'", base, [good, missing], "avg")
    one_line_error(r"expert 0 has 'extra' that the base lacks", base, [{**good, "extra": torch.ones(1)}], "avg")
    one_line_error(r"'l1\.bias': expert 0 has shape \(7,\)", base, [{**good, "l1.bias": torch.ones(7)}], "wudi")
    one_line_error(r"'norm\.weight': expert 0 has dtype torch\.float64",
                   base, [{**good, "norm.weight": good["norm.weight"].double()}], "avg")
    one_line_error(r"'steps' is not floating-point and differs", base, [{**good, "steps": torch.tensor([7, 9])}], "avg")


def test_non_finite_values_name_the_key():
    base = model(0)
    bad = model(1, 0.1, base)
    bad["l2.weight"] = bad["l2.weight"].clone()
    bad["l2.weight"][0, 0] = float("nan")
    one_line_error(r"'l2\.weight' in expert 1 has non-finite", base, [model(2, 0.1, base), bad], "wudi")
    inf_base = {**base, "l1.bias": torch.full((6,), float("inf"))}
    one_line_error(r"'l1\.bias' in the base has non-finite", inf_base, [base], "avg")


def test_bad_methods_options_and_owners():
    base = model(0)
    experts = [model(1, 0.1, base)]
    one_line_error("unknown merge method 'sum'", base, experts, "sum")
    one_line_error("at least 1 expert", base, [], "avg")
    one_line_error("keep=0", base, experts, "ties", keep=0)
    one_line_error("keep=1.5", base, experts, "ties", keep=1.5)
    one_line_error("has no option 'scale'; it takes no options", base, experts, "avg", scale=1.0)
    one_line_error("has no option 'keep'", base, experts, "task_arithmetic", keep=0.2)
    one_line_error("scale=nan is not a finite number", base, experts, "task_arithmetic", scale=float("nan"))
    one_line_error("steps=0", base, experts, "wudi_adam", steps=0)
    one_line_error("lr=-0.1", base, experts, "wudi_adam", lr=-0.1)
    one_line_error(r"owners names 'nope'", base, experts, "avg", owners={"nope": 0})
    one_line_error(r"owners\['head\.weight'\] = 1 is not an expert index in 0\.\.0",
                   base, experts, "avg", owners={"head.weight": 1})

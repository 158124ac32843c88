"""The six techniques' kernels and the method registry, on small tensors with known answers."""

from __future__ import annotations

from typing import Annotated, Literal

import pluggy
import pytest
import torch

import evomerge
from evomerge import hookimpl, hookspecs
from evomerge.merge import (
    MergeConfigError,
    MethodRegistry,
    TaskArithmeticMethod,
    TensorMergeMethod,
    get_method,
)
from evomerge.merge.base import apply_task_arithmetic
from evomerge.merge.methods.dare import dare_mask
from evomerge.merge.methods.slerp import multislerp, slerp_chain, slerp_pair
from evomerge.merge.methods.ties import trim
from evomerge.merge.registry import UnknownMergeMethodError


def tensor_method(name: str) -> TensorMergeMethod:
    method = get_method(name)
    assert isinstance(method, TensorMergeMethod)
    return method


def ta_method(name: str) -> TaskArithmeticMethod:
    method = get_method(name)
    assert isinstance(method, TaskArithmeticMethod)
    return method


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_linear_of_identical_inputs_is_the_input() -> None:
    x = _randn(8, 5, seed=0)
    merged = tensor_method("linear").merge_tensors(
        [x, x, x], weights=[0.2, 0.3, 0.5], name="w", params={}
    )
    torch.testing.assert_close(merged, x)


def test_slerp_endpoints_and_identical_inputs() -> None:
    a, b = _randn(6, 4, seed=1), _randn(6, 4, seed=2)
    torch.testing.assert_close(slerp_pair(a, b, 0.0), a)
    torch.testing.assert_close(slerp_pair(a, b, 1.0), b)
    midpoint = slerp_pair(a, b, 0.5)
    # Spherical, not linear: the midpoint keeps more norm than the straight average.
    assert midpoint.norm() > ((a + b) / 2).norm()
    # Weight only on one input -> that input, for both modes.
    for fn in (slerp_chain, multislerp):
        torch.testing.assert_close(fn([a, b, a], [0.0, 1.0, 0.0]), b, atol=1e-5, rtol=1e-5)
        same = fn([a, a, a], [1 / 3] * 3)
        assert torch.isfinite(same).all()
        torch.testing.assert_close(same, a, atol=1e-5, rtol=1e-5)


def test_slerp_degenerate_inputs_never_nan() -> None:
    zero = torch.zeros(4, 3)
    a = _randn(4, 3, seed=3)
    method = tensor_method("slerp")
    for mode in ("chain", "multislerp"):
        for inputs in ([zero, zero, zero], [a, -a, zero], [a, a * (1 + 1e-7), a]):
            out = method.merge_tensors(
                inputs, weights=[1 / 3] * 3, name="w", params={"mode": mode, "eps": 1e-8}
            )
            assert torch.isfinite(out).all(), (mode, inputs)


def test_multislerp_matches_mergekit() -> None:
    from mergekit.merge_methods.base import TensorGroup
    from mergekit.merge_methods.multislerp import multislerp as mk_multislerp

    tensors = [_randn(16, 8, seed=s) + 0.5 for s in (4, 5, 6)]
    weights = [0.2, 0.5, 0.3]
    (expected,) = mk_multislerp([TensorGroup.from_tensors(tensors)], parameters={"weight": weights})
    torch.testing.assert_close(multislerp(tensors, weights), expected, atol=1e-6, rtol=1e-5)


def test_slerp_chain_matches_mergekit_pairwise_slerp() -> None:
    from mergekit.merge_methods.slerp import slerp as mk_slerp

    a, b, c = (_randn(10, 6, seed=s) for s in (7, 8, 9))
    step = mk_slerp(torch.tensor([0.5]), a[None], b[None])
    expected = mk_slerp(torch.tensor([1 / 3]), step, c[None])[0]
    torch.testing.assert_close(slerp_chain([a, b, c], [1 / 3] * 3), expected, atol=1e-6, rtol=1e-5)


def test_dare_keeps_density_and_rescales() -> None:
    delta = torch.ones(200, 100)
    merged = ta_method("dare").merge_deltas(
        [delta], weights=[1.0], name="w", params={"density": 0.1, "seed": 7}
    )
    kept = merged != 0
    assert abs(kept.float().mean().item() - 0.1) < 0.01
    torch.testing.assert_close(merged[kept], torch.full((int(kept.sum()),), 10.0))
    assert abs(merged.mean().item() - 1.0) < 0.1  # unbiased: E[dare(τ)] = τ


def test_dare_mask_depends_only_on_seed_name_and_index() -> None:
    def mask(seed: int, name: str, index: int) -> torch.Tensor:
        return dare_mask(
            torch.Size([64, 32]),
            density=0.3,
            seed=seed,
            name=name,
            index=index,
            device=torch.device("cpu"),
        )

    first = mask(1, "layers.0.w", 2)
    torch.rand(1000)  # global RNG use in between changes nothing
    mask(1, "layers.1.w", 0)  # neither does drawing other tensors' masks
    assert torch.equal(first, mask(1, "layers.0.w", 2))
    assert not torch.equal(first, mask(2, "layers.0.w", 2))
    assert not torch.equal(first, mask(1, "layers.1.w", 2))
    assert not torch.equal(first, mask(1, "layers.0.w", 1))
    assert first.dtype == torch.bool


def test_ties_disjoint_mean_by_hand() -> None:
    t1 = torch.tensor([3.0, -1.0, 0.5, 2.0, -4.0])
    t2 = torch.tensor([-2.0, 2.0, 0.1, 1.0, -3.0])
    t3 = torch.tensor([1.0, 0.2, -0.3, -5.0, 0.0])
    # density 0.6 keeps k = 3 of 5 per vector:
    # t1 -> [3, 0, 0, 2, -4]; t2 -> [-2, 2, 0, 0, -3]; t3 -> [1, 0, -0.3, -5, 0]
    # signs of the sums: [+2 -> +, +2 -> +, -0.3 -> -, -3 -> -, -7 -> -]
    # disjoint means: [(3+1)/2, 2/1, -0.3/1, -5/1, (-4-3)/2]
    expected = torch.tensor([2.0, 2.0, -0.3, -5.0, -3.5])
    merged = ta_method("ties").merge_deltas(
        [t1, t2, t3], weights=[1.0, 1.0, 1.0], name="w", params={"density": 0.6, "normalize": True}
    )
    torch.testing.assert_close(merged, expected)


def test_ties_matches_mergekit_ties() -> None:
    from mergekit.merge_methods import registry as mk

    base = _randn(32, 16, seed=10)
    models = [base + 0.1 * _randn(32, 16, seed=s) for s in (11, 12, 13)]
    weights = [0.5, 0.3, 0.2]
    group = __import__(
        "mergekit.merge_methods.base", fromlist=["TensorGroup"]
    ).TensorGroup.from_tensors([*models, base], base_index=3)
    (expected,) = mk.get("ties")(
        [group], parameters={"weight": weights, "density": 0.2, "lambda": 0.7}
    )
    ours = apply_task_arithmetic(
        ta_method("ties"),
        base,
        [m - base for m in models],
        weights=weights,
        name="w",
        params={"density": 0.2, "normalize": True, "lambda": 0.7},
    )
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    assert 0.19 < (trim(models[0] - base, 0.2) != 0).float().mean() < 0.21


@pytest.mark.parametrize("kind", ["continuous", "duplicates", "mostly_zero", "with_nan"])
def test_ties_threshold_selects_exactly_what_kthvalue_does(kind: str) -> None:
    """The narrowed selection for large tensors returns the same element as torch.kthvalue,
    at the ranks TIES uses and at the extremes, with and without repeated values."""
    from evomerge.merge.methods.ties import NARROW_ABOVE, kth_smallest

    n = NARROW_ABOVE + 12_345
    values = _randn(n, seed=3).abs()
    if kind == "duplicates":
        values = (values * 3).round()
    elif kind == "mostly_zero":
        values[: int(0.9 * n)] = 0.0
    elif kind == "with_nan":  # kthvalue sorts NaN last
        values[::1000] = float("nan")
    for rank in (1, 2, n // 2, n - int(0.2 * n) + 1, n - int(0.01 * n) + 1, n - 1, n):
        ours, theirs = kth_smallest(values, rank), torch.kthvalue(values, rank).values
        assert torch.equal(ours, theirs) or (ours.isnan() and theirs.isnan()), rank


def test_dfs_weights_a_ten_times_closer_source_about_100_times_more() -> None:
    # Deviations from the consensus (the mean of the 4 sources): three of norm r at 120°
    # in one plane, and source 0 along a third direction, 10x smaller in norm after centering.
    basis, _ = torch.linalg.qr(_randn(400, 3, seed=20).double())
    e1, e2, e3 = basis.T
    r = 1.0
    a = (0.16 * r**2 / (9 - 0.01)) ** 0.5  # so that ||d0|| = 0.1 * ||dj|| exactly
    dev = [
        a * e3,
        r * e1,
        r * (-e1 / 2 + 3**0.5 / 2 * e2),
        r * (-e1 / 2 - 3**0.5 / 2 * e2),
    ]
    dev = [d - a * e3 / 4 for d in dev]  # centre: the consensus is exactly `centre`
    assert abs(dev[0].norm() / dev[1].norm() - 0.1) < 1e-9
    centre = _randn(400, seed=21).double()
    sources = [(centre + d).float() for d in dev]
    merged = tensor_method("dfs").merge_tensors(
        sources, weights=[0.25] * 4, name="w", params={"eps": 1e-12}
    )
    # Recover the weights from the output alone: merged = Σ a_j X_j.
    design = torch.stack([s.double() for s in sources], 1)
    coef = torch.linalg.lstsq(design, merged.double().reshape(-1, 1)).solution.squeeze()
    assert 90 < float(coef[0] / coef[1:].mean()) < 110, coef
    assert abs(coef.sum().item() - 1.0) < 1e-4


def test_dfs_per_row_scores_rows_separately() -> None:
    a = torch.tensor([[-1.0] * 3, [0.0] * 3])
    b = torch.tensor([[0.0] * 3, [1.0] * 3])
    c = torch.tensor([[2.0] * 3, [0.0] * 3])
    dfs = tensor_method("dfs")
    per_row = dfs.merge_tensors(
        [a, b, c], weights=[], name="w", params={"per_row": True, "eps": 0.0}
    )
    # Row 0: consensus 1/3, deviations 16/9, 1/9, 25/9 -> importances 9/16, 9, 9/25.
    row0 = (-9 / 16 + 2 * 9 / 25) / (9 / 16 + 9 + 9 / 25)
    # Row 1: deviations 1/9, 4/9, 1/9 -> b (the outlier) gets 2.25 of 20.25.
    torch.testing.assert_close(per_row, torch.tensor([[row0] * 3, [1 / 9] * 3]))
    whole = dfs.merge_tensors(
        [a, b, c], weights=[], name="w", params={"per_row": False, "eps": 0.0}
    )
    # Per tensor: deviations 17/18, 5/18, 26/18.
    expected0 = (-18 / 17 + 2 * 18 / 26) / (18 / 17 + 18 / 5 + 18 / 26)
    torch.testing.assert_close(whole[0], torch.full((3,), expected0))


def test_registry_errors_are_clear() -> None:
    with pytest.raises(
        UnknownMergeMethodError,
        match=r"no plugin registers merge method 'nope'; registered: .*dare.*ties",
    ):
        get_method("nope")
    with pytest.raises(
        MergeConfigError, match=r"'dare' has no parameter 'densty'; parameters: .*density"
    ):
        ta_method("dare").resolve({"densty": 0.1})
    with pytest.raises(MergeConfigError, match=r"'mode': 'spherical' is not one of"):
        tensor_method("slerp").resolve({"mode": "spherical"})


class _Echo(TensorMergeMethod):
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name

    def merge_tensors(self, tensors, *, weights, name, params):  # type: ignore[no-untyped-def]
        return tensors[0]


def _plugin(method_name: str) -> object:
    class Plugin:
        @hookimpl
        def evomerge_register_merge_methods(self) -> list:  # type: ignore[type-arg]
            return [_Echo(method_name)]

    return Plugin()


def test_name_clash_names_both_plugins() -> None:
    pm = pluggy.PluginManager("evomerge")
    pm.add_hookspecs(hookspecs)
    pm.register(_plugin("echo"), name="first_plugin")
    pm.register(_plugin("echo"), name="second_plugin")
    with pytest.raises(
        ValueError, match="'echo' is registered by both 'first_plugin' and 'second_plugin'"
    ):
        MethodRegistry.from_plugin_manager(pm)
    pm2 = pluggy.PluginManager("evomerge")
    pm2.add_hookspecs(hookspecs)
    pm2.register(_plugin("slerp_chain"), name="sneaky")  # one of slerp's mergekit names
    import evomerge.merge.methods as builtins

    pm2.register(builtins, name="builtins")
    with pytest.raises(ValueError, match="'slerp_chain' is registered by both"):
        MethodRegistry.from_plugin_manager(pm2)


def test_decorated_function_is_a_complete_method() -> None:
    """Parameters come from the signature; only what the function declares is passed."""
    from evomerge.merge.decorator import FunctionTaskArithmeticMethod, FunctionTensorMethod

    @evomerge.merge_method("scaled_first", stage="selection")
    def scaled_first(
        tensors: list[torch.Tensor],
        *,
        scale: Annotated[float, evomerge.Range(0, 2), "multiplier"] = 1.0,
        which: Literal["first", "last"] = "first",
        steps: int | None = None,
    ) -> torch.Tensor:
        return (tensors[0] if which == "first" else tensors[-1]) * scale

    assert isinstance(scaled_first, FunctionTensorMethod) and scaled_first.stage == "selection"
    specs = {p.name: p for p in scaled_first.parameters()}
    assert list(specs) == ["scale", "which", "steps"]  # no weights declared: no per-input weight
    assert (specs["scale"].minimum, specs["scale"].maximum, specs["scale"].description) == (
        0,
        2,
        "multiplier",
    )
    assert specs["which"].choices == ("first", "last") and specs["steps"].optional
    assert scaled_first.resolve({"which": "last"}) == {"scale": 1.0, "which": "last", "steps": None}
    with pytest.raises(MergeConfigError, match=r"'scaled_first' parameter 'scale': 3.0 is above"):
        scaled_first.resolve({"scale": 3})
    x, y = torch.ones(2), torch.full((2,), 2.0)
    out = scaled_first.merge_tensors([x, y], weights=[0.5, 0.5], name="w", params={"scale": 2.0})
    torch.testing.assert_close(out, torch.full((2,), 2.0))
    torch.testing.assert_close(scaled_first([x, y], which="last"), y)  # still the plain function

    @evomerge.merge_method("mean_delta", stage="task_arithmetic")
    def mean_delta(deltas: list[torch.Tensor], *, weights: list[float]) -> torch.Tensor:
        return sum(w * d for w, d in zip(weights, deltas, strict=True))  # type: ignore[return-value]

    assert isinstance(mean_delta, FunctionTaskArithmeticMethod)
    assert [p.name for p in mean_delta.parameters()] == ["weight", "lambda"]


def test_decorator_rejects_untyped_parameters_and_unknown_stages() -> None:
    with pytest.raises(TypeError, match="'bad' parameter 'opts': type hint must be"):

        @evomerge.merge_method("bad")
        def bad(tensors: list[torch.Tensor], *, opts: dict = {}) -> torch.Tensor:  # noqa: B006
            return tensors[0]

    with pytest.raises(ValueError, match="stage must be one of"):
        evomerge.merge_method("bad", stage="everywhere")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "param", "value", "message"),
    [
        ("dare", "density", 1.5, "above the maximum 1"),
        ("ties", "density", -0.1, "below the minimum 0"),
        ("slerp", "eps", -1.0, "below the minimum 0"),
        ("dfs", "eps", -1.0, "below the minimum 0"),
    ],
)
def test_builtin_parameter_ranges(method: str, param: str, value: float, message: str) -> None:
    with pytest.raises(MergeConfigError, match=rf"'{method}' parameter '{param}': .*{message}"):
        get_method(method).resolve({param: value})

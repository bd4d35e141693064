"""The optimizer step as it runs on an accelerator — CholeskyQR2 retraction, Newton core
projection — against the CPU path, and free of anything that synchronises with the host."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_task
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from rlr_engine import CondLR, low_rank_layers, to_low_rank
from rlr_engine.method.manifold import conditioning_bounds, project_condition, project_cores
from rlr_engine.method.matrix_functions import (
    NEWTON_STEPS,
    absolute_value,
    extreme_eigenvalue_semidefinite,
    newton_bound,
    polar,
    power_schedule,
)

# ATen operations that read a device tensor on the host (item, bool, data-dependent shapes) or run
# a solver that checks its status on the host after the call; on CUDA each one is a synchronisation.
SYNCHRONISING_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "_linalg_check_errors",
    "_linalg_svd",
    "_linalg_eigh",
    "linalg_eig",
    "_linalg_eigvals",
    "linalg_qr",
    "geqrf",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
}


# the CPU's defaults and an accelerator's, each forced on any device
HOST_PATH = {"retraction": "householder", "core_projection": "svd"}
DEVICE_PATH = {"retraction": "cholesky-qr2", "core_projection": "newton"}


class OperatorLog(TorchDispatchMode):
    """Names every ATen operation that runs while active, marking those that would synchronise
    on an accelerator through their arguments: solvers asked to check errors, a host tensor (not
    a 0-dim scalar) meeting a device tensor or copied to the device, indexing by a boolean mask."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors} | (
            {torch.device(kwargs["device"]).type} if kwargs.get("device") else set()
        )
        if kwargs.get("check_errors"):
            name += " (check_errors)"
        elif devices - {"cpu"} and any(t.device.type == "cpu" and t.dim() > 0 for t in tensors):
            name += " (host tensor)"
        elif name.startswith("index") and any(t.dtype == torch.bool for t in tensors[1:]):
            name += " (boolean mask)"
        self.names.add(name)
        return func(*args, **kwargs)

    def synchronising(self) -> set[str]:
        return {n for n in self.names if n in SYNCHRONISING_OPS or n.endswith(")")}


def mlp(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.LeakyReLU(), nn.Linear(32, 24), nn.LeakyReLU(), nn.Linear(24, 4))
    return to_low_rank(model, 0.5).to(dtype)  # cores of ranks 10 and 12 (the last layer stays dense)


def logged_step_on_meta(taus, **optimizer_kwargs) -> OperatorLog:
    """One step per τ of an MLP on the meta device: the code path of a non-CPU device (meta
    tensors carry shapes, not data), with every ATen operation of ``step`` logged."""
    model = mlp().to("meta")
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=taus[0], **optimizer_kwargs)
    x, y = torch.randn(8, 20, device="meta"), torch.zeros(8, dtype=torch.long, device="meta")
    log = OperatorLog()
    for tau in taus:
        opt.set_tau(tau)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with log:
            opt.step()
    return log


@pytest.mark.parametrize("compat", [False, True])
def test_default_step_on_a_non_cpu_device_runs_no_synchronising_operation(compat):
    log = logged_step_on_meta(
        [0.1, 0.0, math.inf, 0.5], reference_compat=compat, retraction="cholesky-qr2" if compat else "auto"
    )
    assert "linalg_inv_ex" in log.names and "linalg_cholesky_ex" in log.names  # the device path ran
    assert log.synchronising() == set()


def test_a_step_at_a_new_tau_and_new_ranks_copies_nothing_from_host_memory(monkeypatch):
    """torch.tensor of Python numbers onto an accelerator is a copy from host memory, which
    waits for the device, and runs below the operator log: the constants a step needs at a τ
    or set of ranks it has not seen are filled on the device instead."""
    from rlr_engine.method import manifold

    for cached in (manifold._layout, manifold._bound_factors, manifold._halves):
        cached.cache_clear()
    model = mlp().to("meta")
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=0.37, **DEVICE_PATH)
    x, y = torch.randn(8, 20, device="meta"), torch.zeros(8, dtype=torch.long, device="meta")
    F.cross_entropy(model(x), y).backward()
    tensor = torch.tensor

    def from_host_memory(data, *args, device=None, **kwargs):
        assert device is None or torch.device(device).type == "cpu", f"torch.tensor({data!r}) onto {device}"
        return tensor(data, *args, device=device, **kwargs)

    monkeypatch.setattr(torch, "tensor", from_host_memory)
    opt.step()


def test_operator_log_sees_the_svd_and_qr_of_the_cpu_path():
    log = logged_step_on_meta([0.1], **HOST_PATH)
    assert {"_linalg_svd", "linalg_qr"} <= log.synchronising()


def test_operator_log_sees_a_host_tensor_sent_to_the_device_and_a_boolean_mask():
    x = torch.ones(3, device="meta")
    with OperatorLog() as log:
        torch.ones(3).to("meta")
        x[x > 0] = 0.0
        x * torch.tensor(2.0)  # a 0-dim host scalar is read as a number, without waiting
    assert log.synchronising() == {"_to_copy (host tensor)", "index_put_ (boolean mask)"}


def test_default_step_on_the_cpu_takes_lapacks_qr_and_svd():
    model = mlp()
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=0.1)
    F.cross_entropy(model(torch.randn(8, 20)), torch.zeros(8, dtype=torch.long)).backward()
    with OperatorLog() as log:
        opt.step()
    assert {"_linalg_svd", "linalg_qr"} <= log.names and "linalg_inv_ex" not in log.names


def random_cores(ranks, generator, condition=10.0):
    """Cores U diag(σ) Vᵀ with σ log-spaced from 1 down to 1/condition."""
    cores = []
    for rank in ranks:
        U, _ = torch.linalg.qr(torch.randn(rank, rank, generator=generator, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(rank, rank, generator=generator, dtype=torch.float64))
        cores.append(U @ torch.diag(torch.logspace(0, -math.log10(condition), rank, dtype=torch.float64)) @ V.T)
    return cores


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.5, 3.0])
@pytest.mark.parametrize("condition", [1.5, 10.0, 1e6])
@pytest.mark.parametrize("compat", [False, True])
def test_newton_projection_of_cores_of_mixed_ranks_equals_the_svd_projection(tau, condition, compat):
    g = torch.Generator().manual_seed(0)
    cores = random_cores((1, 3, 7, 7, 20), g, condition)
    # and cores just off a previous projection: singular values within 1e-9 of the clamp bounds
    cores += [
        S + 1e-9 * torch.randn(S.shape, generator=g, dtype=S.dtype)
        for S, _ in project_cores(random_cores((5, 20), g, condition), tau)
    ]
    for (svd, svd_ratio), (newton, newton_ratio) in zip(
        project_cores(cores, tau, compat, "svd"), project_cores(cores, tau, compat, "newton")
    ):
        torch.testing.assert_close(newton, svd, atol=1e-12 * condition, rtol=0)
        # the powering's tolerance is the cores' unit roundoff (float64 here)
        torch.testing.assert_close(newton_ratio, svd_ratio, atol=1e-12, rtol=1e-12)
        sigma = torch.linalg.svdvals(newton)
        assert sigma[0] <= (1 + tau) * sigma[-1] * (1 + 1e-12)


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_newton_projection_at_tau_zero_of_rank_deficient_cores_is_scaled_orthogonal_as_the_svd_paths(compat, dtype):
    """A layer made from a weight of lower rank than its own has a core diag(σ) with zeros in it
    (so has a truncation to a rank past the weight's): at τ = 0 it becomes α·P Qᵀ, or α·qf(S)
    with reference_compat, on either path — κ = 1, not left as it was. (Where S is singular the
    orthogonal factor is not unique: only α is compared there.)"""
    g = torch.Generator().manual_seed(5)
    deficient = [torch.diag(torch.tensor([1.0, 0.5, 0.0])), torch.diag(torch.tensor([2.0, 0.0, 0.0, 1.0]))]
    cores = [S.to(dtype) for S in (*deficient, *random_cores((6,), g))]  # padded together with a full-rank one
    results = zip(project_cores(cores, 0.0, compat, "svd"), project_cores(cores, 0.0, compat, "newton"))
    for i, ((svd, _), (newton, _)) in enumerate(results):
        sigma = torch.linalg.svdvals(newton.double())
        assert sigma[-1] > 0 and sigma[0] / sigma[-1] <= 1 + 1e-5, sigma
        torch.testing.assert_close(sigma, torch.linalg.svdvals(svd.double()), atol=1e-5, rtol=0)
        if i >= len(deficient):
            torch.testing.assert_close(newton, svd, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tau", [0.0, 0.1])
@pytest.mark.parametrize("condition", [1e10, 1e14])
def test_newton_projection_of_ill_conditioned_cores_has_the_svd_projections_singular_values(tau, condition):
    # the projection itself is as ill-conditioned as the polar factor (≈ u·κ for either method);
    # its singular values are not, and need the Newton iteration run to convergence
    cores = random_cores((6, 20), torch.Generator().manual_seed(1), condition)
    for (svd, svd_ratio), (newton, newton_ratio) in zip(
        project_cores(cores, tau, method="svd"), project_cores(cores, tau, method="newton")
    ):
        torch.testing.assert_close(torch.linalg.svdvals(newton), torch.linalg.svdvals(svd), rtol=1e-12, atol=0)
        torch.testing.assert_close(newton_ratio, svd_ratio, rtol=2e-10, atol=0)


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.5])
def test_newton_projection_of_an_already_projected_core_in_diagonal_form_equals_the_svd_projection(tau):
    # S = diag(σ) with σ exactly on the clamp bounds m(1 ± δ), m = 1, as truncate() can leave a
    # core: H − lo I is exactly singular, which the first Newton step must survive
    delta = conditioning_bounds(tau)
    cores = [
        torch.diag(torch.tensor(sigma, dtype=torch.float64))
        for sigma in ([1 + delta, 1 - delta], [1 + delta, 1.0, 1 - delta], [1 + delta, 1 + delta, 1 - delta, 1 - delta])
    ]
    for (svd, svd_ratio), (newton, newton_ratio) in zip(
        project_cores(cores, tau, method="svd"), project_cores(cores, tau, method="newton")
    ):
        torch.testing.assert_close(newton, svd, atol=1e-12, rtol=0)
        torch.testing.assert_close(newton_ratio, svd_ratio, atol=1e-12, rtol=0)


def test_both_projections_condition_a_rank_deficient_core_and_leave_zero_as_it_is_with_ratio_one():
    zero = torch.zeros(4, 4, dtype=torch.float64)
    rank_one = torch.outer(torch.arange(1.0, 5.0, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    for tau in (0.0, 0.1):
        for method in ("svd", "newton"):  # the ratio scales the next step: never 0/0
            projected, ratio = project_condition(zero, tau, method=method)
            torch.testing.assert_close(projected, zero)
            assert ratio.item() == 1.0, method
        projected, ratio = project_condition(torch.stack([zero, rank_one]), tau, method="newton")
        torch.testing.assert_close(projected[0], zero)
        sigma = torch.linalg.svdvals(projected[1])
        assert sigma[0] <= (1 + tau) * sigma[-1] * (1 + 1e-10)
        # the polar factor of a singular matrix is not unique; its singular values are
        torch.testing.assert_close(sigma, torch.linalg.svdvals(project_condition(rank_one, tau)[0]))
        torch.testing.assert_close(ratio[1], (sigma[-1] / sigma[0]) ** 2)


def test_reference_compat_at_tau_zero_stays_orthogonal_on_an_ill_conditioned_core():
    S = random_cores((12,), torch.Generator().manual_seed(0), 1e12)[0]
    projected, _ = project_condition(S, 0.0, reference_compat=True, method="newton")
    alpha = torch.linalg.matrix_norm(S) / math.sqrt(12)
    torch.testing.assert_close(projected.T @ projected, alpha**2 * torch.eye(12, dtype=S.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(projected, project_condition(S, 0.0, reference_compat=True)[0], atol=1e-3, rtol=0)


def test_polar_gives_an_orthogonal_factor_and_a_symmetric_positive_semidefinite_one():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 9, 9, generator=g, dtype=torch.float64)
    O, H = polar(A)
    torch.testing.assert_close(O.mT @ O, torch.eye(9, dtype=A.dtype).expand(3, 9, 9), atol=1e-13, rtol=0)
    torch.testing.assert_close(O @ H, A, atol=1e-12, rtol=0)
    assert torch.equal(H, H.mT) and torch.linalg.eigvalsh(H).min() > 0
    Z = A + A.mT
    absolute = absolute_value(Z)
    assert torch.equal(absolute, absolute.mT)
    eigenvalues, vectors = torch.linalg.eigh(Z)
    torch.testing.assert_close(absolute, vectors @ torch.diag_embed(eigenvalues.abs()) @ vectors.mT, atol=1e-12, rtol=0)


def test_newton_step_count_covers_every_singular_value_down_to_the_square_of_the_unit_roundoff():
    unit = torch.finfo(torch.float64).eps
    assert newton_bound(unit**2, NEWTON_STEPS) <= unit
    assert newton_bound(unit**2, NEWTON_STEPS - 2) > 1e-8  # the bound is tight enough to tell


@pytest.mark.parametrize("smallest", [1e-4, 1e-14, 1e-40, 0.0])
def test_absolute_value_of_a_nearly_singular_symmetric_matrix_is_exact_to_rounding(smallest):
    # eigenvalues of both signs down to ``smallest``: the spectrum of H − lo I for a core with
    # singular values on, next to and far from the clamp bound
    g = torch.Generator().manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(2, 12, 12, generator=g, dtype=torch.float64))
    magnitudes = torch.logspace(0, -6, 12, dtype=torch.float64)
    magnitudes[-1] = smallest
    eigenvalues = magnitudes * torch.where(torch.arange(12) % 2 == 0, 1.0, -1.0).double()
    Z = Q @ torch.diag(eigenvalues) @ Q.mT
    Z = 0.5 * (Z + Z.mT)
    expected = Q @ torch.diag(eigenvalues.abs()) @ Q.mT
    torch.testing.assert_close(absolute_value(Z), 0.5 * (expected + expected.mT), atol=2e-15, rtol=0)


@pytest.mark.parametrize("tolerance", [2.0**-23, 2.0**-52])
def test_extreme_eigenvalue_by_powering_is_within_its_tolerance_without_a_gap_for_either_sign_and_zero_for_zero(
    tolerance,
):
    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    # a cluster just under λ_max, where power iteration would need a gap, and eigenvalues at
    # 2(1 − 1/N), N = 2^squarings, the place of the largest shortfall
    squarings = sum(p.bit_length() - 1 for p in power_schedule(16, torch.float64, tolerance))
    near = 2.0 * (1 - 2.0**-squarings)
    eigenvalues = torch.cat([torch.tensor([2.0, 2.0 - 1e-11, near, near]), torch.rand(12, generator=g)]).double()
    positive = Q @ torch.diag(eigenvalues) @ Q.T
    both_signs_and_zero = torch.stack([positive, -positive, torch.zeros_like(positive)])
    estimate = extreme_eigenvalue_semidefinite(both_signs_and_zero, tolerance)
    assert -1e-14 <= 2.0 - estimate[0] <= 2.0 * tolerance + 1e-14
    assert -1e-14 <= 2.0 + estimate[1] <= 2.0 * tolerance + 1e-14
    assert estimate[2] == 0


@pytest.mark.parametrize("size", [2, 100, 300, 2000])
def test_extreme_eigenvalue_by_powering_does_not_underflow_in_float32_at_any_size(size):
    # equal eigenvalues are the case of smallest λ_max(B) = n^-½ after normalising: a fixed
    # power of 64 took (1/300)^32 = 10^-79 to zero in float32, and the estimate with it
    A = 3.0 * torch.eye(size, dtype=torch.float32)
    estimate = extreme_eigenvalue_semidefinite(A, torch.finfo(torch.float32).eps)
    assert abs(float(estimate) - 3.0) <= 3.0 * 1e-6


@pytest.mark.parametrize("smallest", [1e-8, 1e-16, 1e-30, 1e-40])
def test_polar_of_a_nearly_singular_matrix_gives_an_orthogonal_factor_and_reproduces_it(smallest):
    # singular values from 1 down to ``smallest``: 1e-30 sits at the edge of what the fixed
    # scalings cover, 1e-40 below it, lifted there by the shifted start
    g = torch.Generator().manual_seed(2)
    U, _ = torch.linalg.qr(torch.randn(3, 12, 12, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(3, 12, 12, generator=g, dtype=torch.float64))
    sigma = torch.logspace(0, math.log10(smallest), 12, dtype=torch.float64)
    A = U @ torch.diag(sigma) @ V.mT
    O, H = polar(A)
    eye = torch.eye(12, dtype=A.dtype).expand(3, 12, 12)
    torch.testing.assert_close(O.mT @ O, eye, atol=1e-13, rtol=0)
    torch.testing.assert_close(O @ H, A, atol=1e-13, rtol=0)
    torch.testing.assert_close(torch.linalg.eigvalsh(H).flip(-1), sigma.expand(3, 12), atol=1e-14, rtol=0)
    # a product of floating-point factors is ≈ u-conditioned whatever σ says; a signed diagonal
    # keeps its smallest singular value exactly: its polar factor is the signs (free where σ is
    # below the start's shift n·u), H = |A|
    signs = torch.where(torch.arange(12) % 3 == 0, -1.0, 1.0).to(torch.float64)
    O, H = polar(torch.diag(signs * sigma))
    torch.testing.assert_close(O.mT @ O, eye[0], atol=1e-14, rtol=0)
    determined = sigma > 12 * torch.finfo(torch.float64).eps
    torch.testing.assert_close(O.diagonal()[determined], signs[determined], atol=1e-14, rtol=0)
    torch.testing.assert_close(H, torch.diag(sigma), atol=1e-15, rtol=0)


@pytest.mark.parametrize(
    "path",
    [
        DEVICE_PATH,
        {"retraction": "cholesky-qr2", "core_projection": "svd"},
        {"retraction": "householder", "core_projection": "newton"},
    ],
    ids=["device-path", "cholesky-qr2-only", "newton-only"],
)
@pytest.mark.parametrize("tau", [0.0, 0.1, 0.5])
def test_device_path_and_its_parts_match_the_host_path_over_50_steps_and_keep_factors_orthonormal(tau, path):
    # float64, so the comparison sees the method and not rounding: two float32 runs part by
    # rounding alone (1.8e-7 after one step, ~4e-5 after 50 at τ = 0.1).
    x, y = synthetic_task()
    x = x.double()
    models = [mlp(torch.float64), mlp(torch.float64)]
    opts = [
        CondLR(models[0], lr=0.1, momentum=0.3, tau=tau, **HOST_PATH),
        CondLR(models[1], lr=0.1, momentum=0.3, tau=tau, **path),
    ]
    for step in range(50):
        i = (step * 64) % len(x)
        for model, opt in zip(models, opts):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    for (name, a), (_, b) in zip(low_rank_layers(models[0]), low_rank_layers(models[1])):
        for k in "USV":
            torch.testing.assert_close(getattr(b, k), getattr(a, k), atol=1e-10, rtol=0, msg=f"{name}.{k}")
        for k in "UV":
            factor = getattr(b, k).detach()
            assert (factor.T @ factor - torch.eye(b.rank, dtype=factor.dtype)).abs().max() <= 1e-12
        torch.testing.assert_close(
            opts[1].state[b.S]["inv_kappa_sq"], opts[0].state[a.S]["inv_kappa_sq"], atol=1e-10, rtol=0
        )


@pytest.mark.parametrize("tau", [0.0, 0.1])
def test_device_path_in_float32_trains_through_a_rank_truncation_orthonormal_and_conditioned(tau):
    x, y = synthetic_task()
    model = mlp()
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=tau, **DEVICE_PATH)
    losses = []
    for step in range(100):
        i = (step * 64) % len(x)
        if step == 50:  # the padded batch of cores changes shape
            opt.truncate(rank=7, layers=["0"])
        opt.zero_grad()
        loss = F.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    assert opt.ranks() == {"0": 7, "2": 12}
    assert_orthonormal_and_conditioned(model, tau)


def assert_orthonormal_and_conditioned(model, tau, tolerance=1e-5):
    """UᵀU = VᵀV = I and κ(S) ≤ 1 + τ to ``tolerance`` in every low-rank layer (on any device)."""
    for name, layer in low_rank_layers(model):
        eye = torch.eye(layer.rank, dtype=layer.S.dtype)
        for k in "UV":
            factor = getattr(layer, k).detach().cpu()
            assert (factor.T @ factor - eye).abs().max() <= tolerance, f"{name}.{k}"
        sigma = torch.linalg.svdvals(layer.S.detach().cpu())
        assert sigma[0] <= (1 + tau) * sigma[-1] * (1 + tolerance), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_step_on_cuda_never_synchronises_with_the_host():
    x, y = synthetic_task()
    model = mlp().cuda()
    x, y = x.cuda(), y.cuda()
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=0.1)
    for tau in (0.1, 0.0, math.inf, 0.1):
        opt.set_tau(tau)
        opt.zero_grad()
        F.cross_entropy(model(x[:64]), y[:64]).backward()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # set_sync_debug_mode sees PyTorch's own synchronisations only: also hold the GPU busy and
    # check that step() returns while it still is (a solver waiting on the host would not)
    opt.zero_grad()
    F.cross_entropy(model(x[:64]), y[:64]).backward()
    torch.cuda.synchronize()
    busy = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    busy[0].record()
    torch.cuda._sleep(2_000_000_000)  # ~1 s of GPU clock cycles
    busy[1].record()
    opt.step()
    returned_before_the_gpu_was_free = not busy[1].query()
    torch.cuda.synchronize()
    assert returned_before_the_gpu_was_free
    assert_orthonormal_and_conditioned(model, 0.1)


def test_padded_batch_of_every_factor_is_orthonormal_entry_by_entry_and_its_blocks_are_the_factors():
    """The device path steps every U and V as one padded batch: each whole entry, padding
    included, must stay orthonormal (so no solver in the chain meets a singular matrix, which a
    GPU's batched Cholesky may leave undefined), and its live block must be the layer's factor."""
    x, y = synthetic_task()
    model = mlp()
    opt = CondLR(model, lr=0.1, momentum=0.3, tau=0.1, **DEVICE_PATH)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x[:64]), y[:64]).backward()
        opt.step()
    batch = opt._padded
    assert len(set(batch.shapes)) > 2  # shapes of several sizes share the batch
    eye = torch.eye(batch.factors.shape[-1])
    for entry in batch.factors:
        assert torch.isfinite(entry).all()
        assert (entry.T @ entry - eye).abs().max() <= 1e-5
    factors = [p for _, layer in low_rank_layers(model) for p in (layer.U, layer.V)]
    for block, factor in zip(batch.factor_blocks(), factors):
        assert torch.equal(block, factor)

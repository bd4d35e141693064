"""The optimizer step as it runs on an accelerator — CholeskyQR2 retraction, Newton core
projection — against the CPU path, and free of anything that synchronises with the host."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from rlr_engine import CondLR, low_rank_layers, to_low_rank
from rlr_engine.manifold import project_condition, project_cores
from helpers import synthetic_task

# ATen operations that read a device tensor on the host (item, bool, data-dependent shapes) or run
# a solver that checks its status on the host after the call; on CUDA each one is a synchronisation.
SYNCHRONISING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_linalg_check_errors", "_linalg_svd",
                     "_linalg_eigh", "linalg_eig", "_linalg_eigvals", "linalg_qr", "geqrf", "_unique2",
                     "unique_consecutive", "unique_dim"}


# the CPU's defaults and an accelerator's, each forced on any device
HOST_PATH = {"retraction": "householder", "core_projection": "svd"}
DEVICE_PATH = {"retraction": "cholesky-qr2", "core_projection": "newton"}


class OperatorLog(TorchDispatchMode):
    """Names every ATen operation that runs while active, and those asked to check errors."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        self.names.add(name + (" (check_errors)" if kwargs.get("check_errors") else ""))
        return func(*args, **kwargs)

    def synchronising(self) -> set[str]:
        return {n for n in self.names if n in SYNCHRONISING_OPS or n.endswith("(check_errors)")}


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
    log = logged_step_on_meta([0.1, 0.0, math.inf, 0.5], reference_compat=compat, retraction="cholesky-qr2"
                              if compat else None)
    assert "linalg_inv_ex" in log.names and "linalg_cholesky_ex" in log.names  # the device path ran
    assert log.synchronising() == set()


def test_operator_log_sees_the_svd_and_qr_of_the_cpu_path():
    log = logged_step_on_meta([0.1], **HOST_PATH)
    assert {"_linalg_svd", "linalg_qr"} <= log.synchronising()


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
    cores += [S + 1e-9 * torch.randn(S.shape, generator=g, dtype=S.dtype)
              for S, _ in project_cores(random_cores((5, 20), g, condition), tau)]
    for (svd, svd_ratio), (newton, newton_ratio) in zip(project_cores(cores, tau, compat, "svd"),
                                                         project_cores(cores, tau, compat, "newton")):
        torch.testing.assert_close(newton, svd, atol=1e-12 * condition, rtol=0)
        # the powering's bound: at most n/(e·2³⁶) ≈ 1.1e-10 relative for n = 20
        torch.testing.assert_close(newton_ratio, svd_ratio, atol=1e-12, rtol=2e-10)
        sigma = torch.linalg.svdvals(newton)
        assert sigma[0] <= (1 + tau) * sigma[-1] * (1 + 1e-12)


def test_newton_projection_leaves_an_exactly_singular_core_finite_and_unchanged():
    zero = torch.zeros(4, 4)
    rank_one = torch.outer(torch.arange(1.0, 5.0), torch.ones(4))
    for tau in (0.0, 0.1):
        projected, ratio = project_condition(torch.stack([zero, rank_one]), tau, method="newton")
        assert torch.isfinite(projected).all() and torch.isfinite(ratio).all()
        torch.testing.assert_close(projected[0], zero)


@pytest.mark.parametrize("path", [DEVICE_PATH, {"retraction": "cholesky-qr2", "core_projection": "svd"},
                                  {"retraction": "householder", "core_projection": "newton"}],
                         ids=["device-path", "cholesky-qr2-only", "newton-only"])
@pytest.mark.parametrize("tau", [0.0, 0.1, 0.5])
def test_device_path_and_its_parts_match_the_host_path_over_50_steps_and_keep_factors_orthonormal(tau, path):
    # float64, so the comparison sees the method and not rounding: two float32 runs part by
    # rounding alone (1.8e-7 after one step, ~4e-5 after 50 at τ = 0.1).
    x, y = synthetic_task()
    x = x.double()
    models = [mlp(torch.float64), mlp(torch.float64)]
    opts = [CondLR(models[0], lr=0.1, momentum=0.3, tau=tau, **HOST_PATH),
            CondLR(models[1], lr=0.1, momentum=0.3, tau=tau, **path)]
    for step in range(50):
        i = (step * 64) % len(x)
        for model, opt in zip(models, opts):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    for (name, a), (_, b) in zip(low_rank_layers(models[0]), low_rank_layers(models[1])):
        for k in "USV":
            torch.testing.assert_close(getattr(b, k), getattr(a, k), atol=1e-10, rtol=0, msg=f"{name}.{k}")
        for k in "UV":
            factor = getattr(b, k).detach()
            assert (factor.T @ factor - torch.eye(b.rank, dtype=factor.dtype)).abs().max() <= 1e-12
        torch.testing.assert_close(opts[1].state[b.S]["inv_kappa_sq"], opts[0].state[a.S]["inv_kappa_sq"],
                                   atol=1e-10, rtol=0, check_dtype=False)


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
        loss = F.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    assert opt.ranks() == {"0": 7, "2": 12}
    for name, layer in low_rank_layers(model):
        eye = torch.eye(layer.rank)
        for k in "UV":
            factor = getattr(layer, k).detach()
            assert (factor.T @ factor - eye).abs().max() <= 1e-5, f"{name}.{k}"
        sigma = torch.linalg.svdvals(layer.S.detach())
        assert sigma[0] <= (1 + tau) * sigma[-1] * (1 + 1e-5), name


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
    sigma = torch.linalg.svdvals(low_rank_layers(model)[0][1].S.detach())
    assert sigma[0] <= 1.1 * sigma[-1] * (1 + 1e-5)

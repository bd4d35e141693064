import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_task
from torch import nn

from rlr_engine import CondLR, low_rank_layers, to_low_rank


def mlp(d=20, classes=4, rank_fraction=0.5, low_rank=True):
    model = nn.Sequential(nn.Linear(d, 32), nn.LeakyReLU(), nn.Linear(32, 32), nn.LeakyReLU(), nn.Linear(32, classes))
    return to_low_rank(model, rank_fraction) if low_rank else model


def cnn():
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.LeakyReLU(),
        nn.Conv2d(8, 8, 3, stride=2),
        nn.LeakyReLU(),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 4),
    )
    return to_low_rank(model, 0.5)


def train(model, opt, x, y, steps, batch=64):
    losses = []
    for step in range(steps):
        i = (step * batch) % len(x)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[i : i + batch]), y[i : i + batch])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def kappa(layer):
    s = torch.linalg.svdvals(layer.S.detach())
    return (s[0] / s[-1]).item()


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.5])
def test_factors_stay_orthonormal_and_condition_number_bounded_by_one_plus_tau(tau):
    x, y = synthetic_task()
    model = mlp()
    opt = CondLR(model, lr=0.2, momentum=0.5, tau=tau)
    train(model, opt, x, y, 200)
    for name, layer in low_rank_layers(model):
        eye = torch.eye(layer.rank)
        assert (layer.U.T @ layer.U - eye).abs().max() <= 1e-5, name
        assert (layer.V.T @ layer.V - eye).abs().max() <= 1e-5, name
        assert kappa(layer) <= 1 + tau + 1e-4, name


def test_tau_inf_leaves_the_condition_number_free():
    x, y = synthetic_task()
    model = mlp()
    opt = CondLR(model, lr=0.2, momentum=0.5, tau=math.inf)
    train(model, opt, x, y, 200)
    layers = dict(low_rank_layers(model))
    assert max(kappa(layer) for layer in layers.values()) > 1.5
    for layer in layers.values():
        assert (layer.U.T @ layer.U - torch.eye(layer.rank)).abs().max() <= 1e-5


def test_conv_factors_stay_orthonormal_and_conditioned():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, :, :4].mean(dim=(1, 2, 3)) > 0).long()
    model = cnn()
    opt = CondLR(model, lr=0.1, momentum=0.3, tau=0.1)
    train(model, opt, x, y, 100)
    for _, layer in low_rank_layers(model):
        assert (layer.V.T @ layer.V - torch.eye(layer.rank)).abs().max() <= 1e-5
        assert kappa(layer) <= 1.1 + 1e-4


@pytest.mark.parametrize("kind", ["dense", "inf", "0.1"])
def test_loss_decreases_on_a_learnable_task(kind):
    x, y = synthetic_task()
    model = mlp(low_rank=kind != "dense")
    tau = math.inf if kind in ("dense", "inf") else float(kind)
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=tau)
    losses = train(model, opt, x, y, 150)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.8


def qf(a):
    """Q of the reduced QR of a with column signs flipped so that diag(R) > 0."""
    q, r = np.linalg.qr(a)
    s = np.sign(np.diag(r))
    s[s == 0] = 1
    return q * s


def literal_condlr_step(state, grads, lr, mu, tau, a, polar):
    """DESIGN §2, steps 1–7, for one layer, in float64 with the explicit m×m projector.

    state holds U, S, V, the momentum buffers and c (the step scale left by the previous
    projection); returns the next state. ``polar`` picks α·P Qᵀ at τ = 0, otherwise α·qf(S)."""
    state = dict(state)
    # 1–2. momentum, PyTorch convention: m = g on the first step, then m ← μ m + g.
    m = {k: g if state["buf_" + k] is None else mu * state["buf_" + k] + g for k, g in grads.items()}
    # 7. step scale: 1/a at τ = 0, (σ_min/σ_max)² of the previous projection for 0 < τ < ∞ (1 before
    # the first), 1 at τ = ∞.
    c = 1.0 / a if tau == 0 else (1.0 if math.isinf(tau) else state["c"])
    for k in ("U", "V"):
        X = state[k]
        # 3. the scaled projected direction, which is also stored as the momentum buffer.
        D = c * (np.eye(X.shape[0]) - X @ X.T) @ m[k]
        state["buf_" + k] = D
        # 4. retraction.
        state[k] = qf(X - lr * D)
    # 5. core step.
    state["buf_S"] = m["S"]
    S = state["S"] - lr * m["S"]
    # 6. conditioning projection.
    if not math.isinf(tau):
        P, sig, Qt = np.linalg.svd(S)
        if tau == 0:
            alpha = np.sqrt(np.mean(sig**2))
            S = alpha * (P @ Qt if polar else qf(S))
        else:
            center, delta = sig.mean(), tau / (2 + tau)
            sig = np.clip(sig, center * (1 - delta), center * (1 + delta))
            S = P @ np.diag(sig) @ Qt
            state["c"] = (sig.min() / sig.max()) ** 2
    state["S"] = S
    return state


@pytest.mark.parametrize("device_path", [False, True], ids=["cpu-path", "device-path"])
@pytest.mark.parametrize(
    "tau, compat", [(0.0, True), (0.0, False), (0.1, True), (0.1, False), (0.5, True), (math.inf, True)]
)
def test_step_matches_a_literal_float64_implementation_of_the_method_for_25_steps(tau, compat, device_path):
    x, y = synthetic_task()
    x = x.double()
    dense = mlp(low_rank=False).double()
    # a: the mean of all singular values of each dense weight, before truncation (step 7).
    init_means = [
        np.linalg.svd(mod.weight.detach().numpy(), compute_uv=False).mean()
        for mod in dense
        if isinstance(mod, nn.Linear)
    ]
    model = to_low_rank(dense, rank_fraction=0.5)
    layers = [layer for _, layer in low_rank_layers(model)]
    lr, mu = 0.1, 0.3
    # the device path: what the defaults are on an accelerator, here forced on the CPU
    path = {"retraction": "cholesky-qr2", "core_projection": "newton"} if device_path else {}
    opt = CondLR(model, lr=lr, momentum=mu, tau=tau, reference_compat=compat, **path)
    ref = [
        {
            "U": layer.U.detach().numpy().copy(),
            "S": layer.S.detach().numpy().copy(),
            "V": layer.V.detach().numpy().copy(),
            "buf_U": None,
            "buf_S": None,
            "buf_V": None,
            "c": 1.0,
        }
        for layer in layers
    ]
    for step in range(25):
        i = (step * 64) % len(x)
        opt.zero_grad()
        F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
        for j, layer in enumerate(layers):
            grads = {k: getattr(layer, k).grad.numpy().copy() for k in "USV"}
            ref[j] = literal_condlr_step(ref[j], grads, lr, mu, tau, init_means[j], polar=not compat)
        opt.step()
        for j, layer in enumerate(layers):
            for k in "USV":
                np.testing.assert_allclose(
                    getattr(layer, k).detach().numpy(),
                    ref[j][k],
                    rtol=0,
                    atol=1e-9,
                    err_msg=f"step {step}, layer {j}, {k}",
                )
            for k in "UV":
                np.testing.assert_allclose(
                    opt.state[getattr(layer, k)]["momentum_buffer"].numpy(),
                    ref[j]["buf_" + k],
                    rtol=0,
                    atol=1e-9,
                    err_msg=f"step {step}, layer {j}, momentum of {k}",
                )


@pytest.mark.parametrize(
    "path",
    [{"retraction": "householder"}, {"retraction": "cholesky-qr2"}],
    ids=["by-shape", "padded-batch"],
)
@pytest.mark.parametrize("scaled", [True, False])
def test_stored_momentum_of_u_is_the_scaled_direction_unless_asked_for_the_unscaled_one(scaled, path):
    x, y = synthetic_task()
    model = mlp().double()
    opt = CondLR(model, lr=0.1, momentum=0.3, tau=0.0, store_scaled_direction=scaled, **path)
    layer = next(layer for _, layer in low_rank_layers(model))
    opt.zero_grad()
    F.cross_entropy(model(x.double()[:64]), y[:64]).backward()
    U, g = layer.U.detach().clone(), layer.U.grad.clone()
    opt.step()
    projected = g - U @ (U.T @ g)
    expected = projected / layer.init_sigma_mean if scaled else projected
    torch.testing.assert_close(opt.state[layer.U]["momentum_buffer"], expected, atol=1e-12, rtol=0)


def test_cholesky_qr2_of_a_nearly_singular_matrix_stays_finite_and_recovers_on_the_next_call():
    from rlr_engine.method.manifold import retract_cholesky_qr

    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 12, generator=g)
    X[:, 1] = X[:, 0] + 1e-6 * torch.randn(300, generator=g)  # Cholesky of XᵀX fails in float32
    Q = retract_cholesky_qr(X)
    assert torch.isfinite(Q).all()  # without the shifted fallback this is NaN
    Q = retract_cholesky_qr(Q)
    assert (Q.T @ Q - torch.eye(12)).abs().max() <= 1e-5


@pytest.mark.parametrize("condition", [1.01, 10.0, 100.0, 1000.0])
def test_cholesky_qr_of_a_moderately_conditioned_tall_matrix_is_orthonormal_in_float32(condition):
    """The shifted first pass hardly improves κ at this size (the shift is ~0.6·σ_max²): the
    plain passes after it must restore orthonormality to ~u, and Q must be qf(X)."""
    from rlr_engine.method.manifold import retract_cholesky_qr, retract_qr

    g = torch.Generator().manual_seed(1)
    m, r = 4608, 103
    P, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    O, _ = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))
    X = ((P * torch.logspace(0, math.log10(condition), r, dtype=torch.float64)) @ O.T).float()
    Q = retract_cholesky_qr(X)
    assert (Q.T @ Q - torch.eye(r)).abs().max() <= 1e-5
    torch.testing.assert_close(Q, retract_qr(X), atol=2e-4 * condition, rtol=0)


def test_tau_zero_gives_the_polar_factor_nearest_in_frobenius_norm_not_the_qr_factor():
    x, y = synthetic_task()
    model = mlp().double()
    lr = 0.5
    opt = CondLR(model, lr=lr, tau=0.0)
    layers = [layer for _, layer in low_rank_layers(model)]
    opt.zero_grad()
    F.cross_entropy(model(x.double()[:64]), y[:64]).backward()
    before = [(layer.S - lr * layer.S.grad).detach().clone() for layer in layers]
    opt.step()
    rng = np.random.default_rng(0)
    for layer, S in zip(layers, before):
        S = S.numpy()
        alpha = np.linalg.norm(S) / math.sqrt(layer.rank)
        P, _, Qt = np.linalg.svd(S)
        got = layer.S.detach().numpy()
        np.testing.assert_allclose(got, alpha * P @ Qt, atol=1e-10)
        # The polar factor is the nearest orthogonal matrix: closer than the QR factor (which
        # the reference code uses) and than random orthogonal matrices at the same scale.
        nearest = np.linalg.norm(S - got)
        assert nearest < np.linalg.norm(S - alpha * qf(S)) - 1e-6
        for _ in range(20):
            assert nearest <= np.linalg.norm(S - alpha * qf(rng.standard_normal(S.shape)))


def test_a_tighter_tau_conditions_the_cores_at_once_and_bad_values_change_nothing():
    x, y = synthetic_task()
    model = mlp()
    opt = CondLR(model, lr=0.2, momentum=0.5, tau=math.inf)
    train(model, opt, x, y, 50)
    assert max(kappa(layer) for _, layer in low_rank_layers(model)) > 1.2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bad in (-0.1, float("nan"), "abc", None):
        with pytest.raises(ValueError, match="tau must be"):
            opt.set_tau(bad)
    assert math.isinf(opt.tau)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # what is measured, attacked or saved before the next step already has the new bound
    opt.set_tau(0.2)
    assert all(kappa(layer) <= 1.2 + 1e-4 for _, layer in low_rank_layers(model))
    train(model, opt, x, y, 1)
    assert all(kappa(layer) <= 1.2 + 1e-4 for _, layer in low_rank_layers(model))
    # a looser τ leaves the cores as they are
    conditioned = {k: v.clone() for k, v in model.state_dict().items()}
    opt.set_tau(0.5)
    assert all(torch.equal(conditioned[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "tau,step_scaling", [(0.0, "reference"), (0.1, "reference"), (0.1, "alpha"), (math.inf, "reference")]
)
def test_a_layer_made_from_an_all_zero_weight_trains_without_non_finite_values(tau, step_scaling):
    x, y = synthetic_task()
    model = nn.Sequential(nn.Linear(20, 32), nn.LeakyReLU(), nn.Linear(32, 4))
    nn.init.zeros_(model[2].weight)  # a zero-initialised classifier: every singular value is 0
    model = to_low_rank(model, ranks={"2": 3}, skip_last=False)
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=tau, step_scaling=step_scaling)
    losses = train(model, opt, x, y, 30)
    for name, layer in low_rank_layers(model):
        assert all(torch.isfinite(t).all() for t in (layer.U, layer.S, layer.V)), name
        eye = torch.eye(layer.rank)
        assert (layer.U.T @ layer.U - eye).abs().max() <= 1e-5, name
        assert torch.isfinite(torch.as_tensor(opt.state[layer.S].get("inv_kappa_sq", 1.0))).all(), name
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0},
        {"lr": 0.1, "momentum": 1.0},
        {"lr": 0.1, "tau": -1},
        {"lr": 0.1, "step_scaling": "magic"},
        {"lr": 0.1, "retraction": "cayley"},
    ],
)
def test_bad_hyperparameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        CondLR(mlp(), **kwargs)


def test_truncation_discards_exactly_the_tail_of_the_spectrum_and_training_continues():
    x, y = synthetic_task()
    model = mlp(rank_fraction=1.0)
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=math.inf)
    train(model, opt, x, y, 100)
    layers = dict(low_rank_layers(model))
    before = {n: layer.dense_weight().detach().clone() for n, layer in layers.items()}
    sigmas = {n: torch.linalg.svdvals(layer.S.detach()) for n, layer in layers.items()}
    xb, yb = x[:128], y[:128]
    changes = opt.truncate(theta=0.3)
    for change in changes:
        layer = layers[change.layer]
        assert change.new_rank < change.old_rank == sigmas[change.layer].numel()
        assert layer.rank == change.new_rank
        discarded = sigmas[change.layer][change.new_rank :]
        assert discarded.norm() <= 0.3 * sigmas[change.layer].norm() + 1e-6
        assert sigmas[change.layer][change.new_rank - 1 :].norm() > 0.3 * sigmas[change.layer].norm()
        err = torch.linalg.norm(before[change.layer] - layer.dense_weight().detach())
        torch.testing.assert_close(err, discarded.norm(), rtol=1e-4, atol=1e-5)
        assert change.discarded_norm == pytest.approx(discarded.norm().item(), rel=1e-5)
        assert (layer.U.T @ layer.U - torch.eye(layer.rank)).abs().max() <= 1e-5
    with torch.no_grad():
        loss_after = F.cross_entropy(model(xb), yb).item()
    losses = train(model, opt, x, y, 30)
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) <= loss_after + 0.05


def dense_gradients(model, x, y):
    """∇_W L for every low-rank layer's full matrix W (not only its projection on the bases)."""
    weights = {}
    for name, layer in low_rank_layers(model):
        weights[name] = layer.dense_weight().detach().clone().requires_grad_(True)
    h = x
    for name, module in model.named_children():
        h = F.linear(h, weights[name], module.bias) if name in weights else module(h)
    loss = F.cross_entropy(h, y)
    grads = torch.autograd.grad(loss, list(weights.values()))
    return loss.item(), dict(zip(weights, grads))


@pytest.mark.parametrize("theta", [0.02, 0.1])
def test_truncation_changes_the_loss_no_more_than_the_discarded_part_explains(theta):
    x, y = synthetic_task()
    model = mlp(rank_fraction=1.0)
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=math.inf)
    train(model, opt, x, y, 100)
    xb, yb = x[:128], y[:128]
    loss_before, grads = dense_gradients(model, xb, yb)
    changes = opt.truncate(theta=theta)
    with torch.no_grad():
        loss_after = F.cross_entropy(model(xb), yb).item()
    # |ΔL| ≤ Σ_l ‖∇_{W_l} L‖_F · ‖ΔW_l‖_F to first order (Cauchy–Schwarz), ‖ΔW_l‖_F being the
    # norm of the discarded singular values; allow a second-order term of the same scale.
    first_order = sum(grads[c.layer].norm().item() * c.discarded_norm for c in changes)
    second_order = sum(c.discarded_norm for c in changes) ** 2
    assert any(c.new_rank < c.old_rank for c in changes)
    assert abs(loss_after - loss_before) <= first_order + second_order


def test_rank_truncation_to_explicit_rank_respects_min_rank_and_rotates_momentum_of_u_v_and_s():
    x, y = synthetic_task()
    # Half rank, so U (32×10) and V (20×10) are both tall: a square basis has a zero tangent
    # direction, hence a zero momentum buffer, and any rotation of it would pass unchecked.
    model = mlp(rank_fraction=0.5)
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=0.1)
    train(model, opt, x, y, 20)
    layers = dict(low_rank_layers(model))
    name = next(iter(layers))
    old = {k: getattr(layers[name], k).detach().clone() for k in "UV"}
    old_buf = {k: opt.state[getattr(layers[name], k)]["momentum_buffer"].clone() for k in "USV"}
    assert all(old_buf[k].norm() > 1e-3 for k in "USV")
    changes = opt.truncate(rank=3, layers=[name])
    assert [c.new_rank for c in changes] == [3]
    layer = layers[name]
    buf = {k: opt.state[getattr(layer, k)]["momentum_buffer"] for k in "USV"}
    assert buf["U"].shape == layer.U.shape == (32, 3)
    assert buf["V"].shape == layer.V.shape == (20, 3)
    assert buf["S"].shape == layer.S.shape == (3, 3)
    # U_new = U_old P, V_new = V_old Q (the τ projection only touches S), so P = U_oldᵀ U_new,
    # Q = V_oldᵀ V_new, and the buffers move as m_U P, m_V Q and Pᵀ m_S Q.
    P = old["U"].T @ layer.U.detach()
    Q = old["V"].T @ layer.V.detach()
    torch.testing.assert_close(buf["U"], old_buf["U"] @ P, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(buf["V"], old_buf["V"] @ Q, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(buf["S"], P.T @ old_buf["S"] @ Q, atol=1e-5, rtol=1e-4)
    assert kappa(layer) <= 1.1 + 1e-4
    assert opt.truncate(rank=1, layers=[name], min_rank=2)[0].new_rank == 2
    with pytest.raises(ValueError, match="unknown layer"):
        opt.truncate(theta=0.1, layers=["nope"])
    with pytest.raises(ValueError, match="exactly one"):
        opt.truncate()
    train(model, opt, x, y, 5)


def test_state_dict_round_trip_after_truncation_gives_bit_identical_next_steps():
    x, y = synthetic_task()
    model = mlp(rank_fraction=1.0)
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=0.1)
    train(model, opt, x, y, 30)
    opt.truncate(theta=0.2)
    train(model, opt, x, y, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    clone = mlp(rank_fraction=1.0)
    clone.load_state_dict(saved["model"])
    clone_opt = CondLR(clone, lr=0.5, momentum=0.0, tau=3.0)
    clone_opt.load_state_dict(saved["optim"])
    assert clone_opt.tau == 0.1 and clone_opt.ranks() == opt.ranks()
    train(model, opt, x, y, 5)
    train(clone, clone_opt, x, y, 5)
    for a, b in zip(model.state_dict().values(), clone.state_dict().values()):
        assert torch.equal(a, b)


def test_a_state_loaded_after_a_diverged_step_trains_finite_again_on_the_padded_batch():
    """Rolling back after a non-finite step (model and optimizer from a good checkpoint) trains
    on as before: nothing of the diverged step outlives it in the device path's padded batch."""
    x, y = synthetic_task()
    model = mlp()  # factors of different shapes: the batch pads them
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=0.1, retraction="cholesky-qr2", core_projection="newton")
    train(model, opt, x, y, 2)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    layer = next(layer for _, layer in low_rank_layers(model))
    opt.zero_grad()
    F.cross_entropy(model(x[:64]), y[:64]).backward()
    layer.U.grad[0, 0] = math.nan
    opt.step()
    assert not torch.isfinite(layer.U).all()
    buffer.seek(0)
    good = torch.load(buffer)
    model.load_state_dict(good["model"])
    opt.load_state_dict(good["optim"])
    train(model, opt, x, y, 2)
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name


def test_step_never_reads_tensors_on_the_host(monkeypatch):
    x, y = synthetic_task()
    model = mlp()
    opt = CondLR(model, lr=0.1, momentum=0.5, tau=0.1)
    train(model, opt, x, y, 2)

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in step()")

    opt.zero_grad()
    F.cross_entropy(model(x[:64]), y[:64]).backward()
    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    monkeypatch.setattr(torch.Tensor, "__float__", forbidden)
    monkeypatch.setattr(torch.Tensor, "__bool__", forbidden)
    monkeypatch.setattr(torch.Tensor, "tolist", forbidden)
    opt.step()

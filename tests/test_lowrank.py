import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rlr_engine import LowRankConv2d, LowRankLinear, low_rank_layers, parameter_report, to_low_rank


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 20, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(20 * 3 * 3, 30),
        nn.ReLU(),
        nn.Linear(30, 5),
    )


@settings(max_examples=25, deadline=None)
@given(
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    kernel=st.sampled_from([1, 3, (3, 1), 5]),
    bias=st.booleans(),
    rank=st.integers(1, 6),
)
def test_low_rank_conv_equals_dense_conv_with_its_weight(stride, padding, dilation, kernel, bias, rank):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    rank = min(rank, 3 * kh * kw)
    layer = LowRankConv2d(3, 6, kernel, rank, stride=stride, padding=padding, dilation=dilation, bias=bias)
    x = torch.randn(2, 3, 13, 11)
    expected = F.conv2d(x, layer.dense_weight(), layer.bias, stride, padding, dilation)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_low_rank_linear_equals_dense_linear_with_its_weight():
    layer = LowRankLinear(17, 9, rank=4)
    x = torch.randn(5, 17)
    torch.testing.assert_close(layer(x), F.linear(x, layer.dense_weight(), layer.bias))
    assert layer.dense_weight().shape == (9, 17)
    assert torch.linalg.matrix_rank(layer.dense_weight()) == 4


def test_factors_start_orthonormal_and_conv_weight_has_reshaped_shape():
    layer = LowRankConv2d(4, 8, 3, rank=5)
    assert layer.U.shape == (8, 5) and layer.V.shape == (36, 5) and layer.S.shape == (5, 5)
    torch.testing.assert_close(layer.U.T @ layer.U, torch.eye(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.V.T @ layer.V, torch.eye(5), atol=1e-5, rtol=0)
    assert layer.dense_weight().shape == (8, 4, 3, 3)
    assert "rank=5/8" in repr(layer)


def test_full_rank_conversion_reproduces_dense_model_outputs():
    dense = small_cnn()
    x = torch.randn(4, 3, 8, 8)
    expected = dense(x)
    converted = to_low_rank(dense, rank_fraction=1.0, skip_last=False)
    assert len(list(low_rank_layers(converted))) == 4
    torch.testing.assert_close(converted(x), expected, rtol=1e-4, atol=1e-5)


def test_truncated_conversion_is_the_best_rank_r_approximation():
    dense = nn.Linear(20, 12)
    w = dense.weight.detach().clone()
    model = to_low_rank(nn.Sequential(dense, nn.Linear(12, 2)), rank_fraction=0.5)
    layer = model[0]
    sigma = torch.linalg.svdvals(w)
    err = torch.linalg.norm(w - layer.dense_weight())
    assert layer.rank == 6
    torch.testing.assert_close(err, sigma[6:].norm(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.init_sigma_mean, sigma.mean())


def test_rank_fraction_keeps_ceil_of_the_fraction_and_skips_last_layer():
    model = to_low_rank(small_cnn(), rank_fraction=0.2)
    ranks = {name: layer.rank for name, layer in low_rank_layers(model)}
    assert ranks == {"0": math.ceil(0.2 * 12), "2": math.ceil(0.2 * 20), "5": math.ceil(0.2 * 30)}
    assert isinstance(model[7], nn.Linear)


def test_explicit_ranks_override_fraction_and_may_convert_the_last_layer():
    model = to_low_rank(small_cnn(), rank_fraction=0.5, ranks={"7": 5, "0": 2})
    assert model[7].rank == 5 and model[0].rank == 2 and model[2].rank == 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank_fraction": 0.0}, "rank_fraction"),
        ({"rank_fraction": 1.5}, "rank_fraction"),
        ({"ranks": {"nope": 2}}, "unknown layers"),
        ({"ranks": {"0": 99}}, "rank for layer '0'"),
    ],
)
def test_bad_conversion_arguments_are_rejected_with_the_field_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        to_low_rank(small_cnn(), **kwargs)


def test_parameter_report_counts_true_compression():
    model = to_low_rank(nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10)), rank_fraction=0.1)
    report = parameter_report(model)
    low = 100 * 10 + 10 * 10 + 100 * 10 + 100 + 100 * 10 + 10
    dense = 100 * 100 + 100 + 100 * 10 + 10
    assert (report.params, report.dense_params) == (low, dense)
    assert report.compression == pytest.approx(1 - low / dense)
    assert report.rank_fraction == pytest.approx(0.1)


@pytest.mark.parametrize(
    "make",
    [lambda: LowRankLinear(17, 9, rank=3, max_rank=6), lambda: LowRankConv2d(3, 8, 3, rank=3, padding=1, max_rank=6)],
)
def test_a_layer_with_spare_storage_computes_with_its_live_block_only(make):
    layer = make()
    assert (layer.rank, layer.max_rank) == (3, 6) and layer.S.shape == (6, 6)
    with torch.no_grad():  # garbage outside the live block must not reach the output
        layer.S[3:].normal_()
        layer.S[:, 3:].normal_()
    U, S, V = layer.U[:, :3], layer.S[:3, :3], layer.V[:, :3]
    weight = (U @ S @ V.T).reshape(layer.dense_weight().shape)
    torch.testing.assert_close(layer.dense_weight(), weight)
    if isinstance(layer, LowRankLinear):
        x = torch.randn(4, 17)
        expected = F.linear(x, weight, layer.bias)
    else:
        x = torch.randn(2, 3, 7, 7)
        expected = F.conv2d(x, weight, layer.bias, padding=1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert "rank=3/" in repr(layer) and "allocated 6" in repr(layer)


def test_live_rank_round_trips_through_the_state_dict_and_old_checkpoints_still_load():
    layer = LowRankLinear(17, 9, rank=3, max_rank=6)
    layer.set_live_rank(5)
    fresh = LowRankLinear(17, 9, rank=2, max_rank=4)
    fresh.load_state_dict(layer.state_dict())
    assert (fresh.rank, fresh.max_rank) == (5, 6)
    torch.testing.assert_close(fresh.dense_weight(), layer.dense_weight())
    old_format = {k: v for k, v in LowRankLinear(17, 9, rank=4).state_dict().items() if k != "live_rank"}
    fresh.load_state_dict(old_format)
    assert (fresh.rank, fresh.max_rank) == (4, 4)
    with pytest.raises(ValueError, match="live rank must be in \\[1, 4\\]"):
        fresh.set_live_rank(5)


def test_storage_fraction_allocates_the_maximum_rank_and_the_report_counts_live_parameters():
    model = to_low_rank(
        nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10)), rank_fraction=0.1, max_rank_fraction=0.35
    )
    layer = model[0]
    assert (layer.rank, layer.max_rank) == (10, 35)
    report = parameter_report(model)
    low = 100 * 10 + 10 * 10 + 100 * 10 + 100 + 100 * 10 + 10
    assert report.params == low and report.rank_fraction == pytest.approx(0.1)
    explicit = to_low_rank(small_cnn(), rank_fraction=0.2, ranks={"7": 5}, max_rank_fraction=0.5)
    assert explicit[7].max_rank == 5 and explicit[0].max_rank == 6
    with pytest.raises(ValueError, match="max_rank_fraction"):
        to_low_rank(small_cnn(), rank_fraction=0.2, max_rank_fraction=0.0)


def test_a_channels_last_low_rank_model_keeps_every_convolution_output_channels_last():
    """Even the first layer, whose one-channel input is both layouts at once: its output decides
    the layout (and the speed) of the pooling after it."""
    from rlr_engine.workload.models import build_model, use_channels_last

    torch.manual_seed(0)
    reference = to_low_rank(build_model("lenet5", 1, 10, 28), rank_fraction=0.2)
    model = use_channels_last(to_low_rank(build_model("lenet5", 1, 10, 28), rank_fraction=0.2))
    model.load_state_dict(reference.state_dict())
    outputs = {}
    for name, module in model.named_modules():
        if isinstance(module, LowRankConv2d):
            module.register_forward_hook(lambda m, args, out, name=name: outputs.__setitem__(name, out))
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert set(outputs) == {"conv1", "conv2"}
    for name, out in outputs.items():
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous(), name


def _scramble_factors(layer) -> None:
    """Random, non-orthonormal U and V and a random non-symmetric S (a fresh layer's S is
    diagonal, so S and Sᵀ would compute the same thing)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in (layer.U, layer.S, layer.V):
            p.copy_(torch.randn(p.shape, generator=g))
    assert not torch.allclose(layer.S, layer.S.T, atol=0.1)


@pytest.mark.parametrize("stride, padding, dilation, bias", [(1, 1, 1, True), (2, 0, 2, False)])
def test_a_conv_with_a_non_symmetric_core_computes_with_its_own_dense_weight(stride, padding, dilation, bias):
    layer = LowRankConv2d(3, 7, (3, 2), rank=4, stride=stride, padding=padding, dilation=dilation, bias=bias)
    _scramble_factors(layer)
    weight = (layer.U @ layer.S @ layer.V.T).reshape(7, 3, 3, 2)
    torch.testing.assert_close(layer.dense_weight(), weight)
    x = torch.randn(2, 3, 11, 9, generator=torch.Generator().manual_seed(1))
    expected = F.conv2d(x, layer.dense_weight(), layer.bias, stride, padding, dilation)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-4)


def test_a_linear_layer_with_a_non_symmetric_core_computes_with_its_own_dense_weight():
    layer = LowRankLinear(13, 6, rank=5)
    _scramble_factors(layer)
    torch.testing.assert_close(layer.dense_weight(), layer.U @ layer.S @ layer.V.T)
    x = torch.randn(4, 13, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer(x), F.linear(x, layer.dense_weight(), layer.bias), rtol=1e-5, atol=1e-4)

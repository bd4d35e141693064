import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from rlr_engine import LowRankConv2d, LowRankLinear, low_rank_layers, parameter_report, to_low_rank


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 20, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(20 * 3 * 3, 30), nn.ReLU(), nn.Linear(30, 5))


@settings(max_examples=25, deadline=None)
@given(stride=st.integers(1, 3), padding=st.integers(0, 2), dilation=st.integers(1, 2),
       kernel=st.sampled_from([1, 3, (3, 1), 5]), bias=st.booleans(), rank=st.integers(1, 6))
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


@pytest.mark.parametrize("kwargs, message", [
    ({"rank_fraction": 0.0}, "rank_fraction"),
    ({"rank_fraction": 1.5}, "rank_fraction"),
    ({"ranks": {"nope": 2}}, "unknown layers"),
    ({"ranks": {"0": 99}}, "rank for layer '0'"),
])
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

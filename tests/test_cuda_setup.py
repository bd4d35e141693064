"""Starting on CUDA, checked without a GPU: the device every process trains on has an index, and a
data-parallel run asking for more processes than there are visible GPUs is refused before anything
starts."""

from __future__ import annotations

import pytest
import torch

from rlr_engine.core.errors import DeviceUnavailable
from rlr_engine.run import distributed
from rlr_engine.run.distributed import Ranks, join_process_group


@pytest.mark.parametrize(
    ("ranks", "asked", "expected"),
    [
        (Ranks(0, 1, 0), "cuda", "cuda:0"),  # torchrun --nproc-per-node 1
        (Ranks(), "cuda", "cuda:0"),  # one process without torchrun
        (Ranks(1, 2, 1), "cuda", "cuda:1"),
        (Ranks(1, 2, 1), "cuda:0", "cuda:1"),  # data parallel: LOCAL_RANK chooses the GPU
        (Ranks(), "cuda:1", "cuda:1"),
        (Ranks(0, 2, 0), "cpu", "cpu"),
    ],
)
def test_every_process_trains_on_a_cuda_device_with_an_index(ranks, asked, expected):
    assert ranks.place(torch.device(asked)) == torch.device(expected)


def test_a_single_process_joins_nccl_on_an_indexed_gpu(monkeypatch):
    selected, joined = [], []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    # torch.cuda.set_device raises "Expected a torch.device with a specified index" for cuda
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: selected.append(torch.device(device).index))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: joined.append(backend))
    ranks = Ranks(0, 1, 0)
    join_process_group(ranks, ranks.place(torch.device("cuda")))
    assert selected == [0] and joined == ["nccl"]


def test_a_rank_without_a_gpu_of_its_own_is_refused_with_both_numbers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device reached"))
    ranks = Ranks(1, 2, 1)
    with pytest.raises(DeviceUnavailable, match=r"rank 1 would train on cuda:1 but 1 CUDA GPU"):
        join_process_group(ranks, ranks.place(torch.device("cuda")))


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_more_processes_than_visible_gpus_are_refused_before_anything_starts(device, monkeypatch, tmp_path, capsys):
    from rlr_engine.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    runs = tmp_path / "runs"
    code = main(["train", "quickstart", "--nproc", "2", "--device", device, "--runs", str(runs)])
    message = " ".join(capsys.readouterr().err.split())  # one message, folded at the terminal's width
    assert code == 2
    assert message.startswith("error: --nproc 2:") and message.count("error:") == 1, message
    assert "2 CUDA GPUs" in message and "1 is visible" in message, message
    assert not runs.exists() or not any(runs.iterdir())


def test_a_cuda_index_past_the_visible_gpus_cannot_start(monkeypatch):
    from rlr_engine.run.trainer import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceUnavailable, match=r"'cuda:2'.*only 2 CUDA GPU"):
        resolve_device("cuda:2")

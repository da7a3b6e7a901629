"""Devices follow Ray's reservations (pipelines.devices): a worker computes on a GPU only if Ray
reserved one for it. The reservation is faked through Ray's own accessor (runtime context ->
get_accelerator_ids), and torch.cuda.is_available is made to say yes, as on a GPU node."""

from __future__ import annotations

import logging
import types

import pytest
import ray
import torch

from motioncrafter.config import ConfigError, ModelConfig, VideoConfig
from motioncrafter.runformat import RunLayout
from pipelines import devices
from pipelines.devices import worker_device


@pytest.fixture
def reserve(monkeypatch: pytest.MonkeyPatch):
    """reserve(ids, visible): this process is a Ray worker that Ray gave GPUs `ids`, with
    CUDA_VISIBLE_DEVICES = visible (None: unset); torch sees a GPU either way."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def fake(ids: list, visible: str | None = None) -> None:
        context = types.SimpleNamespace(get_accelerator_ids=lambda: {"GPU": list(ids), "TPU": []})
        monkeypatch.setattr(ray, "is_initialized", lambda: True)
        monkeypatch.setattr(ray, "get_runtime_context", lambda: context)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)

    return fake


def test_no_reservation_is_cpu_even_where_cuda_is_available(reserve, caplog: pytest.LogCaptureFixture) -> None:
    reserve([], visible="0,1")  # Ray 2.60 leaves the node's GPUs visible to a worker that reserved none
    assert torch.cuda.is_available()
    assert worker_device("auto") == "cpu"
    assert worker_device("cpu") == "cpu"
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="pipelines.devices"):
        assert worker_device("cuda") == "cpu"  # asked for, not reserved: told in the log, not obeyed
        assert worker_device("cuda:1") == "cpu"
    assert len(caplog.records) == 2 and "reserved no GPU" in caplog.records[0].getMessage()


@pytest.mark.parametrize("ids, visible, requested, expected", [
    (["2"], "0,1,2,3", "auto", "cuda:2"),  # Ray Train: the node's GPUs of a gang visible to every rank
    (["2"], "0,1,2,3", "cuda", "cuda:2"),
    (["3"], "3", "auto", "cuda:0"),  # an actor that reserved GPU 3 sees only it
    ([1], None, "auto", "cuda:1"),  # Ray told not to set CUDA_VISIBLE_DEVICES; ids may come as ints
    (["2", "3"], "2,3", "cuda:1", "cuda:1"),  # cuda:N = the N-th reserved GPU
    (["5", "4"], "4,5", "cuda:1", "cuda:0"),
    (["2"], "0,1,2,3", "cpu", "cpu"),  # a reservation does not override an explicit cpu
])
def test_reserved_gpu(reserve, ids, visible, requested, expected) -> None:
    reserve(ids, visible)
    assert worker_device(requested) == expected


def test_reservation_errors(reserve) -> None:
    reserve(["2"], "0,1,2")
    with pytest.raises(ConfigError, match=r"model.device: 'cuda:1', but Ray reserved 1 GPU"):
        worker_device("cuda:1")
    reserve(["2"], "0,1")
    with pytest.raises(RuntimeError, match="CUDA_VISIBLE_DEVICES=0,1 hides it"):
        worker_device("auto")


def test_outside_ray_the_library_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: pytest.fail("would start a Ray instance"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.reserved_gpus() is None
    assert worker_device("auto") == "cuda" and worker_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_device("auto") == "cpu"


def test_model_device_is_checked() -> None:
    for ok in ("auto", "cpu", "cuda", "cuda:3"):
        ModelConfig(device=ok)
    with pytest.raises(ConfigError, match="model.device: 'gpu'"):
        ModelConfig(device="gpu")


def test_stages_open_the_base_where_ray_reserved(reserve, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder, renderer and metric actors and a gang worker, CPU-reserved on a "GPU node": all on the CPU
    (this torch has no CUDA, so a base sent to cuda would raise). With a GPU reserved they ask for it."""
    from motioncrafter.config import Config
    from pipelines import evaluate, ingest, render, train

    reserve([], visible="0")
    layout = RunLayout(str(tmp_path), "devices")
    assert ingest.Encoder(ModelConfig(), layout, VideoConfig()).base.device.type == "cpu"
    assert render.Renderer(Config(), layout).base.device.type == "cpu"
    monkeypatch.setattr(evaluate, "ClipScorer", lambda path, device: device)
    cfg = Config()
    cfg.metrics.clip_model = "clip"
    assert evaluate.Evaluator(cfg).clip == "cpu"

    asked = []

    def open_base(model, device=None):
        asked.append(device)
        raise StopIteration  # the gang's loop needs no base past this point here

    monkeypatch.setattr(devices, "open_base", open_base)  # what open_worker_base opens with
    monkeypatch.setattr(ray.train, "get_context", lambda: types.SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1))
    config = {"cfg": Config(), "queue": None, "gang": "g", "max_clips": 0}
    for ids in ([], ["1"]):
        reserve(ids, visible="0,1")
        with pytest.raises(StopIteration):
            train.gang_loop(config)
    assert asked == ["cpu", "cuda:1"]

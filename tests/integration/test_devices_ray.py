"""pipelines.devices against a real Ray: a Ray started with one logical GPU (none is needed to
declare it) gives a task that reserves it that GPU's id and CUDA_VISIBLE_DEVICES, and a task that
reserves none neither; worker_device reads both."""

from __future__ import annotations

import pytest
import ray

from pipeline_support import start_ray


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    start_ray(num_cpus=2, num_gpus=1)
    yield
    ray.shutdown()


@ray.remote
def _where(requested: str) -> tuple[list[str] | None, str]:
    from pipelines.devices import reserved_gpus, worker_device

    return reserved_gpus(), worker_device(requested)


def test_worker_device_follows_the_reservation(ray_with_a_gpu) -> None:
    assert ray.get(_where.options(num_gpus=1).remote("auto")) == (["0"], "cuda:0")
    assert ray.get(_where.options(num_gpus=0.5).remote("cuda")) == (["0"], "cuda:0")  # a fraction is that GPU too
    assert ray.get(_where.options(num_gpus=0).remote("auto")) == ([], "cpu")

"""`motioncrafter run` with no cluster address starts a Ray of its own (`pipeline.ray_address = ""`).

A head started with `ray start` writes its address to Ray's temp dir, and one killed without `ray stop`
leaves that file behind; plain `ray.init()` then tries to join the dead (or someone else's) cluster and,
given `num_cpus`, refuses with "When connecting to an existing cluster, num_cpus ... must not be
provided". The embedded default must not read that file.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_embedded_ray_ignores_a_lingering_cluster_address_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from motioncrafter.config import PipelineConfig
    from pipelines.run import _connect

    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # Ray's socket paths must stay short
    monkeypatch.setenv("RAY_TMPDIR", temp)  # Ray's temp dir is $RAY_TMPDIR/ray: this test's own
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (Path(temp) / "ray").mkdir()
    (Path(temp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # a head that is gone
    assert not ray.is_initialized()
    try:
        assert _connect(PipelineConfig(ray_num_cpus=1)) is True  # started here, so ours to stop
        assert ray.cluster_resources()["CPU"] == 1
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)

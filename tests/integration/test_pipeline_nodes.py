"""Multi-node: a worker node is removed while two gangs train. The run completes, no manifest
row is lost, and no clip is committed twice."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import ray

from pipeline_support import tiny_config, write_manifest
from motioncrafter.runformat import RunLayout
from pipelines.run import run_pipeline
from pipelines.train import queue_name

pytestmark = pytest.mark.slow


def leased(run_id: str) -> int:
    try:
        return ray.get(ray.get_actor(queue_name(run_id)).progress.remote())["leased"]
    except ValueError:  # the queue does not exist yet
        return 0


def test_node_lost_while_gangs_train(debug_base_dir, tmp_path) -> None:
    """Two gangs on two worker nodes; one node is removed once training is under way.
    The run completes, no row is lost, no clip is committed twice."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 * 2**20,
                                                            "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2, object_store_memory=80 * 2**20) for _ in range(2)]
    ray.init(address=cluster.address, namespace=f"mc-nodes-{uuid.uuid4().hex[:8]}")
    try:
        count = 6
        manifest = write_manifest(tmp_path, count, seed=3)
        cfg = tiny_config("tune.steps=6", "pipeline.num_gangs=2", "pipeline.lease_seconds=10", "pipeline.max_attempts=3")
        layout = RunLayout(str(tmp_path / "out"), "nodes")
        outcome: dict = {}
        runner = threading.Thread(target=lambda: outcome.update(run_pipeline(str(manifest), layout.output, cfg, "nodes", debug_base_dir)))
        runner.start()

        # wait until an adapter is committed (gangs are up) and both gangs hold a lease: the node removed
        # below then takes a leased clip with it, which must come back through lease expiry
        deadline = time.time() + 900
        while not (list(Path(layout.root).glob("adapters/*/_COMMITTED")) and leased(layout.run_id) == 2):
            assert runner.is_alive() and time.time() < deadline, "the gangs never got going"
            time.sleep(0.1)
        # Ray Train places each gang's workers with a placement group: its bundles say on which nodes they run
        training = {node for pg in ray.util.placement_group_table().values() if pg["state"] == "CREATED"
                    for node in pg["bundles_to_node_id"].values()}
        victim = next(n for n in workers if n.node_id in training)
        cluster.remove_node(victim)

        runner.join(timeout=1200)
        assert not runner.is_alive(), "the run did not finish after the node was lost"
        info = outcome
        assert info["counts"]["rows"] == count and info["counts"]["summary"] == count and info["counts"]["failures"] == 0
        assert info["stages"]["train"]["commit_conflicts"] == 0  # no adapter trained again after its commit
        assert len(list(Path(layout.root).glob("adapters/*/_COMMITTED"))) == count
        summary = pd.read_parquet(f"{layout.root}/summary")
        assert summary.train_attempts.max() >= 2  # the lost node's clip was leased again
    finally:
        ray.shutdown()
        cluster.shutdown()

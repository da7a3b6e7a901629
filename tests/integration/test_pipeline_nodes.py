"""Multi-node: a worker node is removed while two gangs train (the run completes, no manifest row is
lost, no clip is committed twice); a node drained for preemption gives its clip back without spending
the clip's attempt."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import ray

from pipeline_support import tiny_config, write_manifest
from motioncrafter.runformat import RunLayout
from pipelines.ingest import ingest
from pipelines.manifest import load_manifest
from pipelines.run import run_pipeline
from pipelines.train import queue_name, train

pytestmark = pytest.mark.slow


def leased(run_id: str) -> int:
    try:
        return ray.get(ray.get_actor(queue_name(run_id)).progress.remote())["leased"]
    except ValueError:  # the queue does not exist yet
        return 0


def training_nodes() -> set[str]:
    """The nodes that gangs' workers run on now: Ray Train places them with placement groups."""
    return {node for pg in ray.util.placement_group_table().values() if pg["state"] == "CREATED"
            for node in pg["bundles_to_node_id"].values()}


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
        training = training_nodes()
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


def test_a_node_drained_for_preemption_gives_its_clip_back_without_spending_an_attempt(debug_base_dir, tmp_path, monkeypatch) -> None:
    """max_attempts=1, one gang, one clip: the node the gang tunes on is drained with Ray's own preemption drain
    (`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`, what the autoscaler does on a spot
    reclaim notice). Ray Train's watcher tells the gang, which releases the clip; at the drain deadline
    Ray Train restarts the gang on the other node, which tunes the clip again as its first attempt.
    Had the attempt been spent (a lease left to expire), the clip would fail."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "1")  # inherited by the raylets started below
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 * 2**20,
                                                            "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2, object_store_memory=80 * 2**20) for _ in range(2)]
    ray.init(address=cluster.address, namespace=f"mc-drain-{uuid.uuid4().hex[:8]}")
    try:
        manifest = write_manifest(tmp_path, 1, seed=29)
        # long tunes (the drain must find one under way) and long leases (none expires in this test)
        cfg = tiny_config("tune.steps=100", "pipeline.max_attempts=1", "pipeline.lease_seconds=600", f"model.base_model={debug_base_dir}")
        layout = RunLayout(str(tmp_path / "out"), "drain")
        clips = ingest(load_manifest(str(manifest)).rows, layout, cfg).clips
        outcome: dict = {}
        runner = threading.Thread(target=lambda: outcome.update(result=train(clips, layout, cfg)))
        runner.start()
        deadline = time.time() + 900
        while leased(layout.run_id) < 1 or not training_nodes():
            assert runner.is_alive() and time.time() < deadline, "the gang never got going"
            time.sleep(0.1)
        victim = next(n for n in workers if n.node_id in training_nodes())
        drained = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "drain-node", "--address", cluster.address,
                                  "--node-id", victim.node_id, "--reason", "DRAIN_NODE_REASON_PREEMPTION",
                                  "--reason-message", "spot instance reclaimed (test)", "--deadline-remaining-seconds", "10"],
                                 capture_output=True, text=True, timeout=120, env=os.environ)
        assert drained.returncode == 0, drained.stderr
        runner.join(timeout=1500)
        assert not runner.is_alive(), "training did not finish after the drain"
        result = outcome["result"]
        assert result.failures == [] and result.gang_errors == []
        assert sorted(result.adapters) == sorted(c.row.motion_id for c in clips)
        assert all(a.trained and a.attempts == 1 for a in result.adapters.values())
        assert sum(result.preempted.values()) >= 1  # the drain found a clip leased and gave it back
        assert len(list(Path(layout.root).glob("adapters/*/_COMMITTED"))) == 1 and result.conflicts == {}
    finally:
        ray.shutdown()
        cluster.shutdown()

"""A training job on a two-node Ray cluster on one machine: two raylets of one CPU each, so the two
Ray Train workers cannot share a node. Both write their ZeRO-3 shards into checkpoints in storage
both nodes see (a tmp folder), and the run ends at its last step with a Hugging Face export.
Real parts: `ray.cluster_utils.Cluster` (a head and an added node), Ray Train, DeepSpeed ZeRO-3."""

import pytest

from solo.runtime import worker_env
from solo.train.config import TrainConfig

pytestmark = pytest.mark.integration


@pytest.fixture
def two_nodes():
    """A head of 1 CPU and a second node of 1 CPU, both raylets on this machine; stopped by the
    cluster object itself (its own processes), never by `ray stop`."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, runtime_env={"env_vars": worker_env()})
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_training_spreads_over_two_nodes_and_checkpoints_to_shared_storage(two_nodes, tiny_tokens, tmp_path):
    import ray
    from ray.util.state import list_actors

    from solo.train.job import TrainJob
    from solo.train.launch import run_training

    data = tiny_tokens
    config = TrainConfig(model="demo", workers=2, micro_batch=2, global_batch=4, max_steps=2, log_every=1,
                         eval_every=2, eval_batches=1, checkpoint_every=2, keep_checkpoints=2, device="cpu")
    output = tmp_path / "pretrain"
    output.mkdir()
    metrics = run_training(TrainJob(config=config, train_dir=str(data / "tokenize" / "train"),
                                    val_dir=str(data / "tokenize" / "val"), tokenizer_dir=str(data / "tokenizer"),
                                    output_dir=str(output)))
    assert metrics["step"] == 2
    assert metrics["val_loss"] > 0

    # The workers ran on both nodes.
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=100)
    assert {w.node_id for w in workers} == nodes, [(w.node_id, w.state) for w in workers]

    # Each rank's ZeRO-3 shard reached the same checkpoint in the shared storage.
    checkpoints = sorted(p for p in (output / "ray" / "train").glob("checkpoint_*") if p.is_dir())
    assert checkpoints, list((output / "ray").rglob("*"))[:20]
    last = checkpoints[-1]
    shards = {p.name for p in last.rglob("zero_pp_rank_*_optim_states.pt")}
    assert any("rank_0_" in s for s in shards) and any("rank_1_" in s for s in shards), shards
    assert (last / "latest").read_text().strip() == "step_00000002"
    assert (output / "model" / "model.safetensors").is_file()

"""Several nodes: what each rank reads, and a run on two nodes.

Every backend, built for ranks 0 and 1 of two in this process (as two nodes of one process each
build them), on an ImageNet-format set and on CIFAR-format arrays whose every image says which
sample it is: per epoch, the ranks read disjoint samples that cover the epoch but for what one
global batch cannot fill, in as many iterations as one process with twice the batch; eval
shares cover the split exactly. Then two torchrun launches (two nodes on this host, each in its
own folder): trained, interrupted mid-epoch and resumed, with one run directory, written by
global rank 0 alone on its node's disk.
"""
from __future__ import annotations

import json
import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures import (
    CIFAR_LAYOUT,
    _tar_bytes,
    as_uint8_hwc,
    free_port,
    node_command,
    run_together,
    subprocess_env,
    tiny_args,
)
from pipelines import AugSpec, DataConfig, build_loader
from pipelines.readers import split_positions
from train.checkpoint import load_checkpoint
from train.config import load_config
from train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = [
    pytest.param("native"),
    pytest.param("torchvision"),
    pytest.param("ffcv", marks=pytest.mark.ffcv),
    pytest.param("dali", marks=pytest.mark.dali),
    pytest.param("synthetic"),
]
N_TRAIN, N_TEST, VAL = 100, 20, 10  # CIFAR: 90 train images after the 10 held out as val
N_IMAGENET_TRAIN, N_IMAGENET_VAL = 24, 10  # the pattern fixture, one class per image
BATCH = 4  # per rank; one process reads batches of 2 * BATCH


@pytest.fixture(scope="module")
def id_cifar(tmp_path_factory) -> Path:
    """CIFAR-10 records (arrays, and FFCV's when installed) from a tarball in the official
    layout whose images are each one colour that names them: R = the image's position in its
    stored split, G = 255 - R; a crop of the zero-padded image keeps its centre pixel. Labels:
    position % 10."""
    import importlib.util

    from tools.converter.cli import convert

    folder = tmp_path_factory.mktemp("id_cifar")
    top, train_files, test_files, meta, label_key, names_key, _ = CIFAR_LAYOUT["cifar10"]
    members = [(f"{top}/{meta}", pickle.dumps({names_key: [f"c{i}" for i in range(10)]}, 2))]
    for files, n in ((train_files, N_TRAIN), (test_files, N_TEST)):
        ids = np.arange(n)
        pixels = np.stack([ids, 255 - ids, np.full(n, 128)], axis=1).astype(np.uint8)
        rows = np.repeat(pixels[:, :, None], 32 * 32, axis=2).reshape(n, 3072)  # CHW rows
        for name, part in zip(files, np.array_split(ids, len(files))):
            members.append((f"{top}/{name}", pickle.dumps(
                {label_key: (part % 10).tolist(), "data": rows[part]}, 2)))
    tar = folder / "cifar-10-python.tar.gz"
    tar.write_bytes(_tar_bytes(members, mode="w:gz"))
    formats = ["arrays"] + (["ffcv"] if importlib.util.find_spec("ffcv") else [])
    return convert("cifar10", src=tar, out=folder / "records", formats=formats, workers=1,
                   allow_subset=True, quiet=True)


def data_config(dataset: str, root: Path, backend: str, batch_size: int) -> DataConfig:
    if dataset == "cifar":
        return DataConfig(dataset="cifar10", root=str(root), backend=backend,
                          batch_size=batch_size, eval_batch_size=3, num_workers=0,
                          val_size=VAL)
    return DataConfig(dataset="imagenet", root=str(root), backend=backend,
                      batch_size=batch_size, eval_batch_size=3, num_workers=0,
                      aug=AugSpec(scale_min=64, scale_max=80, crop=56, eval_resize=64))


def sample_ids(images: torch.Tensor, labels: torch.Tensor, cfg: DataConfig) -> list[int]:
    """Which samples a batch holds: ImageNet's labels (one class per image); CIFAR's centre
    pixels (R = the position), checked against G and against the label."""
    if cfg.dataset == "imagenet":
        return labels.tolist()
    centre = as_uint8_hwc(images.float(), cfg)[:, 16, 16].astype(int)
    ids = centre[:, 0]
    assert (centre[:, 1] == 255 - ids).all() and (labels.numpy() == ids % 10).all()
    return ids.tolist()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dataset", ["cifar", "imagenet"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_share_each_epoch_as_one_process_of_twice_the_batch(backend, dataset,
                                                                      request):
    root = request.getfixturevalue("id_cifar" if dataset == "cifar" else "pattern_records")
    one = build_loader(data_config(dataset, root, backend, 2 * BATCH), "train", "cpu", seed=5)
    ranks = [build_loader(data_config(dataset, root, backend, BATCH), "train", "cpu",
                          rank=rank, world_size=2, seed=5) for rank in (0, 1)]
    cfg = ranks[0].request.data
    if dataset == "cifar":
        train_ids = set(split_positions(cfg, "train").tolist())
        val_ids = sorted(split_positions(cfg, "val").tolist())
    else:
        train_ids, val_ids = set(range(N_IMAGENET_TRAIN)), list(range(N_IMAGENET_VAL))
    iterations = len(one)
    assert len(ranks[0]) == len(ranks[1]) == iterations == len(train_ids) // (2 * BATCH)

    epochs = []
    for epoch in (0, 1):
        shares = []
        for loader in ranks:
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == iterations
            assert all(len(labels) == BATCH for _, labels in batches)
            if backend != "synthetic":  # one fixed random batch per rank: no samples
                shares.append([i for images, labels in batches
                               for i in sample_ids(images, labels, cfg)])
        epochs.append(shares)
    if backend == "synthetic":
        return
    for first, second in epochs:
        assert len(set(first)) == len(first) and len(set(second)) == len(second)
        assert not set(first) & set(second)  # disjoint across the nodes
        seen = set(first) | set(second)
        assert seen <= train_ids and len(seen) == iterations * 2 * BATCH
        assert len(train_ids - seen) < 2 * BATCH  # only what one global batch cannot fill
    assert epochs[0] != epochs[1]  # a new order every epoch

    shares = []
    for rank in (0, 1):
        val = build_loader(data_config(dataset, root, backend, BATCH), "val", "cpu", rank=rank,
                           world_size=2)
        shares.append([i for images, labels in val for i in sample_ids(images, labels, cfg)])
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == val_ids  # every val sample once


# ----------------------------------------------------------------------------- two nodes
HARNESS = ROOT / "tests" / "fault_harness.py"
RUN = ROOT / "train" / "run.py"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_nodes_train_resume_and_write_one_run_directory(colour_cifar, tmp_path):
    """Two torchrun launches, one process each, each in its own folder with run.out_dir=runs:
    interrupted at iteration 8 (rank 1 asks to stop; the ranks agree at the log step), then
    resumed by the same two commands with --resume runs/two. Only node 0's folder gets a run
    directory, although node 1 is handed the same relative paths; the run has the iterations
    per epoch of one process of twice the batch."""
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    args = tiny_args(colour_cifar, Path("runs"), "two", "data.batch_size=16", "run.log_every=2")
    args[0] = str(ROOT / args[0])  # the config: absolute, each node runs in its own folder
    env = {**subprocess_env(), "RESPIPE_FAULT": "stop", "RESPIPE_FAULT_RANK": "1",
           "RESPIPE_FAULT_AT": "8"}

    def launch(script, *arguments, env=env, logs="logs"):
        port, run_id = free_port(), uuid.uuid4().hex[:8]
        return run_together([(node_command(n, port, run_id, script, *arguments), nodes[n])
                             for n in (0, 1)], env, tmp_path / logs, timeout=400)

    interrupted = launch(HARNESS, *args)
    for node in interrupted:  # torchrun exits 1 and names its worker's status, 130
        assert node.returncode == 1 and "exitcode  : 130" in node.output, node.output[-4000:]
    run = nodes[0] / "runs" / "two"
    state = load_checkpoint(run / "last.pt")["state"]
    assert (state["iteration"], state["epoch"], state["batch"]) == (8, 0, 8)  # mid-epoch
    assert "interrupted at iteration 8" in interrupted[0].output
    assert not (nodes[1] / "runs").exists()

    resumed = launch(RUN, "--resume", "runs/two", env=subprocess_env(), logs="logs2")
    for node in resumed:
        assert node.returncode == 0, node.output[-4000:]
    assert not (nodes[1] / "runs").exists()  # rank 1 read and wrote nothing there
    header = "runs/two (resumed at iteration 8): resnet20 on cifar10 [native], cpu x2, "
    assert header + "13 it/epoch, 26 iterations" in resumed[0].output
    assert header not in resumed[1].output and "runs/two" not in resumed[1].output

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert summary["global_batch"] == 32 and summary["iterations"] == 26
    one_process = load_config(args[0], args[1:] + ["data.batch_size=32"]).data
    per_epoch = len(build_loader(one_process, "train", "cpu"))
    assert summary["iterations"] / summary["epochs"] == per_epoch == 13  # 416 // 32
    assert load_checkpoint(run / "last.pt")["state"]["images"] == 26 * 32
    records = read_metrics(run)
    train = [r["iter"] for r in records if r["kind"] == "train"]
    assert train == sorted(set(train)) and {8, 10, 13, 26} <= set(train)
    for name in ("config.yaml", "best.pt", "curves.png"):
        assert (run / name).is_file()
    print(f"two nodes: {per_epoch} it/epoch, {summary['images_per_sec']:.0f} img/s, "
          f"{summary['wall_time_s']:.1f} s wall (resumed run: {summary['train_time_s']:.1f} s "
          "training)")

"""The figure and table tools on tiny runs made here (CPU, seconds): the feature grid's cells are
the source images in the right order, the comparison chart has one curve per run, the table's
rows and published numbers are right, and reproduce_cifar runs, resumes and writes them."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import as_uint8_hwc, tiny_args, write_tiny_imagenet
from models import build_model, shortcut_of
from records import format as fmt
from tools import compare, feature_grid, published, reproduce_cifar, table
from train.build import load_run, precision
from train.checkpoint import save_atomic
from train.config import dump_config, load_config
from train.metrics import figure_runs, read_metrics, train_points
from train.run import main as train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.val_size=64", "data.batch_size=32", "data.eval_batch_size=64", "run.threads=1"]


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(colour_cifar, tmp_path_factory) -> dict[str, Path]:
    """Two finished tiny runs (ResNet-20, plain-20) and an unfinished copy of the first."""
    out = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    train(tiny_args(colour_cifar, out, "resnet20"))
    train(tiny_args(colour_cifar, out, "plain20", "model.name=plain20", "model.shortcut=none"))
    torch.set_num_threads(threads)
    shutil.copytree(out / "resnet20", out / "cut")
    (out / "cut" / "summary.json").unlink()
    return {name: out / name for name in ("resnet20", "plain20", "cut")}


def test_shortcut_of():
    assert shortcut_of("resnet20") == "A" and shortcut_of("resnet34") == "B"
    assert shortcut_of("cifar_resnet18", "identity") == "A-avg"
    assert shortcut_of("plain56") == "none"
    with pytest.raises(ValueError, match="plain net"):
        shortcut_of("plain20", "A")


def expected_grid(run_dir: Path, k: int, split: str = "test") -> tuple[list[int], np.ndarray]:
    """(features, image indices per row) computed apart from the tool: the fc layer's input
    captured by a hook, the k features of largest variance, each sorted by magnitude."""
    from pipelines import build_loader

    cfg, model = load_run(run_dir, device="cpu")
    captured = []
    model.fc.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    with torch.inference_mode(), precision(cfg, torch.device("cpu")).autocast():  # the run's
        for batch, _ in build_loader(cfg.data, split, "cpu"):
            model(batch)
    features = torch.cat(captured).float()
    chosen = sorted(features.var(0).topk(k).indices.tolist())
    rows = []
    for f in chosen:
        order = np.argsort(features[:, f].abs().numpy(), kind="stable")
        rows.append(np.concatenate([order[:10], order[-10:]]))
    return chosen, np.array(rows)


def test_feature_grid_cells_are_the_source_images_in_order(runs, tmp_path):
    out = feature_grid.main([str(runs["resnet20"]), "--features", "5", "--out",
                             str(tmp_path / "grid.png"), "--device", "cpu"])
    grid = np.asarray(Image.open(out).convert("RGB"))
    layout = feature_grid.Layout(rows=5, cell=32)
    assert grid.shape[:2] == layout.size
    records = Path(load_config(runs["resnet20"] / "config.yaml").data.root)
    sources = np.load(records / fmt.array_rels("test")[0])
    chosen, rows = expected_grid(runs["resnet20"], 5)
    for r, picks in enumerate(rows):
        for c, index in enumerate(picks):
            top, left = layout.cell_origin(r, c)
            cell = grid[top:top + 32, left:left + 32]
            assert np.array_equal(cell, sources[index]), (r, c, index)
    with pytest.raises(ValueError, match="shuffles"):
        feature_grid.main([str(runs["resnet20"]), "--split", "train"])
    # the separator between the halves is red, on every row
    top, left = layout.cell_origin(0, 10)
    assert tuple(grid[top + 5, left - 2]) == (255, 0, 0)


def test_feature_grid_imagenet(tmp_path):
    """An ImageNet run (untrained weights: no training needed to test the grid): the cells are
    the eval center crops the net saw, in the order of the features' magnitudes."""
    from pipelines import build_loader

    records = write_tiny_imagenet(tmp_path, n=24)
    cfg = load_config(ROOT / "configs/resnet34_B.yaml", [
        f"data.root={records}", "data.backend=native", "model.name=resnet18", "run.device=cpu",
        "data.num_workers=0", "data.eval_batch_size=8", "data.aug.eval_resize=72",
        "data.aug.crop=64"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg))
    torch.manual_seed(0)
    save_atomic({"model": build_model("resnet18", 1000).state_dict()}, run / "best.pt")

    out = feature_grid.main([str(run), "--features", "3"])
    assert out == run / "features_val.png"
    grid = np.asarray(Image.open(out).convert("RGB"))
    layout = feature_grid.Layout(rows=3, cell=64)
    assert grid.shape[:2] == layout.size
    crops = np.concatenate([as_uint8_hwc(images, cfg.data)
                            for images, _ in build_loader(cfg.data, "val", "cpu")])
    _, rows = expected_grid(run, 3, split="val")
    for r, picks in enumerate(rows):
        for c, index in enumerate(picks):
            top, left = layout.cell_origin(r, c)
            assert np.array_equal(grid[top:top + 64, left:left + 64], crops[index]), (r, c)


def test_feature_grid_all_features_by_default(runs, tmp_path):
    out = feature_grid.main([str(runs["plain20"]), "--device", "cpu", "--cell", "16"])
    assert out == runs["plain20"] / "features_test.png"
    # plain-20 ends in 64 channels: one row each, cells resized to 16 px
    assert Image.open(out).size[::-1] == feature_grid.Layout(rows=64, cell=16).size


def test_compare_one_curve_per_run(runs, tmp_path):
    names = ["resnet20", "plain20", "cut"]
    fig = figure_runs([(n, read_metrics(runs[n])) for n in names])
    lines = fig.axes[0].get_lines()
    bold = [line for line in lines if line.get_linestyle() == "-" and line.get_marker() != "*"]
    dashed = [line for line in lines if line.get_linestyle() == "--"]
    stars = [line for line in lines if line.get_marker() == "*"]
    assert len(bold) == len(dashed) == 3
    assert len(stars) == 3  # the cut run keeps its copied test record
    colours = [line.get_color() for line in bold]
    assert len(set(colours)) == 3 and [line.get_color() for line in dashed] == colours
    val_iters = [r["iter"] for r in read_metrics(runs["plain20"]) if r["kind"] == "val"]
    assert list(bold[1].get_xdata()) == val_iters
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        *names, "train error", "val error", "test error (final)"]
    assert [h.get_color() for h in legend.legend_handles[:3]] == colours

    out = compare.main([*(str(runs[n]) for n in names), "--out", str(tmp_path / "c.png")])
    assert Image.open(out).format == "PNG"
    epochs = compare.main([str(runs["resnet20"]), "--out", str(tmp_path / "e.png")])
    assert Image.open(epochs).size == Image.open(out).size  # epoch-based: per-epoch x axis


def test_epoch_axis_scales_iterations(runs):
    records = read_metrics(runs["resnet20"])
    fig = figure_runs([("r", records)], x="epoch")
    bold = [line for line in fig.axes[0].get_lines() if line.get_linewidth() == 2.2][0]
    assert list(bold.get_xdata()) == [1.0, 2.0]  # val after each of 2 epochs of 13 iterations
    assert fig.axes[0].get_xlabel() == "epochs"


def test_table_rows_and_published_numbers(runs):
    done, pending = table.build_rows([runs["resnet20"], runs["plain20"], runs["cut"]])
    summary = json.loads((runs["resnet20"] / "summary.json").read_text())
    resnet, plain = done
    assert (resnet.table, resnet.row, resnet.published) == (
        "paper Table 6: CIFAR-10, option A", "ResNet-20", 8.75)
    assert resnet.measured == summary["test_top1_error"]
    assert resnet.difference == pytest.approx(summary["test_top1_error"] - 8.75)
    assert "shortened: 26 of the recipe's 64000 iterations" in resnet.note
    assert (plain.row, plain.published, plain.difference) == ("plain-20", None, None)
    assert plain.measured is not None and "Figure 6" in plain.note
    [cut] = pending
    assert cut.measured is None and cut.note == ("unfinished (no summary.json): iteration 26 of 2 "
                                                  "epochs")

    text = table.main([str(runs["resnet20"]), str(runs["cut"]), "--format", "csv"])
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [p["run"] for p in parsed] == ["resnet20", "cut"]
    assert parsed[0]["published"] == "8.75" and parsed[1]["measured"] == ""
    md = table.main([str(runs["resnet20"]), str(runs["cut"])])
    assert "### Unfinished runs" in md and "| 8.75 |" in md


def fake_run(folder: Path, config: str, overrides: list[str], summary: dict,
             evals: dict[str, float]) -> Path:
    """A finished run directory as train/run.py and train/evaluate.py leave it, without
    training (an ImageNet run here would take hours)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(load_config(ROOT / config, overrides)))
    (folder / "summary.json").write_text(json.dumps({"status": "completed", **summary}))
    for mode, error in evals.items():
        (folder / f"eval_{mode}_val.json").write_text(json.dumps({"top1_error": error}))
    return folder


def test_table_imagenet_protocols_and_seed_accuracy(tmp_path):
    r34 = fake_run(tmp_path / "r34", "configs/resnet34_B.yaml", [],
                   {"iterations": 600000, "epochs": 120, "val_top1_error": 27.0},
                   {"tencrop": 25.0})
    seed = fake_run(tmp_path / "s18", "configs/seed000_resnet18_cifar100_identity.yaml", [],
                    {"iterations": 105600, "epochs": 300, "test_top1_error": 20.0}, {})
    done, _ = table.build_rows([r34, seed])
    got = {(r.table, r.row): (r.measured, r.published, r.note) for r in done}
    assert got[("paper Tables 3-4: ImageNet val, ResNet-34", "ResNet-34 B 10-crop")][:2] == (
        25.0, 24.52)
    measured, pub, note = got[("paper Tables 3-4: ImageNet val, ResNet-34",
                               "ResNet-34 B multi-scale")]
    assert (measured, pub) == (None, 21.84) and "--mode multiscale" in note
    assert got[("seed 004: ImageNet val, ResNet-34 B", "center crop (best epoch)")][:2] == (
        27.0, 27.27)
    # seed 000 printed accuracy: measured 20% error -> 80% accuracy, against 79.2%
    row = got[("seed 000: with/without identity shortcuts", "ResNet-18 CIFAR-100 with identity")]
    assert row[:2] == (80.0, 79.2) and row[2] == ""
    assert [r for r in done if r.run == "s18"][0].difference == pytest.approx(0.8)


def test_published_numbers():
    def value(model, shortcut, dataset, protocol="test"):
        [row] = [p for p in published.lookup(model, shortcut, dataset) if p.protocol == protocol]
        return row.value

    assert [value(f"resnet{d}", "A", "cifar10") for d in (20, 32, 44, 56, 110, 1202)] == [
        8.75, 7.51, 7.17, 6.97, 6.43, 7.93]
    assert value("plain56", "none", "cifar10") is None
    assert value("cifar_resnet34", "B", "cifar10") == 93.5
    assert value("cifar_resnet34", "A-avg", "cifar10") == 95.5
    assert value("cifar_resnet50", "A-avg", "cifar10") == 95.0
    assert value("cifar_resnet10", "A-avg", "cifar100") == 75.3
    assert len([p for p in published.PUBLISHED if p.table.startswith("seed 000")]) == 14
    assert value("resnet34", "B", "imagenet", "tencrop") == 24.52
    assert value("plain34", "none", "imagenet", "tencrop") == 28.54
    assert len({p.key + (p.table,) for p in published.PUBLISHED}) == len(published.PUBLISHED)


def test_reproduce_cifar_budget_runs_resumes_and_writes(colour_cifar, tmp_path):
    argv = ["--budget", "3", "--data", str(colour_cifar), "--out", str(tmp_path),
            "--models", "resnet20,plain20", *TINY]
    assert reproduce_cifar.main(argv) == 0
    for name in ("resnet20", "plain20"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["iterations"] == 3
        assert summary["model"] == name
    assert "| ResNet-20 |" in (tmp_path / "table.md").read_text()
    for png in ("figure6_plain.png", "figure6_resnet.png"):
        assert Image.open(tmp_path / png).format == "PNG"
    # again: finished runs are skipped, not retrained
    stamp = (tmp_path / "resnet20" / "last.pt").stat().st_mtime_ns
    assert reproduce_cifar.main(argv) == 0
    assert (tmp_path / "resnet20" / "last.pt").stat().st_mtime_ns == stamp
    # a run stopped before its summary: resumed from its last.pt, not started again
    (tmp_path / "plain20" / "summary.json").unlink()
    assert reproduce_cifar.main(argv) == 0
    summary = json.loads((tmp_path / "plain20" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == 3
    starts = [r for r in read_metrics(tmp_path / "plain20") if r["kind"] == "train"]
    assert [r["iter"] for r in starts] == [1, 2, 3]  # no second pass over iterations 1-3


def test_a_run_without_val_points_is_in_the_legend(runs):
    early = [r for r in read_metrics(runs["plain20"]) if r["kind"] == "train" and r["iter"] < 13]
    fig = figure_runs([("early", early)])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][0] == "early"
    assert len(fig.axes[0].get_lines()) == 1  # its train curve, nothing else


def test_train_points_merge_the_short_interval_at_an_epoch_end():
    records = [{"kind": "train", "iter": i, "error": e}
               for i, e in ((50, 80.0), (100, 70.0), (101, 0.0), (150, 60.0), (200, 50.0))]
    records.insert(3, {"kind": "val", "iter": 101, "top1_error": 65.0})
    assert train_points(records) == [(50, 80.0), (100, 70.0), (150, 60.0 * 49 / 50),
                                     (200, 50.0)]

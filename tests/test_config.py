"""The typed config: every file in configs/ loads and builds its model; misspelt keys, wrong
types and bad values are refused by name; overrides, `base:` files and the saved config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import MODELS
from pipelines.spec import num_classes
from records import datasets
from records import format as fmt
from train.build import model_for
from train.config import ConfigError, dump_config, load_config, parse_value, valid_keys
from train.schedule import LRSchedule, build_optimizer

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_is_a_config_for_every_seed_table_row():
    names = {p.stem for p in CONFIGS}
    paper = {f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)}
    seed000 = {f"seed000_resnet{d}_cifar10_{k}" for d in (10, 18, 34, 50)
               for k in ("identity", "projection")}
    seed000 |= {f"seed000_resnet{d}_cifar100_{k}" for d in (10, 18, 34)
                for k in ("identity", "projection")}
    assert len(seed000) == 14
    assert paper | seed000 | {"seed004_resnet32", "resnet34_B", "quickstart"} <= names


def classes_only_records(folder: Path, dataset: str, classes: int) -> Path:
    """A manifest with `classes` classes and no files: what a model's size is read from."""
    splits = {split: {"count": 0, "per_class": []} for split in datasets.get(dataset).stored}
    fmt.write_manifest(folder, fmt.make_manifest(
        dataset=dataset, formats=datasets.get(dataset).formats[:1], source="test", settings={},
        classes=[f"class {i}" for i in range(classes)], splits=splits,
        stats={"mean": [0.5] * 3, "std": [0.25] * 3}))
    return folder


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_builds_its_model(path, tmp_path):
    cfg = load_config(path)
    assert cfg.model.name in MODELS
    if datasets.get(cfg.data.dataset).classes is None:  # they come from the records
        cfg.data.root = str(classes_only_records(tmp_path, cfg.data.dataset, 7))
    meta = torch.device("meta")
    with meta:  # no memory, no init cost: ResNet-1202 and ImageNet nets too
        model = model_for(cfg, meta)
    assert model.fc.out_features == num_classes(cfg.data)
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, iters_per_epoch=10)
    assert schedule.lr(0) > 0
    saved = tmp_path / "config.yaml"  # what a run directory keeps: reloads identically
    saved.write_text(dump_config(cfg))
    assert load_config(saved) == cfg


def test_paper_and_seed_settings():
    r20 = load_config("configs/resnet20.yaml")
    assert (r20.model.name, r20.model.shortcut, r20.data.batch_size) == ("resnet20", "A", 128)
    assert (r20.optim.lr, r20.optim.momentum, r20.optim.weight_decay) == (0.1, 0.9, 1e-4)
    assert (r20.schedule.unit, r20.schedule.total, r20.schedule.milestones) == \
        ("iter", 64000, [32000, 48000])
    assert r20.data.val_size == 5000
    r110 = load_config("configs/resnet110.yaml")
    assert (r110.schedule.warmup, r110.schedule.warmup_factor) == (400, 0.1)
    s004 = load_config("configs/seed004_resnet32.yaml")
    assert (s004.schedule.unit, s004.schedule.total, s004.schedule.milestones) == \
        ("epoch", 180, [82, 123])
    b34 = load_config("configs/resnet34_B.yaml")
    assert (b34.data.dataset, b34.model.shortcut, b34.data.batch_size) == ("imagenet", "B", 256)
    assert (b34.schedule.total, b34.schedule.milestones) == (120, [30, 60])
    assert load_config("configs/resnet34_B_plateau.yaml").schedule.kind == "plateau"
    r50 = load_config("configs/seed000_resnet50_cifar10_identity.yaml")
    assert (r50.data.batch_size, r50.model.shortcut) == (64, "A-avg")
    c100 = load_config("configs/seed000_resnet34_cifar100_projection.yaml")
    assert (c100.data.dataset, c100.model.shortcut, c100.schedule.milestones) == \
        ("cifar100", "B", [100, 200])


def learning_rates(cfg, steps: int, iters_per_epoch: int = 1) -> list[float]:
    """The lr of each of the first `steps` iterations under cfg's schedule."""
    schedule = LRSchedule(cfg.schedule, cfg.optim.lr, iters_per_epoch)
    return [schedule.lr(i) for i in range(steps)]


def test_lr_matches_torch_schedulers():
    """The pure function agrees with torch's ChainedScheduler(ConstantLR or LinearLR,
    MultiStepLR) stepped once per unit, and epoch units hold the lr for a whole epoch."""
    from torch.optim import lr_scheduler

    for kind in ("constant", "linear"):
        cfg = load_config(None, ["schedule.total=30", "schedule.milestones=[10,20]",
                                 "schedule.warmup=4", f"schedule.warmup_kind={kind}"])
        opt = build_optimizer(torch.nn.Linear(1, 1), cfg.optim)
        warm = (lr_scheduler.ConstantLR(opt, factor=0.1, total_iters=4) if kind == "constant"
                else lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=4))
        chained = lr_scheduler.ChainedScheduler(
            [warm, lr_scheduler.MultiStepLR(opt, milestones=[10, 20], gamma=0.1)])
        expected = []
        for _ in range(30):
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            chained.step()
        assert learning_rates(cfg, 30) == pytest.approx(expected)
        per_iter = learning_rates(cfg, 30 * 7, iters_per_epoch=7)
        assert per_iter == pytest.approx([lr for lr in expected for _ in range(7)])


def test_plateau_rule_matches_reduce_lr_on_plateau():
    from torch.optim import lr_scheduler

    cfg = load_config(None, ["schedule.kind=plateau", "schedule.plateau_patience=1",
                             "schedule.plateau_threshold=0.5"])
    schedule = LRSchedule(cfg.schedule, 0.1, 10)
    opt = build_optimizer(torch.nn.Linear(1, 1), cfg.optim)
    torch_rule = lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=1,
                                                threshold=0.5, threshold_mode="abs")
    for error in (50, 40, 39.8, 39.9, 30, 29.9, 29.8, 29.7, 29.6, 10):
        schedule.on_eval(error)
        torch_rule.step(error)
        assert schedule.lr(0) == pytest.approx(opt.param_groups[0]["lr"]), error
    assert schedule.lr(0) == pytest.approx(1e-4)


def test_resnet110_warmup_then_milestones():
    cfg = load_config("configs/resnet110.yaml", ["schedule.total=30",
                                                 "schedule.milestones=[10,20]",
                                                 "schedule.warmup=4"])
    lrs = learning_rates(cfg, 25)
    assert lrs[:4] == pytest.approx([0.01] * 4)
    assert lrs[4:10] == pytest.approx([0.1] * 6)
    assert lrs[10:20] == pytest.approx([0.01] * 10)
    assert lrs[20:] == pytest.approx([0.001] * 5)


def test_linear_warmup():
    cfg = load_config(None, ["schedule.warmup=4", "schedule.warmup_kind=linear",
                             "schedule.warmup_factor=0.25"])
    lrs = learning_rates(cfg, 6)
    assert lrs == pytest.approx([0.025, 0.04375, 0.0625, 0.08125, 0.1, 0.1])


def test_unknown_keys_name_the_nearest_valid_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 0.1\n  weight_decy: 1e-4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'optim.weight_decy'; did you "
                                          r"mean 'optim.weight_decay'\?"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"unknown key 'data.aug.crp'.*'data.aug.crop'"):
        load_config(None, ["data.aug.crp=200"])
    with pytest.raises(ConfigError, match=r"unknown key 'trainer'"):
        load_config(None, ["trainer.bn_wd=0"])  # ffcv-imagenet's silently ignored key
    with pytest.raises(ConfigError, match=r"unknown key 'run.ckpt'.*'run.ckpt_every'"):
        load_config(None, ["run.ckpt=5"])


@pytest.mark.parametrize("override, message", [
    ("optim.lr=fast", r"optim.lr='fast': expected float, got str"),
    ("data.batch_size=12.5", r"data.batch_size=12.5: expected int, got float"),
    ("data.batch_size=true", r"data.batch_size=True: expected int, got bool"),
    ("data.channels_last=1", r"data.channels_last=1: expected bool, got int"),
    ("schedule.milestones=30", r"schedule.milestones=30: expected a list"),
    ("schedule.milestones=[30, x]", r"schedule.milestones\[1\]='x': expected int"),
    ("data.aug.mean=[0.5, 0.5]", r"data.aug.mean=\[0.5, 0.5\]: expected 3 values"),
    ("data.aug.flip_p=1.5", r"data.aug.flip_p=1.5: expected a probability"),
    ("data.aug.scale_min=500", r"data.aug.scale_min=500, scale_max=480"),
    ("model.name=null", r"model.name=None: expected str"),
    ("optim=0.1", r"optim=0.1: expected a mapping"),
])
def test_wrong_types_name_key_and_value(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("override, message", [
    ("data.backend=tfrecord", r"data.backend='tfrecord': expected one of native, ffcv, dali"),
    ("data.dataset=mnist", r"data.dataset='mnist'"),
    ("run.device=tpu", r"run.device='tpu': expected one of auto, cpu, cuda"),
    ("run.compile=fastest", r"run.compile='fastest': expected false or one of auto, default"),
    ("run.cuda_graph=maybe", r"run.cuda_graph='maybe': expected auto, true or false"),
    ("run.amp=fp8", r"run.amp='fp8'"),
    ("schedule.unit=step", r"schedule.unit='step': expected one of iter, epoch"),
    ("schedule.milestones=[60,30]", r"schedule.milestones=\[60, 30\]: must be increasing"),
    ("schedule.milestones=[200]", r"inside \(0, schedule.total=180\)"),
    ("optim.lr=-0.1", r"optim.lr=-0.1: must be >= 0"),
    ("run.log_every=0", r"run.log_every=0: must be >= 1"),
    ("data.batch_size=0", r"^override 'data.batch_size=0': data.batch_size=0: must be >= 1$"),
    ("data.eval_batch_size=-1", r"data.eval_batch_size=-1: must be >= 1"),
    ("data.aug.flip_p=2.0",
     r"^override 'data.aug.flip_p=2.0': data.aug.flip_p=2.0: expected a probability in \[0, 1\]$"),
])
def test_bad_values_name_key_and_value(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_overrides_are_parsed_as_yaml_and_typed():
    cfg = load_config("configs/resnet20.yaml", [
        "optim.weight_decay=5e-4", "optim.lr=1", "schedule.milestones=[100, 150]",
        "schedule.total=200", "schedule.unit=epoch", "run.patience=null", "run.compile=true",
        "data.aug.eval_scales=[224, 256]", "run.name=my run", "data.backend=synthetic"])
    assert cfg.optim.weight_decay == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.schedule.milestones == [100, 150] and cfg.run.patience is None
    assert cfg.run.compile == "default" and cfg.run.name == "my run"
    assert cfg.data.aug.eval_scales == (224, 256) and cfg.data.backend == "synthetic"
    assert load_config(None, ["run.compile=false"]).run.compile is False
    assert load_config(None, ["run.compile=reduce-overhead"]).run.compile == "reduce-overhead"
    with pytest.raises(ConfigError, match=r"override 'optim.lr': expected key.sub=value"):
        load_config(None, ["optim.lr"])
    assert parse_value("1e-4") == 1e-4 and parse_value("[30, 60]") == [30, 60]
    assert parse_value("e5") == "e5"


def test_base_files_merge_and_refuse_loops(tmp_path):
    (tmp_path / "a.yaml").write_text("optim:\n  lr: 0.5\n  momentum: 0.8\nrun:\n  seed: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\noptim:\n  lr: 0.2\n")
    cfg = load_config(tmp_path / "b.yaml", ["run.seed=4"])
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.run.seed) == (0.2, 0.8, 4)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "e.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_config(tmp_path / "e.yaml")
    (tmp_path / "f.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="f.yaml: expected a mapping"):
        load_config(tmp_path / "f.yaml")


def test_valid_keys_cover_every_section():
    keys = valid_keys()
    for key in ("data.backend", "data.aug.crop", "model.shortcut", "optim.lr",
                "schedule.milestones", "run.device", "run.compile", "run.ckpt_every"):
        assert key in keys

"""`tools/bench.py --smoke` (with `tools/gpu_check.py --smoke`'s arguments): every part runs, every
installed backend produces a number, and the results have their schema. Speed goals stay in the
benchmark itself, not here."""
from __future__ import annotations

import importlib.util
import json

import pytest

from fixtures import make_cifar_tar
from tools.bench import BACKENDS, main
from tools.benchmark.report import SCHEMA
from tools.gpu_check import bench_arguments


def installed(backend: str) -> bool:
    module = {"ffcv": "ffcv", "dali": "nvidia.dali"}.get(backend)
    return module is None or importlib.util.find_spec(module) is not None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_benchmark_writes_every_number_and_the_schema(tmp_path):
    from tools.converter.cli import convert

    tar = make_cifar_tar(tmp_path / "cifar.tar.gz", train_per_class=8, test_per_class=4)
    formats = ["arrays"] + (["ffcv"] if installed("ffcv") else [])
    cifar = convert("cifar10", src=tar["path"], out=tmp_path / "records", formats=formats,
                    allow_subset=True, quiet=True)
    out = tmp_path / "results"
    # the arguments `tools/gpu_check.py --smoke` gives it (its own test skips this part)
    arguments = bench_arguments(out, "smoke", tmp_path, cifar, None, smoke=True)
    result = main([*arguments, "--convert-photos", "64"])

    assert set(result) == set(SCHEMA)
    saved = json.loads((out / "smoke.json").read_text())
    assert set(saved) == set(SCHEMA) and saved["command"].startswith("python tools/bench.py")
    assert (out / "smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Loaders alone" in (out / "smoke.md").read_text()
    assert [d["name"] for d in result["datasets"]] == ["cifar10", "imagenet"]
    assert len(result["load_average"]["before"]) == 3

    expected = [b for b in BACKENDS if installed(b)]
    for dataset, splits in (("cifar10", ("train", "test")), ("imagenet", ("train", "val"))):
        for split in splits:
            got = {r["backend"]: r for r in result["loaders"]
                   if r["dataset"] == dataset and r["split"] == split}
            for backend in expected:
                assert got[backend].get("images_per_s", 0) > 0, got[backend]
                assert got[backend]["vs_torchvision"] > 0
        e2e = {r["backend"]: r for r in result["e2e"] if r["dataset"] == dataset}
        for backend in [*expected, "synthetic"]:
            assert e2e[backend].get("images_per_s", 0) > 0, e2e[backend]
            assert e2e[backend]["efficiency"] > 0 and 0 <= e2e[backend]["data_wait"] <= 1
    assert [r["dataset"] for r in result["trainer_vs_bare"]] == ["cifar10", "imagenet"]
    assert all(r["ratio"] > 0 for r in result["trainer_vs_bare"])
    assert all(r["speedup"] > 0 for r in result["layouts"])
    paper = result["paper"]
    assert [r["mode"] for r in paper] == ["eager"] and paper[0]["step_ms"] > 0
    assert paper[0]["projected_minutes"] > 64000 * paper[0]["step_ms"] / 60000
    assert "## Paper schedule, projected" in (out / "smoke.md").read_text()
    conversion = result["conversion"]
    assert conversion["reference"]["images_per_s"] > 0
    # the smoke set (48 train + 4 val) and the larger one (64 + 6), each in its own process
    assert [run["images"] for run in conversion["runs"]] == [52, 70]
    for run in conversion["runs"]:
        assert "webdataset" in run["stages"] and run["of_reference_x_cores"] > 0
        assert 0 <= run["import_seconds"] < run["seconds"]
        rss = run["peak_rss_mb"]
        assert 0 < rss["before_import"] <= rss["after_import"] <= rss["main"]
        assert rss["largest_worker"] > 0
        if installed("ffcv"):
            assert run["stages"]["ffcv"]["images_per_s"] > 0
    assert (tmp_path / "bench").is_dir()  # the work folder bench_arguments names
    assert not (tmp_path / "bench" / "records-64").exists()  # the larger set's records: deleted
    table = (out / "smoke.md").read_text().split("## ImageNet converter")[1]
    assert "| 52 |" in table and "| 70 |" in table and "Peak RSS" in table


def test_loader_stages_times_each_stage_and_the_loader_beside_a_model(tmp_path):
    """tools/benchmark/loader_stages.py on tiny ImageNet-format records, on the CPU (the same
    code the GPU machine runs): every stage timed, the loader alone and beside a model's steps,
    the model alone and beside the loader, in the JSON it writes."""
    import io

    import numpy as np
    from PIL import Image

    from fixtures import write_imagenet_records
    from tools.benchmark.loader_stages import main as stages_main

    rng = np.random.default_rng(0)
    samples = []
    for i in range(12):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
        samples.append((f"k{i:02d}", buffer.getvalue(), i % 3))
    root = write_imagenet_records(tmp_path, {"train": samples, "val": samples[:3]},
                                  shard_size=4, n_classes=3)
    out = tmp_path / "stages.json"
    result = stages_main(["--records", str(root), "--device", "cpu", "--batch", "4",
                          "--workers", "2", "--batches", "2", "--model", "resnet18",
                          "--loads", "1,0.5", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["model_step"] == "eager"  # on CUDA: the whole step one CUDA graph
    assert set(result["stage_ms_per_batch"]) == {"read", "decode", "augment"}
    assert all(ms > 0 for ms in result["stage_ms_per_batch"].values())
    assert result["stage_ms_per_image"]["decode"] == pytest.approx(
        result["stage_ms_per_batch"]["decode"] / 4, abs=1e-4)
    for key in ("loader_alone_img_s", "loader_beside_model_img_s", "model_alone_img_s",
                "model_beside_loader_img_s"):
        assert result[key] > 0, key
    assert result["hw_decoder_load"] == 0.65  # data.hw_decoder_load's default
    by_load = result["loader_alone_img_s_by_hw_decoder_load"]
    assert set(by_load) == {"1.0", "0.5"} and all(v > 0 for v in by_load.values())
    with pytest.raises(SystemExit):
        stages_main(["--records", str(root), "--device", "cpu", "--loads", "1,1.5"])
    with pytest.raises(SystemExit, match="3 train batches of 4; need 4"):
        stages_main(["--records", str(root), "--device", "cpu", "--batch", "4",
                     "--batches", "3", "--model", "resnet18"])

"""tools/convert.py under faults: signals and kill -9 mid-write, reruns, fewer formats, a full
disk. The converter runs as a child process (its own session, like a terminal job) on a tiny
CIFAR-format tarball; RESPIPE_CONVERT_TEST_FFCV_SLEEP slows FFCV's write phase so that a signal
lands while `ffcv/train.beton.tmp-*` exists."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures import ROOT, make_cifar_tar, subprocess_env
from pipelines import DataConfig, build_loader
from records import format as fmt
from records.check import verify
from tools.converter.cli import convert, main
from tools.converter.writers.atomic import OutputDir
from tools.converter.writers.ffcv import SLEEP_ENV


@pytest.fixture
def tiny_tar(tmp_path) -> Path:
    return make_cifar_tar(tmp_path / "c10.tar.gz", "cifar10", train_per_class=4,
                          test_per_class=2)["path"]


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (its new parent may never reap it)


def _start_converter(tar: Path, out: Path, formats: str = "arrays,ffcv"):
    """The converter, stopped in FFCV's write phase: (process, its worker pids)."""
    command = [sys.executable, str(ROOT / "tools/convert.py"), "cifar10", "--src", str(tar),
               "--out", str(out), "--formats", formats, "--workers", "2", "--allow-subset"]
    proc = subprocess.Popen(command, env={**subprocess_env(), SLEEP_ENV: "0.5"}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not list((out / "cifar10/ffcv").glob("train.beton.tmp-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the FFCV write phase never started"
        time.sleep(0.05)
    time.sleep(0.5)  # the workers are started and asleep in a sample
    workers = _descendants(proc.pid)
    assert len(workers) >= 2  # FFCV's two writer processes (and multiprocessing's tracker)
    return proc, workers


def _assert_gone(pids: set[int], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)], "processes outlived the converter"


@pytest.mark.ffcv
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT to the process group"])
def test_signal_mid_ffcv_write_leaves_nothing_running(how, tiny_tar, tmp_path):
    proc, workers = _start_converter(tiny_tar, tmp_path)
    if how == "SIGKILL":
        proc.kill()
    elif how == "SIGTERM":
        proc.terminate()  # the converter only, as `kill PID` does
    else:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: every process of the terminal job
    _, stderr = proc.communicate(timeout=15)  # exits within seconds
    _assert_gone(workers)
    if how == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:
        name = how.split()[0]
        assert proc.returncode == 128 + signal.Signals[name].value  # 143 / 130
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
        assert f"convert: stopped by {name}; finished outputs are kept" in stderr.splitlines()[-1]
        assert not list(tmp_path.rglob("*.tmp-*"))  # its temporaries removed
    assert not (tmp_path / "cifar10" / fmt.MANIFEST).exists()
    # The rerun is not refused (no worker or lock left behind), finishes and verifies.
    root = convert("cifar10", src=tiny_tar, out=tmp_path, workers=2, allow_subset=True,
                   quiet=True)
    assert verify(root) == []
    assert not list(tmp_path.rglob("*.tmp-*"))


@pytest.mark.ffcv
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_killed_rerun_keeps_the_complete_dataset_loadable(tiny_tar, tmp_path):
    root = convert("cifar10", src=tiny_tar, out=tmp_path, formats="arrays", allow_subset=True,
                   quiet=True)
    before = (root / fmt.MANIFEST).read_text()
    proc, workers = _start_converter(tiny_tar, tmp_path, formats="arrays,ffcv")  # adds ffcv
    proc.kill()
    proc.communicate(timeout=15)
    _assert_gone(workers)
    assert (root / fmt.MANIFEST).read_text() == before
    cfg = DataConfig(root=str(root), val_size=8, batch_size=8, num_workers=0)
    images, labels = next(iter(build_loader(cfg, "train", "cpu")))
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,)
    assert verify(root) == []


def test_rerun_removes_the_manifest_only_before_changing_a_file_it_lists(tmp_path):
    root = tmp_path / "ds"
    out = OutputDir(root, "fp")
    for rel, data in (("a/x.bin", b"one"), ("a/y.bin", b"two")):
        tmp = out.tmp_path(rel)
        tmp.write_bytes(data)
        out.commit(rel, tmp)
    files = {rel: out.note(rel)["sha256"] for rel in ("a/x.bin", "a/y.bin")}
    (root / fmt.MANIFEST).write_text(json.dumps({"files": files}))
    out.close()

    out = OutputDir(root, "fp")  # a rerun: the complete dataset's manifest stays
    assert (root / fmt.MANIFEST).is_file()
    tmp = out.tmp_path("a/x.bin")
    tmp.write_bytes(b"one")  # the same bytes again: still described by the manifest
    out.commit("a/x.bin", tmp)
    tmp = out.tmp_path("b/new.bin")
    tmp.write_bytes(b"new")  # a file the manifest does not list
    out.commit("b/new.bin", tmp)
    assert (root / fmt.MANIFEST).is_file()
    tmp = out.tmp_path("a/y.bin")
    tmp.write_bytes(b"changed")
    out.commit("a/y.bin", tmp)
    assert not (root / fmt.MANIFEST).exists()  # gone before the changed file took its name
    out.close()


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    out = OutputDir(tmp_path / "ds", "fp")
    with pytest.raises(RuntimeError, match=rf"being converted by another process \(pid "
                                           rf"{os.getpid()}\)"):
        OutputDir(tmp_path / "ds", "fp")
    out.close()
    code = ("import os, sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path; "
            "from tools.converter.writers.atomic import OutputDir; "
            "OutputDir(Path(sys.argv[1]), 'fp'); os.kill(os.getpid(), 9)")
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ds"), str(ROOT)])
    assert child.returncode == -signal.SIGKILL
    OutputDir(tmp_path / "ds", "fp").close()  # the dead holder's lock is gone


@pytest.mark.ffcv
@pytest.mark.timeout(120)
def test_fewer_formats_deletes_the_others_and_says_so(tiny_tar, tmp_path, capsys):
    args = ["cifar10", "--src", str(tiny_tar), "--out", str(tmp_path), "--allow-subset",
            "--workers", "2"]
    assert main(args) == 0
    assert (tmp_path / "cifar10/ffcv/train.beton").is_file()
    with pytest.warns(UserWarning, match=r"deleted the 'ffcv' records .*not in --formats"):
        assert main([*args, "--formats", "arrays"]) == 0
    assert not list((tmp_path / "cifar10/ffcv").glob("*"))
    assert fmt.read_manifest(tmp_path / "cifar10")["formats"] == ["arrays"]
    with pytest.raises(SystemExit):
        main(["cifar10", "--help"])
    assert "DELETES the records of the others" in " ".join(capsys.readouterr().out.split())


def test_disk_full_names_the_file_and_the_free_space(tiny_tar, tmp_path, capsys, monkeypatch):
    import tools.converter.writers.arrays

    def full(file, array):
        file.write(b"\x93NUMPY")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tools.converter.writers.arrays.np, "save", full)
    code = main(["cifar10", "--src", str(tiny_tar), "--out", str(tmp_path), "--formats",
                 "arrays", "--allow-subset"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{tmp_path / 'cifar10/arrays/train_images.npy'}: no space left on device (" in err
    assert "MiB free in" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.tmp-*"))
    assert not (tmp_path / "cifar10" / fmt.MANIFEST).exists()


@pytest.mark.ffcv
@pytest.mark.timeout(120)
def test_disk_full_in_an_ffcv_worker(tmp_path, monkeypatch):
    """FFCV's workers write the pages: a full disk there must not hang the writer."""
    import multiprocessing

    from ffcv.memory_allocator import MemoryAllocator

    from tools.converter.writers.ffcv import write_beton

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MemoryAllocator, "flush_page", full)  # forked workers inherit it
    samples = [(np.zeros((8, 8, 3), np.uint8), 0)] * 40
    out = OutputDir(tmp_path / "ds", "fp")
    path = tmp_path / "ds/ffcv/train.beton"
    with pytest.raises(OSError, match=rf"{path}: no space left on device \(.* MiB free"):
        write_beton(out, "ffcv/train.beton", samples, workers=2)
    out.close()
    assert not list(tmp_path.rglob("*.tmp-*")) and not path.exists()
    assert not multiprocessing.active_children()


def test_imagenet_class_with_no_decodable_image_is_an_error(tmp_path):
    from fixtures import make_imagenet_folder

    src = make_imagenet_folder(tmp_path / "src", classes=2, per_class=2, val_per_class=1,
                               oddities=False)
    broken = sorted((src / "train").iterdir())[1]
    for image in broken.iterdir():
        image.write_bytes(b"not a JPEG")
    names = "|".join(sorted(image.name for image in broken.iterdir()))
    with pytest.warns(UserWarning, match="skipped"), pytest.raises(
            ValueError, match=rf"train class {broken.name} has no decodable image: all 2 were "
                              rf"skipped \(.*({names}).*\); a class must keep at least one "
                              r"image: replace those files, or remove the class \(ImageNet: "
                              r"and pass --allow-subset\)"):
        convert("imagenet", src, tmp_path / "out", formats=["webdataset"], allow_subset=True,
                workers=1, quiet=True)
    assert not (tmp_path / "out/imagenet" / fmt.MANIFEST).exists()

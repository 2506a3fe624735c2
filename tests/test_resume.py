"""Resuming an interrupted run: the same numbers as a run never interrupted, in either phase and in a grid."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from recbole_cmr.compare import compare
from recbole_cmr.config import make_config
from recbole_cmr.quick_start import find_resumable_run, run
from recbole_cmr.utils import CrossMarketError, is_locked, read_csv_rows, release, try_lock


def acmr_dict(tiny_root, tmp_path, **overrides):
    return {"dataset": "tiny", "data_path": tiny_root, "checkpoint_dir": str(tmp_path / "saved"), "epochs": 4,
            "pretrain_max_epochs": 4, "stopping_step": 10, "eval_neg_num": 20, "state": "WARNING",
            "embedding_size": 8, "n_heads": 2, "n_layers": 1, **overrides}


def interrupt_at(phase, epoch):
    """A callback that stops the run after ``epoch`` of ``phase`` has been validated, as Ctrl-C would."""

    def callback(run_phase, run_epoch, score, passes):
        if (run_phase, run_epoch) == (phase, epoch):
            raise KeyboardInterrupt

    return callback


def interrupted(model, settings, phase, epoch, **kwargs):
    """Run until ``epoch`` of ``phase``; returns the unfinished folder the interrupt names."""
    with pytest.raises(KeyboardInterrupt) as raised:
        run(model, "bb", config_dict=settings, callback_fn=interrupt_at(phase, epoch), **kwargs)
    folder = raised.value.kept_run
    assert folder.endswith(".incomplete") and os.path.isdir(folder)
    return folder


@pytest.mark.parametrize("phase, epoch, resumed", [("pretrain", 2, ["pretrain at epoch 2"]),
                                                   ("finetune", 1, ["after pretrain", "finetune at epoch 1"])])
def test_an_interrupted_two_phase_run_resumes_to_the_same_numbers(tiny_root, tmp_path, phase, epoch, resumed):
    settings = acmr_dict(tiny_root, tmp_path)
    _, whole = run("ACMR", "bb", config_dict=settings, test_protocols=["paper"], saved=False)
    folder = interrupted("ACMR", settings, phase, epoch, test_protocols=["paper"])
    assert sorted(glob.glob(os.path.join(folder, "*.resume.pth")))  # the state before the interrupted epoch
    path, continued = run("ACMR", "bb", config_dict=settings, test_protocols=["paper"], resume=folder)
    assert continued == whole
    assert path == folder[:-len(".incomplete")] and not os.path.exists(folder)
    with open(os.path.join(path, "results.json")) as f:
        assert json.load(f)["resumed"] == resumed
    leftovers = [name for name in os.listdir(path) if name.endswith((".resume.pth", ".done.json", "resume.json"))]
    assert leftovers == [], "a finished run keeps no resume state"
    with open(os.path.join(path, "learning_curves.csv")) as f:
        assert len(f.read().splitlines()) == 1 + 4 + 4  # every epoch of both phases, none twice


def test_an_interrupted_one_phase_run_resumes_to_the_same_numbers(tiny_root, tmp_path):
    settings = {**acmr_dict(tiny_root, tmp_path), "epochs": 5, "embedding_size": 16}
    _, whole = run("BPR", "bb", config_dict=settings, saved=False)
    folder = interrupted("BPR", settings, "train", 3)
    _, continued = run("BPR", "bb", config_dict=settings, resume=folder)
    assert continued == whole


def test_resume_refuses_other_settings_and_folders_without_a_state(tiny_root, tmp_path):
    settings = acmr_dict(tiny_root, tmp_path)
    folder = interrupted("ACMR", settings, "pretrain", 2)
    with pytest.raises(CrossMarketError, match="started with other settings \\(learning_rate differs"):
        run("ACMR", "bb", config_dict={**settings, "learning_rate": 0.01}, resume=folder)
    with pytest.raises(CrossMarketError, match="started with other settings \\(test_protocols differs"):
        run("ACMR", "bb", config_dict=settings, test_protocols=["full"], resume=folder)
    assert os.path.isdir(folder), "a refused resume leaves the folder as it was"
    with pytest.raises(CrossMarketError, match="unfinished run folder \\(a name ending in .incomplete\\)"):
        run("ACMR", "bb", config_dict=settings, resume=str(tmp_path))
    states = glob.glob(os.path.join(folder, "*.resume.pth"))
    with open(states[0], "r+b") as f:  # a state cut short, as a full disk leaves it
        f.truncate(os.path.getsize(states[0]) // 2)
    with pytest.raises(CrossMarketError, match="cannot be resumed"):
        run("ACMR", "bb", config_dict=settings, resume=folder)
    assert os.path.isfile(states[0]), "a failed resume leaves the folder as it was"
    for state in states:
        os.remove(state)
    with pytest.raises(CrossMarketError, match="holds no training state to resume"):
        run("ACMR", "bb", config_dict=settings, resume=folder)
    # interrupted in its first epoch: nothing to continue from, nothing kept
    with pytest.raises(KeyboardInterrupt) as raised:
        run("ACMR", "bb", config_dict=settings, callback_fn=interrupt_at("pretrain", 0))
    assert getattr(raised.value, "kept_run", None) is None
    assert sorted(os.listdir(settings["checkpoint_dir"])) == [os.path.basename(folder)]


def test_a_run_folder_moved_with_its_clone_resumes_but_not_on_other_data(tiny_root, tmp_path):
    settings = acmr_dict(tiny_root, tmp_path)
    _, whole = run("ACMR", "bb", config_dict=settings, test_protocols=["paper"], saved=False)
    folder = interrupted("ACMR", settings, "pretrain", 2, test_protocols=["paper"])
    # a commit of the folder, cloned at another path: the data and the run folders live elsewhere now
    moved = {**settings, "data_path": str(tmp_path / "clone" / "atomic"),
             "checkpoint_dir": str(tmp_path / "clone" / "saved")}
    shutil.copytree(tiny_root, moved["data_path"])
    copy = shutil.copytree(folder, os.path.join(moved["checkpoint_dir"], os.path.basename(folder)))
    # the same path with one row fewer in the atomic file is other data
    other = {**moved, "data_path": str(tmp_path / "other")}
    shutil.copytree(tiny_root, other["data_path"])
    inter = glob.glob(os.path.join(other["data_path"], "**", "*.inter"), recursive=True)[0]
    with open(inter) as f:
        lines = f.read().splitlines(keepends=True)
    with open(inter, "w") as f:
        f.writelines(lines[:-1])
    assert find_resumable_run(make_config("ACMR", "bb", config_dict=other), test_protocols=["paper"]) is None
    with pytest.raises(CrossMarketError, match="started with other settings \\(data differs"):
        run("ACMR", "bb", config_dict=other, test_protocols=["paper"], resume=copy)
    assert find_resumable_run(make_config("ACMR", "bb", config_dict=moved), test_protocols=["paper"]) == copy
    _, continued = run("ACMR", "bb", config_dict=moved, test_protocols=["paper"], resume=copy)
    assert continued == whole


def test_a_grid_continues_its_killed_cell(tiny_root, tmp_path, capsys):
    settings = acmr_dict(tiny_root, tmp_path)
    clean = compare(["ACMR"], ["bb"], [1], "market", ["++"], str(tmp_path / "a" / "clean"), settings)
    grid = str(tmp_path / "b" / "grid")  # its own cache of pre-trainings (beside it), so it pre-trains again
    # the cell as the grid runs it, killed in its pre-training (the grid's cells are quiet runs in <grid>/runs)
    cell = {**settings, "eval_protocol": "market", "seed": 1, "checkpoint_dir": os.path.join(grid, "runs")}
    interrupted("ACMR", cell, "pretrain", 2, test_protocols=["market"])
    os.makedirs(os.path.join(grid, "runs", "ACMR-bb-market-seed1-19990101-000000.incomplete"))  # killed at once
    compare(["ACMR"], ["bb"], [1], "market", ["++"], grid, settings)
    printed = capsys.readouterr().out
    assert "removed 1 unfinished run folder(s)" in printed and "continuing the interrupted run" in printed
    with open(os.path.join(clean, "table.md")) as a, open(os.path.join(grid, "table.md")) as b:
        assert a.read().split("\n", 3)[3] == b.read().split("\n", 3)[3]  # wall times (line 3) differ
    assert not glob.glob(os.path.join(grid, "runs", "*.incomplete"))


def test_a_folder_another_process_runs_in_is_neither_resumed_nor_removed(tiny_root, tmp_path):
    settings = acmr_dict(tiny_root, tmp_path)
    folder = interrupted("ACMR", settings, "pretrain", 2)
    config = make_config("ACMR", "bb", config_dict=settings)
    assert find_resumable_run(config) == folder
    held = try_lock(folder)  # as the process running in it holds it
    try:
        assert find_resumable_run(config) is None
        with pytest.raises(CrossMarketError, match="being run by another process now"):
            run("ACMR", "bb", config_dict=settings, resume=folder)
        assert os.path.isdir(folder)
    finally:
        release(held)
    assert find_resumable_run(config) == folder
    gone = tmp_path / "renamed-by-its-finished-run.incomplete"
    assert not is_locked(str(gone)) and not gone.exists(), "asking about a folder that is gone creates nothing"
    runs = tmp_path / "grid" / "runs"  # a grid beside a run that has not finished its first epoch yet
    starting, killed = (runs / f"ACMR-bb-market-seed1-{name}.incomplete" for name in ("starting", "killed"))
    starting.mkdir(parents=True)
    killed.mkdir()
    held = try_lock(str(starting))
    try:
        compare(["Pop"], ["bb"], [1], "market", ["++"], str(tmp_path / "grid"), settings)
        assert starting.is_dir() and not killed.exists()
    finally:
        release(held)


def test_two_grids_fill_one_folder(tiny_root, tmp_path, capsys):
    """A second grid skips the cell the first is running, keeps the first's unfinished run folder, and both
    grids' cells end up in results.csv, whichever writes last."""
    settings = acmr_dict(tiny_root, tmp_path, pretrain_max_epochs=8, epochs=8)
    grid = str(tmp_path / "grid")
    first = subprocess.Popen([sys.executable, "-c", "import json, sys; from recbole_cmr.compare import compare; "
                              "compare(['ACMR'], ['bb'], [1], 'market', ['++'], sys.argv[1], json.loads(sys.argv[2]))",
                              grid, json.dumps(settings)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not [f for f in glob.glob(os.path.join(grid, "runs", "ACMR-*.incomplete")) if is_locked(f)] \
            and time.time() < deadline:
        assert first.poll() is None, first.stdout.read().decode()
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # the first grid is inside its cell, before a first epoch has ended
    try:
        compare(["ACMR", "Pop"], ["bb"], [1], "market", ["++"], grid, settings)
    finally:
        first.send_signal(signal.SIGCONT)
    assert "skipped ACMR on BB seed 1: another process is running it" in capsys.readouterr().out
    assert {r["label"] for r in read_csv_rows(os.path.join(grid, "results.csv"))} == {"Pop (++)"}
    assert first.wait(timeout=300) == 0, first.stdout.read().decode()
    assert sorted({r["label"] for r in read_csv_rows(os.path.join(grid, "results.csv"))}) == ["ACMR", "Pop (++)"]
    assert not glob.glob(os.path.join(grid, "runs", "*.incomplete"))
    compare(["ACMR", "Pop"], ["bb"], [1], "market", ["++"], grid, settings)
    assert "running" not in capsys.readouterr().out, "both grids' cells are recorded: nothing runs again"

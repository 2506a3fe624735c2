"""Ray Tune searches on a real local Ray instance and a real two-node Ray cluster."""

import csv
import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import ray
import yaml

from recbole_cmr.quick_start import run
from recbole_cmr.tune import SearchClock, tune_model
from recbole_cmr.utils import CrossMarketError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: ``fixed`` for Pop and EASE searches: write_search's default holds ACMR's settings, which those models refuse.
PLAIN_FIXED = {"epochs": 1, "eval_neg_num": 20}


def write_search(tmp_path, space, **extra):
    path = tmp_path / "search.yaml"
    search = {"metric": "NDCG@5", "num_samples": 1, "scheduler": "asha", "grace_period": 1,
              "fixed": {"epochs": 2, "embedding_size": 8, "n_heads": 2, "n_layers": 1, "eval_neg_num": 20},
              "space": space}
    search.update(extra)
    path.write_text(yaml.safe_dump(search))
    return str(path)


def tiny_dict(tiny_root, tmp_path):
    return {"dataset": "tiny", "data_path": tiny_root, "checkpoint_dir": str(tmp_path / "saved")}


@pytest.mark.parametrize("space, message", [
    ({"learning_rate": {"normal": [0, 1]}}, "unknown distribution 'normal'"),
    ({"n_layers": {"choice": []}}, "choice needs a non-empty list"),
    ({"learning_rate": {"uniform": [0.1, 0.01]}}, "needs low < high"),
    ({"learning_rate": {"uniform": [False, True]}}, "uniform needs \\[low, high\\] \\(two numbers\\)"),
    ({"not_a_parameter": {"choice": [1, 2]}}, "space has unknown config key 'not_a_parameter'"),
    ({"k": {"choice": [5, 10]}}, "space: --k is a setting of .*ItemKNN.*, not of ACMR"),
    ({"eval_args": {"choice": [{"order": "TO"}]}}, "space: eval_args is set by recbole-cmr"),
])
def test_bad_search_space_fails_before_any_trial(tiny_root, tmp_path, space, message):
    with pytest.raises(CrossMarketError, match=message):
        tune_model("ACMR", "bb", write_search(tmp_path, space), config_dict=tiny_dict(tiny_root, tmp_path))
    assert not ray.is_initialized()
    assert not (tmp_path / "saved").exists()


def test_a_metric_the_trials_do_not_report_fails_before_any_trial(tiny_root, tmp_path):
    search = write_search(tmp_path, {"n_layers": {"choice": [1, 2]}}, metric="MRR@5")
    with pytest.raises(CrossMarketError, match="metric must be one of RECALL@5, .*got 'MRR@5'"):
        tune_model("ACMR", "bb", search, config_dict=tiny_dict(tiny_root, tmp_path))
    assert not ray.is_initialized()
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize("settings, message", [
    ({"grace_period": 0}, "grace_period must be a number > 0"),
    ({"num_samples": True}, "num_samples must be an integer >= 1, got True"),  # yaml's true is no count
    ({"fixed": ["epochs", 1]}, "fixed must map config keys to values"),
    ({"fixed": {"epochz": 1}}, "fixed has unknown config key 'epochz' \\(did you mean epochs\\?\\)"),
    ({"fixed": {"reg_weight": 10.0}}, "fixed: --reg_weight is a setting of .*, not of ACMR"),
    ({"resources_per_trial": {"cpu": 0}}, "resources_per_trial must be"),
    ({"resources_per_trial": {"cpus": 1}}, "resources_per_trial must be"),
    ({"resources_per_trial": {"cpu": 10_000}}, "asks for 10000 CPUs per trial; this machine has"),  # Ray would wait
])
def test_bad_search_settings_fail_before_ray(tiny_root, tmp_path, settings, message):
    search = write_search(tmp_path, {"n_layers": {"choice": [1, 2]}}, **settings)
    with pytest.raises(CrossMarketError, match=message):
        tune_model("ACMR", "bb", search, config_dict=tiny_dict(tiny_root, tmp_path))
    assert not ray.is_initialized()
    assert not (tmp_path / "saved").exists()


def test_an_unknown_market_fails_before_ray_and_leaves_no_search_folder(tiny_root, tmp_path):
    search = write_search(tmp_path, {"reg_weight": {"grid": [1.0, 5000.0]}}, fixed=PLAIN_FIXED)
    out = tmp_path / "search"
    message = "unknown market 'zz'; the dataset 'tiny' has markets: aa, bb, cc"
    with pytest.raises(CrossMarketError, match=message):
        tune_model("EASE", "zz", search, config_dict=tiny_dict(tiny_root, tmp_path), out_dir=str(out))
    assert not ray.is_initialized()
    assert not out.exists() and not (tmp_path / "saved").exists()
    cli = subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_cmr.py"), "--model=EASE", "--market=zz",
                          f"--tune={search}", f"--out={out}", "--dataset=tiny", f"--data_path={tiny_root}",
                          f"--checkpoint_dir={tmp_path / 'saved'}"], capture_output=True, text=True, cwd=tmp_path)
    assert (cli.returncode, cli.stderr.splitlines()) == (2, [f"error: {message}"])
    assert not out.exists() and not (tmp_path / "saved").exists()


def test_a_search_stopped_before_ray_saved_its_state_starts_again_in_its_folder(tmp_path):
    from recbole_cmr.tune import check_search_folder

    out, settings = str(tmp_path / "search"), {"model": "Pop", "market": "bb"}
    assert check_search_folder(out, settings) is False
    assert check_search_folder(out, settings) is False  # Ctrl-C while Ray started: nothing to restore
    os.makedirs(os.path.join(out, "ray"))
    for name in ("tuner.pkl", "experiment_state-2026-01-01_00-00-00.json"):  # what Ray saves once it runs
        open(os.path.join(out, "ray", name), "w").close()
    assert check_search_folder(out, settings) is True
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(CrossMarketError, match="is a file; a search writes a folder"):
        check_search_folder(str(tmp_path / "a_file"), settings)


def trial_result(position, config=None, done=False, error=None, history=None):
    """Ray's own ``Result`` of a trial, as its ResultGrid gives it; one that never reported has no metrics, so no
    config."""
    from ray.air import Result

    metrics = {"trial_id": f"2105e_{position:05d}", "done": done, "config": config} if config else None
    return Result(metrics=metrics, checkpoint=None, error=error, metrics_dataframe=history)


def test_an_interrupted_search_is_told_from_a_finished_one_and_unreported_trials_are_summarised(tmp_path):
    from recbole_cmr.tune import interrupted, summarize

    history = pd.DataFrame([{"phase": "train", "epoch": 0, "valid_score": 0.2, "time_total_s": 1.0, "cpu_s": 0.9},
                            {"phase": "done", "epoch": -1, "valid_score": 0.2, "time_total_s": 1.5, "cpu_s": 1.2}])
    finished = trial_result(0, {"learning_rate": 0.001}, done=True, history=history)
    stopped = trial_result(1, {"learning_rate": 0.01}, done=True, history=history.iloc[:1])  # by the scheduler
    failed = trial_result(2, {"learning_rate": 0.1}, error=RuntimeError("failed"))
    running = trial_result(3, {"learning_rate": 0.02}, history=history.iloc[:1])  # Ray marks it terminated at Ctrl-C
    unreported = trial_result(4)
    assert not interrupted([finished, stopped, failed], 3)
    assert interrupted([finished, stopped, failed], 4)  # a trial still to be sampled
    assert interrupted([finished, running], 2) and interrupted([finished, unreported], 2)
    search = {"space": {"learning_rate": {"choice": [0.001, 0.01]}}, "fixed": {}, "metric": "NDCG@5",
              "scheduler": "fifo", "resources_per_trial": {"cpu": 1}}
    (tmp_path / "search_seconds.txt").write_text("3.0\n")
    summarize([finished, unreported], search, [{"learning_rate": 0.001}], "Pop", "bb", [],
              {"eval_protocol": "market"}, str(tmp_path), test_best=False)
    trials = read_csv(tmp_path / "trials.csv")
    assert [(t["trial"], t["defaults"], t["learning_rate"], t["stopped_early"]) for t in trials] == [
        ("0", "True", "0.001", "False"), ("1", "False", "", "True")]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_local_search_selects_on_valid_and_writes_a_usable_best_yaml(tiny_root, tmp_path, capsys):
    search = write_search(tmp_path, {"learning_rate": {"grid": [0.001, 0.01]}, "n_layers": {"choice": [1, 2]}})
    out = tune_model("ACMR", "bb", search, config_dict=tiny_dict(tiny_root, tmp_path))
    progress = [line for line in capsys.readouterr().out.splitlines() if " trials, " in line]
    assert [line.split()[0] for line in progress] == ["[1/3", "[2/3", "[3/3"]  # a plain line per trial
    trials = read_csv(os.path.join(out, "trials.csv"))
    epochs = read_csv(os.path.join(out, "epochs.csv"))
    assert len(trials) == 3, "the yaml defaults, then one sample per grid value"
    defaults = [t for t in trials if t["defaults"] == "True"]  # a sample may draw the defaults again
    assert "0" in [t["trial"] for t in defaults]
    # ACMR.yaml's learning rate; the search file's fixed n_layers replaces the yaml's
    assert {(float(t["learning_rate"]), int(t["n_layers"])) for t in defaults} == {(0.001, 1)}
    assert all(t["stopped_early"] == "False" for t in defaults)
    assert json.load(open(os.path.join(out, "best_test.json")))["defaults_valid"] == float(defaults[0]["valid_score"])
    assert {e["phase"] for e in epochs} == {"pretrain", "finetune"}, "both phases report every epoch"
    assert all("test" not in key for key in list(trials[0]) + list(epochs[0])), "no test metric during the search"
    best = trials[0]
    assert float(best["valid_score"]) == max(float(t["valid_score"]) for t in trials if t["stopped_early"] == "False")
    # a trial counts by the model its run selects: ACMR's best fine-tuning epoch, not a pre-training one
    finetune_scores = [float(e["valid_score"]) for e in epochs
                       if e["trial"] == best["trial"] and e["phase"] == "finetune"]
    assert float(best["valid_score"]) == pytest.approx(max(finetune_scores))
    for trial in trials:  # numbered as Ray names the trial's folder, which a resumed search keeps
        folder, = glob.glob(os.path.join(out, "ray", f"*_{int(trial['trial']):05d}_*"))
        assert json.load(open(os.path.join(folder, "params.json")))["learning_rate"] == float(trial["learning_rate"])
    best_yaml = yaml.safe_load(open(os.path.join(out, "best.yaml")))
    assert best_yaml["learning_rate"] == float(best["learning_rate"])
    assert best_yaml["n_layers"] == int(best["n_layers"])
    result = json.load(open(os.path.join(out, "best_test.json")))
    assert {r["split"] for r in result["rows"]} == {"valid", "test"}
    # the best configuration runs through the main command
    cli = subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_cmr.py"), "--model=ACMR", "--market=BB",
                          f"--config_files={os.path.join(out, 'best.yaml')}", "--dataset=tiny",
                          f"--data_path={tiny_root}", f"--checkpoint_dir={tmp_path / 'cli'}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "protocol: market" in cli.stdout


def test_search_on_a_two_node_cluster(tiny_root, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        search = write_search(tmp_path, {"learning_rate": {"grid": [0.001, 0.01]}}, scheduler="fifo",
                              fixed=PLAIN_FIXED)
        out = tune_model("Pop", "bb", search, config_dict=tiny_dict(tiny_root, tmp_path),
                         ray_address=cluster.address)
        trials = read_csv(os.path.join(out, "trials.csv"))
        assert len(trials) == 3 and not any(t["error"] for t in trials)  # the defaults and the grid
    finally:
        cluster.shutdown()


@pytest.mark.parametrize("search_file", sorted(os.listdir(os.path.join(REPO, "props", "tune"))))
def test_shipped_search_files_fit_their_model(tiny_root, tmp_path, search_file):
    from recbole_cmr.tune import check_parameters, load_search

    search = load_search(os.path.join(REPO, "props", "tune", search_file))
    assert search["model"], "every shipped search file names its model"
    check_parameters(search, search["model"], "bb", None, tiny_dict(tiny_root, tmp_path))


def test_an_interrupted_search_resumes_in_its_folder_and_other_settings_are_refused(tiny_root, tmp_path):
    search = write_search(tmp_path, {"learning_rate": {"grid": [0.001, 0.01]}}, scheduler="fifo", fixed=PLAIN_FIXED)
    out = str(tmp_path / "search")
    tune_model("Pop", "bb", search, config_dict=tiny_dict(tiny_root, tmp_path), out_dir=out)
    first = read_csv(os.path.join(out, "trials.csv"))
    with pytest.raises(CrossMarketError, match="holds a finished search"):
        tune_model("Pop", "bb", search, config_dict=tiny_dict(tiny_root, tmp_path), out_dir=out)
    for name in ("summary.md", "trials.csv", "best.yaml", "best_test.json"):  # as if stopped before summarising
        os.remove(os.path.join(out, name))
    with pytest.raises(CrossMarketError, match="holds a search with other settings"):
        tune_model("Pop", "bb", search, config_dict={**tiny_dict(tiny_root, tmp_path), "weight_decay": 0.01},
                   out_dir=out)
    recorded = open(os.path.join(out, "search.json")).read()
    open(os.path.join(out, "search.json"), "w").write("{damaged")
    with pytest.raises(CrossMarketError, match="search.json cannot be read"):
        tune_model("Pop", "bb", search, config_dict=tiny_dict(tiny_root, tmp_path), out_dir=out)
    open(os.path.join(out, "search.json"), "w").write(recorded)
    tune_model("Pop", "bb", search, config_dict=tiny_dict(tiny_root, tmp_path), out_dir=out)
    again = read_csv(os.path.join(out, "trials.csv"))
    assert sorted((t["learning_rate"], t["valid_score"]) for t in again) == sorted(
        (t["learning_rate"], t["valid_score"]) for t in first)
    with pytest.raises(CrossMarketError, match="written for ACMR, not EASE"):
        tune_model("EASE", "bb", os.path.join(REPO, "props", "tune", "acmr.yaml"),
                   config_dict=tiny_dict(tiny_root, tmp_path))


def test_a_tuned_comparison_runs_each_cell_with_its_searchs_selection(tiny_root, tmp_path):
    from recbole_cmr.compare import compare
    from recbole_cmr.tune import search_name

    tuned = tmp_path / "tuned"
    search = write_search(tmp_path, {"reg_weight": {"grid": [1.0, 5000.0]}}, scheduler="fifo", fixed={"epochs": 1})
    out = tune_model("EASE", "bb", search, config_dict={**tiny_dict(tiny_root, tmp_path), "train_markets": "target",
                                                        "eval_neg_num": 20},
                     out_dir=str(tuned / search_name("EASE", "single", "bb")), test_best=False)
    info = json.load(open(os.path.join(out, "best_test.json")))
    assert info["rows"] == [] and info["search_wall_s"] > 0 and info["trial_cpu_s"] > 0
    selected = yaml.safe_load(open(os.path.join(out, "best.yaml")))["reg_weight"]
    grid_dict = {"dataset": "tiny", "data_path": tiny_root, "eval_neg_num": 20}
    with pytest.raises(CrossMarketError, match="no finished search for 1 cell"):
        compare(["EASE"], ["bb"], [1], "market", ["++"], str(tmp_path / "cmp"), grid_dict, tuned_dir=str(tuned))
    with pytest.raises(CrossMarketError, match="scope 'searched' takes train_markets from tuned"):
        compare(["EASE"], ["bb"], [1], "market", ["searched"], str(tmp_path / "cmp"), grid_dict)
    cmp = compare(["EASE", "Pop"], ["bb"], [1], "market", ["single"], str(tmp_path / "cmp"), grid_dict,
                  tuned_dir=str(tuned))  # Pop has nothing to tune: it runs beside the tuned models
    runs = {name.split("-")[0]: name for name in os.listdir(os.path.join(cmp, "runs"))}
    config = json.load(open(os.path.join(cmp, "runs", runs["EASE"], "config.json")))
    assert config["reg_weight"] == selected and config["train_markets"] == "target"
    assert sorted(runs) == ["EASE", "Pop"]
    with pytest.raises(CrossMarketError, match="the tuned configurations"):
        compare(["EASE"], ["bb"], [2], "market", ["single"], cmp, grid_dict)


def test_asha_never_stops_the_defaults_trial_but_compares_the_others_with_it():
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from recbole_cmr.tune import defaults_keeping_asha

    decisions = {}
    for name, scheduler in (("plain", ASHAScheduler(time_attr="data_passes", grace_period=1, max_t=10_000)),
                            ("keeping", defaults_keeping_asha([{"learning_rate": 0.001}], grace_period=1))):
        scheduler.set_search_properties("valid_score", "max")
        trials = {lr: Trial("__fake", config={"learning_rate": lr}, stub=True) for lr in (0.01, 0.001, 0.0001)}
        for trial in trials.values():
            scheduler.on_trial_add(None, trial)
        decisions[name] = {lr: scheduler.on_trial_result(None, trial, {"valid_score": score, "data_passes": 1.0})
                           for (lr, trial), score in zip(trials.items(), (0.5, 0.1, 0.1))}
    assert decisions["plain"] == {0.01: TrialScheduler.CONTINUE, 0.001: TrialScheduler.STOP,
                                  0.0001: TrialScheduler.STOP}
    assert decisions["keeping"] == {**decisions["plain"], 0.001: TrialScheduler.CONTINUE}


def test_the_same_search_samples_the_same_configurations_after_the_defaults_of_each_scope(tiny_root, tmp_path):
    search = write_search(tmp_path, {"learning_rate": {"loguniform": [0.0001, 0.01]},
                                     "train_markets": {"choice": ["target", "all"]}}, scheduler="fifo", num_samples=2,
                          fixed=PLAIN_FIXED)
    sampled = []
    for attempt in ("first", "second"):
        out = tune_model("Pop", "bb", search, config_dict=tiny_dict(tiny_root, tmp_path),
                         out_dir=str(tmp_path / attempt), test_best=False)
        trials = sorted(read_csv(os.path.join(out, "trials.csv")), key=lambda t: int(t["trial"]))
        sampled.append([(t["defaults"], t["train_markets"], t["learning_rate"]) for t in trials])
    assert sampled[0] == sampled[1]
    # a searched scope replaces the defaults of each scope: both run first, with the yaml's learning rate
    assert sampled[0][:2] == [("True", "target", "0.001"), ("True", "all", "0.001")]
    assert [d for d, _, _ in sampled[0][2:]] == ["False", "False"]
    assert len({lr for _, _, lr in sampled[0]}) == 3


def test_the_search_clock_is_on_disk_while_the_search_runs(tmp_path):
    (tmp_path / "search_seconds.txt").write_text("100.0\n")  # an earlier session of the same search
    with SearchClock(str(tmp_path), every_s=0.05):
        time.sleep(0.3)
        during = float((tmp_path / "search_seconds.txt").read_text())  # what a killed session leaves
    after = float((tmp_path / "search_seconds.txt").read_text())
    assert 100.0 < during <= after and after >= 100.3


def test_trials_are_measured_in_passes_over_every_markets_training_rows(tiny_root, tmp_path):
    passes = {}
    for scope in ("all", "target"):
        reports = []
        settings = {**tiny_dict(tiny_root, tmp_path), "epochs": 3, "train_markets": scope, "eval_neg_num": 20,
                    "state": "WARNING"}
        run("BPR", "bb", config_dict=settings, test_protocols=[], saved=False,
            callback_fn=lambda phase, epoch, score, data_passes: reports.append(data_passes))
        passes[scope] = reports
    assert passes["all"] == pytest.approx([1.0, 2.0, 3.0])  # an epoch over all markets is one pass
    share = passes["target"][0]
    assert 0 < share < 0.5 and passes["target"] == pytest.approx([share, 2 * share, 3 * share])
    # FOREC's pre-training on the other markets is not validated: its fixed length is not on the clock
    reports = []
    forec = {**settings, "epochs": 2, "pretrain_max_epochs": 3, "train_markets": "source"}
    run("FOREC", "bb", config_dict=forec, test_protocols=[],
        saved=False, callback_fn=lambda phase, epoch, score, data_passes: reports.append((phase, data_passes)))
    assert [phase for phase, _ in reports] == ["finetune", "finetune"]
    assert [p for _, p in reports] == pytest.approx([share, 2 * share])


def kill_session(leader):
    """SIGKILL every process of ``leader``'s session (the search and the Ray it started), as a machine that goes
    away would."""
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            if os.getsid(pid) == leader:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_a_killed_search_continues_its_unfinished_trials_from_their_last_epoch(tiny_root, tmp_path):
    fixed = {"epochs": 60, "pretrain_max_epochs": 60, "stopping_step": 60, "embedding_size": 8, "n_heads": 2,
             "n_layers": 1, "eval_neg_num": 20}
    search = write_search(tmp_path, {"learning_rate": {"choice": [0.003]}}, scheduler="fifo", fixed=fixed)
    script = ("import sys; from recbole_cmr.tune import tune_model; tune_model('ACMR', 'bb', sys.argv[1], "
              "config_dict={'dataset': 'tiny', 'data_path': sys.argv[2], 'checkpoint_dir': sys.argv[3]}, "
              "out_dir=sys.argv[4], test_best=False)")
    killed, clean = str(tmp_path / "killed"), str(tmp_path / "clean")
    command = [sys.executable, "-c", script, search, tiny_root, str(tmp_path / "saved")]
    proc = subprocess.Popen([*command, killed], cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(glob.glob(os.path.join(killed, "ray", "*", "checkpoints", "*",
                                                                    "pretrain.resume.pth"))) < 2:
            time.sleep(0.2)
    finally:
        kill_session(proc.pid)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "killed while its trials were training"
    for out in (killed, clean):
        subprocess.run([*command, out], cwd=REPO, check=True, capture_output=True, timeout=600)

    def scores(out):
        return sorted((t["trial"], t["valid_score"], t["resumed"]) for t in read_csv(os.path.join(out, "trials.csv")))

    assert [trial[:2] for trial in scores(killed)] == [trial[:2] for trial in scores(clean)]
    assert [resumed for *_, resumed in scores(killed)] == ["True", "True"]
    assert [resumed for *_, resumed in scores(clean)] == ["False", "False"]
    # a finished trial keeps no run folder: Ray holds its results
    assert not glob.glob(os.path.join(killed, "ray", "*", "checkpoints", "*"))


def finished_trials(out):
    """Trials of a search folder that made their last report (the run's selection), by the results Ray wrote."""
    return [path for path in glob.glob(os.path.join(out, "ray", "trainable_*", "result.json"))
            if '"phase": "done"' in open(path).read()]


def trials_in_state(out, status):
    """How many trials Ray's newest saved state of a search gives ``status``: what a resumed search restores."""
    states = sorted(glob.glob(os.path.join(out, "ray", "experiment_state-*.json")))
    return len(re.findall(rf"status\W+{status}\b", open(states[-1]).read())) if states else 0


def copy_as_git_keeps(search_dir, to):
    """Copy a search folder the way a commit and a clean clone carry it: only the files git does not ignore, as if the
    folder were a search of the tuned comparison in ``bench/results/tune/``."""
    for path in glob.glob(os.path.join(search_dir, "**", "*"), recursive=True):
        relative = os.path.relpath(path, search_dir)
        as_committed = os.path.join("bench", "results", "tune", "a-search", relative)
        if os.path.isfile(path) and subprocess.run(["git", "check-ignore", "--no-index", "-q", as_committed],
                                                   cwd=REPO).returncode == 1:
            os.makedirs(os.path.dirname(os.path.join(to, relative)), exist_ok=True)
            shutil.copy2(path, os.path.join(to, relative))


def test_ctrl_c_during_a_search_is_one_line_and_the_same_command_resumes_it_from_a_clean_clone(tiny_root, tmp_path):
    search = write_search(tmp_path, {"reg_weight": {"loguniform": [1.0, 10000.0]}}, scheduler="fifo", num_samples=6,
                          fixed=PLAIN_FIXED)
    out = tmp_path / "clone" / "search"

    def command(out):
        return [sys.executable, os.path.join(REPO, "run_recbole_cmr.py"), "--model=EASE", "--market=bb",
                f"--tune={search}", f"--out={out}", "--dataset=tiny", f"--data_path={tiny_root}",
                f"--checkpoint_dir={tmp_path / 'saved'}"]

    proc = subprocess.Popen(command(out), cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(finished_trials(out)) < 2:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: to the command's whole process group
        _, stderr = proc.communicate(timeout=240)
    finally:
        kill_session(proc.pid)
        proc.wait()
    lines = stderr.splitlines()
    assert proc.returncode == 130, stderr[-3000:]
    assert [line for line in lines if "\tINFO " not in line] == [lines[-1]], stderr[-3000:]  # Ray's start-up lines
    assert lines[-1] == f"error: interrupted; the same --tune command resumes the search in {out}"
    assert not (out / "summary.md").exists()
    # committed and cloned elsewhere: the trials' run folders and event files stay behind, Ray's state travels
    cloned = tmp_path / "another-clone" / "search"
    copy_as_git_keeps(out, cloned)
    shutil.rmtree(out)
    # Ray marks a trial finished a moment after its last report; its state, saved at the interruption, says which
    finished = trials_in_state(cloned, "TERMINATED")
    assert 0 < finished <= len(finished_trials(cloned)) < 7
    assert not glob.glob(os.path.join(cloned, "ray", "*", "checkpoints"))
    again = subprocess.run(command(cloned), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming the search in {cloned}" in again.stdout
    trials = read_csv(cloned / "trials.csv")
    assert len(trials) == 7 and not any(t["error"] for t in trials)  # the defaults and the six samples
    # the trials finished before the interruption are kept, not run again
    assert len(re.findall(r"^\[\d+/7 trials", again.stdout, flags=re.M)) == 7 - finished, again.stdout


def load_bench(name):
    sys.path.insert(0, os.path.join(REPO, "bench"))  # as running the script does: benches import each other
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["--markets", "IN,XX"], "unknown market 'xx'; the dataset 'xmarket' has markets: ca, de, fr, in, jp, mx, uk"),
    (["--markets", "IN", "--models", "EASE,Nope"],
     "--models: Nope has no search file in props/tune/ .*; models with a search file: ACMR, BPR, .*EASE"),
    (["--markets", "IN", "--models", "Pop"], "--models: Pop has nothing to tune"),
    (["--markets", "IN,in"], "--markets lists in more than once"),
    (["--rerun", "--seeds", "abc"], "--seeds must be comma separated integers, got 'abc'"),
    (["--seeds", "2020"], "--seeds is for --rerun"),
    (["--jobs", "2"], "--jobs is for --rerun"),
    (["--rerun", "--jobs", "0"], "--jobs must be an integer >= 1, got '0'"),
])
def test_the_benchmark_searches_refuse_bad_arguments_in_one_line_before_ray(tmp_path, capsys, monkeypatch, argv,
                                                                             message):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # the script trims the command line RecBole would read
    argv = [*argv, *([] if "--models" in argv else ["--models", "EASE"]), "--results", str(tmp_path / "results")]
    assert load_bench("tune_markets").main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and re.match(f"error: {message}", err[0]), err
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists()


def test_a_resumed_searchs_progress_lines_count_minutes_from_the_resuming_command():
    import cloudpickle

    from recbole_cmr.tune import _trial_lines

    lines = _trial_lines(3)
    lines.setup()
    lines.started -= 3600  # an hour into the first session, Ray pickles the callback with the search's state
    restored = cloudpickle.loads(cloudpickle.dumps(lines))
    restored.setup()  # as Ray calls it when the same command resumes the search
    assert time.time() - restored.started < 60


@pytest.mark.parametrize("bench", [["compare_markets"], ["acmr_cold_start"], ["acmr_studies", "ablation"]])
@pytest.mark.parametrize("argv, message", [
    (["--markets", "IN,XX"], "unknown market 'xx'; the dataset 'xmarket' has markets: ca, de, fr, in, jp, mx, uk"),
    (["--markets", "IN,in"], "--markets lists in more than once; give each once"),
    (["--markets", ""], "--markets has an empty name in ''; separate the names by single commas"),
    (["--seeds", "2020,abc"], "--seeds must be comma separated integers, got '2020,abc'"),
])
def test_the_benchmark_grids_refuse_bad_arguments_in_one_line_before_any_run(tmp_path, capsys, monkeypatch, bench,
                                                                              argv, message):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    name, *study = bench
    assert load_bench(name).main([*study, *argv, "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {message}"]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv, message", [
    (["ablation", "--points", "w/o fine-tuning,w/o pre-training"],
     "--points: unknown ablation point(s) 'w/o pre-training'; the points are: w/o market embedding, "),
    (["sensitivity", "--points", "d=16,d=16"], "--points lists d=16 more than once; give each once"),
])
def test_the_acmr_studies_refuse_an_unknown_or_repeated_point_before_any_run(tmp_path, capsys, monkeypatch, argv,
                                                                            message):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    assert load_bench("acmr_studies").main([*argv, "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                 (signal.SIGTERM, 143, "terminated")])
def test_a_benchmark_stopped_by_ctrl_c_or_a_scheduler_says_so_in_one_line(capsys, signum, code, word):
    def body(args):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the signal arrives first

    bench = load_bench("compare_markets")
    on_sigterm = signal.getsignal(signal.SIGTERM)
    on_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C
    try:
        assert bench.bench_command(body, None) == code
    finally:
        signal.signal(signal.SIGINT, on_sigint)
    assert capsys.readouterr().err == f"error: {word}; the same command continues from the finished cells\n"
    assert signal.getsignal(signal.SIGTERM) is on_sigterm

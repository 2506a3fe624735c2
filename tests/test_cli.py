"""The command line: flags, RecBole-style overrides and its one-line errors."""

import csv
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from recbole_cmr.utils import read_csv_rows  # noqa: E402
from run_recbole_cmr import main  # noqa: E402


@pytest.mark.parametrize("args, message", [
    (["--model=ACMRR"], "unknown model 'ACMRR'. Did you mean: ACMR"),
    (["--market=XX"], "unknown market 'xx'; the dataset 'xmarket' has markets: ca, de, fr, in, jp, mx, uk"),
    (["--protocol=random"], "unknown eval_protocol 'random'"),
    (["--protocl=paper"], "unknown argument '--protocl=paper'. Did you mean: --protocol"),
    (["--test-protocols=paper"], "Did you mean: --test_protocols"),
    (["--compare", "--seed=7"], "--compare sets --seed (use --seeds) per cell"),
    (["--target_market=jp"], "give the target market as --market"),
    (["--config_files=missing.yaml", "--my_key=1"], "config file missing.yaml does not exist"),
    (["--compare", "--seeds=1,x"], "--seeds must be comma separated integers, got '1,x'"),
    (["--model=Pop", "--phase=pretrain"], "Pop trains in one phase"),
    (["--phase=pretrain", "--pretrained=pretrain.pth"], "--pretrained is a checkpoint to fine-tune from"),
    (["--phase=finetune"], "--phase=finetune needs --pretrained=PATH"),
    (["--compare", "--phase=pretrain"], "--phase is for a plain run, not for --compare"),
    (["--models=EASE"], "--models is for --compare, not for a plain run"),
    (["--compare", "--market=JP"], "--compare takes its target markets as --markets"),
    (["--tune=props/tune/ease.yaml", "--seeds=1"], "--seeds is for --compare, not for --tune"),
    (["--compare", "--tune=props/tune/ease.yaml"], "--compare and --tune are separate modes"),
    (["--compare", "--jobs=0"], "--jobs must be an integer >= 1, got '0'"),
    (["--jobs=2"], "--jobs is for --compare, not for a plain run"),
])
def test_cli_bad_input(tmp_path, args, message):
    out = subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_cmr.py"), *args,
                          f"--checkpoint_dir={tmp_path / 'saved'}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)  # a missed error would train
    assert out.returncode == 2
    assert message in out.stderr
    assert not (tmp_path / "saved").exists() or os.listdir(tmp_path / "saved") == []


def test_a_config_files_market_and_dataset_are_used_when_no_flag_is_given(tiny_root, tmp_path, capsys):
    (tmp_path / "cc.yaml").write_text("target_market: cc\ndataset: tiny\n")
    common = ["--model=Pop", f"--data_path={tiny_root}", f"--checkpoint_dir={tmp_path / 'saved'}",
              "--eval_neg_num=15", f"--config_files={tmp_path / 'cc.yaml'}"]
    assert main(common) == 0
    assert json.load(open(os.path.join(capsys.readouterr().out.split("run directory: ")[1].strip(),
                                       "config.json")))["target_market"] == "cc"
    assert main([*common, "--market=BB"]) == 0  # the flag wins, as any command-line setting does
    assert json.load(open(os.path.join(capsys.readouterr().out.split("run directory: ")[1].strip(),
                                       "config.json")))["target_market"] == "bb"


def test_overrides_in_argv_reach_the_config_and_test_protocols_add_to_the_configured_one(
        tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "--eval_neg_num=99"])  # must not leak into the run
    code = main(["--model=Pop", "--market=BB", "--dataset=tiny", f"--data_path={tiny_root}",
                 f"--checkpoint_dir={tmp_path / 'saved'}", "--eval_neg_num=15", "--test_protocols=paper"])
    assert code == 0
    run_dir = capsys.readouterr().out.split("run directory: ")[1].strip()
    assert json.load(open(os.path.join(run_dir, "config.json")))["eval_neg_num"] == 15
    with open(os.path.join(run_dir, "results.csv")) as f:
        assert {r["protocol"] for r in csv.DictReader(f)} == {"market", "paper"}
    assert sys.argv == ["pytest", "--eval_neg_num=99"]


def test_a_run_prints_its_result_table_once_and_logs_it_to_run_log(tiny_root, tmp_path, capsys):
    assert main(["--model=Pop", "--market=BB", "--dataset=tiny", f"--data_path={tiny_root}",
                 f"--checkpoint_dir={tmp_path / 'saved'}", "--eval_neg_num=15"]) == 0
    captured = capsys.readouterr()
    header = "phase |   protocol |"
    assert captured.out.count(header) == 1 and header not in captured.err
    run_dir = captured.out.split("run directory: ")[1].strip()
    assert open(os.path.join(run_dir, "run.log")).read().count(header) == 1


def test_compare_from_the_command_line_passes_every_flag_to_its_place(tiny_root, tmp_path, capsys):
    out = tmp_path / "grid"
    assert main(["--compare", "--models=Pop,EASE", "--markets=BB,cc", "--seeds=3", "--scopes=single",
                 "--protocol=market", "--test_protocols=paper", "--dataset=tiny", f"--data_path={tiny_root}",
                 "--eval_neg_num=15", f"--out={out}"]) == 0
    rows = read_csv_rows(os.path.join(out, "results.csv"))
    cells = {(r["model"], r["scope"], r["market"], r["seed"]) for r in rows}
    assert cells == {(m, "single", market, "3") for m in ("Pop", "EASE") for market in ("bb", "cc")}
    assert {r["protocol"] for r in rows} == {"market", "paper"}
    assert "protocol `paper`, seeds 3" in open(os.path.join(out, "table-paper.md")).read()
    negatives = json.load(open(os.path.join(out, "runs", sorted(os.listdir(out / "runs"))[0], "config.json")))
    assert negatives["eval_neg_num"] == 15 and negatives["seed"] == 3

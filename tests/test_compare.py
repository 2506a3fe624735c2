"""The comparison grid: resumable, one table with protocol and seeds, a plot, a paired test."""

import os
import re

import numpy as np
import pytest
import torch
from scipy import stats

from recbole_cmr.compare import compare, markdown
from recbole_cmr.utils import CrossMarketError, read_csv_rows


def tiny_dict(tiny_root):
    return {"dataset": "tiny", "data_path": tiny_root, "epochs": 2, "eval_neg_num": 20,
            "embedding_size": 8, "n_heads": 2, "n_layers": 1}


def check_paired_test_and_bold(table, out, market):
    """By hand: ACMR's p-value against the best other model from the per-user files; bold is each column's max."""
    section = table.split("## ACMR vs the best other model")[1]
    row = next(line for line in section.splitlines() if line.startswith(f"| {market.upper()} |"))
    rival, p_text = row.split(" | ")[1], row.split(" | ")[-1].rstrip(" |")
    model, scope = (rival.split(" (") + [""])[:2]
    scope = {"single)": "single", "++)": "pp"}.get(scope, "cross-market")
    acmr, other = [], []
    for seed in (1, 2):
        acmr.append(np.load(os.path.join(out, "per_user", f"ACMR-cross-market-{market}-{seed}.npz"))["market/ndcg@10"])
        other.append(np.load(os.path.join(out, "per_user", f"{model}-{scope}-{market}-{seed}.npz"))["market/ndcg@10"])
    assert p_text == f"{stats.wilcoxon(np.concatenate(acmr), np.concatenate(other)).pvalue:.2g}"
    ndcg = table.split("## ndcg@10")[1].split("\n## ")[0]
    rows = [line.split(" | ")[1:] for line in ndcg.splitlines() if line.startswith("| ") and "---" not in line][1:]
    for column in zip(*rows):
        values = [float(cell.strip(" |*").split(" ")[0]) for cell in column if cell.strip(" |")]
        bold = [float(cell.strip(" |*").split(" ")[0]) for cell in column if cell.strip().startswith("**")]
        assert bold and all(b == max(values) for b in bold)


def test_grid_table_plot_and_resume(tiny_root, tmp_path):
    out = compare(["ACMR", "Pop"], ["bb", "cc"], [1, 2], "market", ["single", "++"], str(tmp_path / "cmp"),
                  tiny_dict(tiny_root), test_protocols=["paper"])
    table = open(os.path.join(out, "table.md")).read()
    assert "protocol `market`, seeds 1, 2" in table
    paper_table = open(os.path.join(out, "table-paper.md")).read()
    assert "protocol `paper`, seeds 1, 2" in paper_table and "under protocol `market`" in paper_table
    assert paper_table != table and os.path.exists(os.path.join(out, "plot-paper.png"))
    for label in ("ACMR", "Pop (single)", "Pop (++)"):
        assert f"| {label} |" in table
    check_paired_test_and_bold(table, out, "bb")
    assert os.path.getsize(os.path.join(out, "plot.png")) > 1000
    per_user = np.load(os.path.join(out, "per_user", "Pop-single-bb-1.npz"))
    assert len(per_user["market/ndcg@10"]) == len(per_user["paper/ndcg@10"]) == len(per_user["user_id"]) == 20
    runs = sorted(os.listdir(os.path.join(out, "runs")))
    assert len(runs) == 12
    acmr_log = open(os.path.join(out, "runs", runs[0], "run.log")).read()  # quiet console, full log file
    assert runs[0].startswith("ACMR") and "epoch 0 training" in acmr_log and "phase finetune" in acmr_log
    compare(["ACMR", "Pop"], ["bb", "cc"], [1, 2], "market", ["single", "++"], out, tiny_dict(tiny_root),
            test_protocols=["paper"])
    assert sorted(os.listdir(os.path.join(out, "runs"))) == runs, "a finished grid re-runs nothing"
    compare(["Pop"], ["bb"], [1, 2, 3], "market", ["single"], out, tiny_dict(tiny_root))
    table = open(os.path.join(out, "table.md")).read()
    assert "protocol `market`, seeds BB 1, 2, 3; CC 1, 2" in table
    acmr_bb = table.split("| ACMR | ")[1].split(" | ")[0]
    assert acmr_bb.endswith(" (2 of 3 seeds)"), "a mean over fewer of the market's seeds says so"
    with pytest.raises(CrossMarketError, match="selected under another protocol"):
        compare(["Pop"], ["bb"], [1], "paper", ["++"], out, tiny_dict(tiny_root))
    results = open(os.path.join(out, "results.csv")).read()
    with pytest.raises(CrossMarketError, match=r"other settings \(epochs differ"):
        compare(["Pop"], ["bb"], [1], "market", ["single"], out, {**tiny_dict(tiny_root), "epochs": 3})
    assert open(os.path.join(out, "results.csv")).read() == results
    acmr_bb = os.path.join(out, "per_user", "ACMR-cross-market-bb-1.npz")
    data = dict(np.load(acmr_bb))
    np.savez(acmr_bb, **{**data, "user_id": data["user_id"][::-1]})
    with pytest.raises(CrossMarketError, match="tested on different users"):
        markdown(read_csv_rows(os.path.join(out, "results.csv")), out, "market")


@pytest.mark.parametrize("models, markets, seeds, message", [
    (["Popp"], ["bb"], [1], "unknown model 'Popp'. Did you mean: Pop\\? Model"),  # each name once
    (["Pop"], ["bb", "zz"], [1], "unknown market 'zz'"),
    (["Pop", "Pop"], ["bb"], [1], "--models lists Pop more than once"),  # a repeat is an error, not merged
    (["Pop"], ["bb", "BB"], [1], "--markets lists bb more than once"),
    (["Pop"], ["bb"], [1, 1], "--seeds lists 1 more than once"),
    (["Pop"], ["bb"], [-1], "--seeds must be integers from 0 to 2\\*\\*32 - 1"),
])
def test_bad_grid_fails_before_running(tiny_root, tmp_path, models, markets, seeds, message):
    with pytest.raises(CrossMarketError, match=message):
        compare(models, markets, seeds, "market", ["++"], str(tmp_path / "cmp"), tiny_dict(tiny_root))
    assert not (tmp_path / "cmp").exists()


def test_an_output_folder_that_is_a_file_fails_before_running(tiny_root, tmp_path):
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(CrossMarketError, match="--pretrained_dir .*blocker is a file"):
        compare(["Pop"], ["bb"], [1], "market", ["++"], str(tmp_path / "cmp"), tiny_dict(tiny_root),
                pretrained_dir=str(tmp_path / "blocker"))
    assert not (tmp_path / "cmp").exists()


def test_two_phase_pretraining_is_reused_where_the_protocol_allows(tiny_root, tmp_path):
    """FOREC keeps its last pre-training epoch, so both protocols fine-tune from one pre-training;
    ACMR selects its pre-training epoch on valid, so each protocol pre-trains its own."""
    settings = {**tiny_dict(tiny_root), "pretrain_max_epochs": 1}
    for protocol in ("market", "paper"):
        compare(["FOREC", "ACMR"], ["bb"], [1], protocol, ["++"], str(tmp_path / protocol), settings)
    cached = sorted(os.listdir(tmp_path / "pretrained"))
    assert [name.split("-")[0] for name in cached] == ["ACMR", "ACMR", "FOREC"]
    assert {name.split("-")[3] for name in cached if name.startswith("ACMR")} == {"market", "paper"}

    def pretrained_runs(protocol, model):
        runs = [r for r in os.listdir(tmp_path / protocol / "runs") if r.startswith(model)]
        return [os.path.exists(tmp_path / protocol / "runs" / r / "pretrain.pth") for r in runs]

    assert pretrained_runs("market", "FOREC") == [True] and pretrained_runs("paper", "FOREC") == [False]
    assert pretrained_runs("paper", "ACMR") == [True]
    table = open(tmp_path / "paper" / "table.md").read()
    assert "| FOREC |" in table and "protocol `paper`" in table
    # a cached pre-training without the generators' state cannot reproduce the two-phase run: it is redone
    forec = str(tmp_path / "pretrained" / cached[-1])
    checkpoint = torch.load(forec, weights_only=True)
    del checkpoint["finetune_rng_state"]
    torch.save(checkpoint, forec)
    compare(["FOREC"], ["bb"], [1], "market", ["++"], str(tmp_path / "market-again"), settings)
    assert pretrained_runs("market-again", "FOREC") == [True]
    assert "finetune_rng_state" in torch.load(forec, weights_only=True)

    def forec_metrics(protocol):
        rows = read_csv_rows(str(tmp_path / protocol / "results.csv"))
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows if r["label"] == "FOREC"]

    assert forec_metrics("market-again") == forec_metrics("market")


def test_acmr_keeping_its_last_pretraining_epoch_serves_every_protocol_from_one_pretraining(tiny_root, tmp_path):
    settings = {**tiny_dict(tiny_root), "pretrain_max_epochs": 1, "pretrain_valid": False}
    for protocol in ("market", "paper"):
        compare(["ACMR"], ["bb"], [1], protocol, ["++"], str(tmp_path / protocol), settings)
    assert len(os.listdir(tmp_path / "pretrained")) == 1
    pretrained = {protocol: os.path.exists(tmp_path / protocol / "runs" / os.listdir(tmp_path / protocol / "runs")[0]
                                           / "pretrain.pth") for protocol in ("market", "paper")}
    assert pretrained == {"market": True, "paper": False}


def test_a_damaged_grid_folder_gives_one_error_naming_the_file(tiny_root, tmp_path):
    out = str(tmp_path / "cmp")
    grid = (["Pop", "EASE"], ["bb"], [1], "market", ["single"], out, tiny_dict(tiny_root))
    compare(*grid, references=("EASE (single)",))
    kept = {name: open(os.path.join(out, name), "rb").read() for name in ("settings.json", "results.csv")}
    for name, text, message in (("settings.json", "{oops", "settings.json cannot be read"),
                                ("settings.json", "[]", "is not a grid's settings file"),
                                ("results.csv", "label,model\nPop,Pop\n", "line 2 has no scope"),
                                ("results.csv", kept["results.csv"].decode().replace("0.", "x.", 1), "not a number")):
        with open(os.path.join(out, name), "w") as f:
            f.write(text)
        with pytest.raises(CrossMarketError, match=message):
            compare(*grid, references=("EASE (single)",))
        with open(os.path.join(out, name), "wb") as f:
            f.write(kept[name])
    per_user = os.path.join(out, "per_user", "Pop-single-bb-1.npz")
    with open(per_user, "wb") as f:
        f.write(b"junk")
    with pytest.raises(CrossMarketError, match="per-user file .*Pop-single-bb-1.npz cannot be read"):
        markdown(read_csv_rows(os.path.join(out, "results.csv")), out, "market", references=("EASE (single)",))


def test_a_grid_with_helper_processes_gives_the_numbers_of_one_process(tiny_root, tmp_path, capfd):
    """Each cell runs once, in whichever process claims it first (the helpers start a few seconds late, so how
    many they take depends on the machine), and the results are those of one process."""
    grid = (["Pop", "EASE", "BPR"], ["bb", "cc"], [1], "market", ["single"])
    alone = compare(*grid, str(tmp_path / "alone"), tiny_dict(tiny_root))
    capfd.readouterr()
    shared = compare(*grid, str(tmp_path / "shared"), tiny_dict(tiny_root), jobs=3)
    printed = capfd.readouterr().out  # the helpers' lines too

    def cells(out):
        return sorted(tuple((k, v) for k, v in r.items() if k != "seconds")
                      for r in read_csv_rows(os.path.join(out, "results.csv")))

    assert cells(shared) == cells(alone) and len(cells(alone)) == 6 * 2
    assert "skipped" not in printed, "the helpers' cells are finished when the grid returns"
    ran = [re.sub(r" in helper \d+$", "", line.split("] ")[1]) for line in printed.splitlines() if " running " in line]
    assert sorted(ran) == sorted(f"running {m} (single) on {k} seed 1 (selected on market, tested on market)"
                                 for m in ("Pop", "EASE", "BPR") for k in ("BB", "CC"))
    with pytest.raises(CrossMarketError, match="--jobs must be an integer >= 1, got 0"):
        compare(*grid, str(tmp_path / "shared"), tiny_dict(tiny_root), jobs=0)

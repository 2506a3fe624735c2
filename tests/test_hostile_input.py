"""Hostile and careless input: one `error:` line, exit 2, nothing half-written, nothing silently changed."""

import errno
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset

from recbole_cmr.compare import compare
from recbole_cmr.config import make_config
from recbole_cmr.data.dataset import create_dataset
from recbole_cmr.quick_start import run
from recbole_cmr.trainer import load_checkpoint, load_state_dict
from recbole_cmr.tune import tune_model
from recbole_cmr.utils import CrossMarketError, Terminated, raise_terminated, write_atomically

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from run_recbole_cmr import main  # noqa: E402


def tiny_lines(tmp_path, name="edited"):
    """The tiny dataset's lines, to edit and write back with :func:`write_lines`."""
    root = write_tiny_dataset(str(tmp_path / "atomic"), name=name)
    with open(os.path.join(root, name, f"{name}.inter")) as f:
        return root, f.read().splitlines()


def write_lines(root, lines, name="edited"):
    with open(os.path.join(root, name, f"{name}.inter"), "w") as f:
        f.write("\n".join(lines) + "\n")


def split_of(root, name="edited", market="bb", **overrides):
    config = make_config("Pop", market, config_dict={"dataset": name, "data_path": root, "state": "WARNING",
                                                      "eval_neg_num": 20, **overrides})
    dataset = create_dataset(config)
    return dataset, dataset.build()


def cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


# --- silent data changes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    (lambda cells: cells[:4], "line 5 has 4 tab-separated fields where the header has 5"),  # a missing column
    (lambda cells: [*cells, "extra"], "line 5 has 6 tab-separated fields where the header has 5"),
    (lambda cells: [*cells, ""], "line 5 has 6 tab-separated fields where the header has 5"),  # a trailing tab
    (lambda cells: ['"' + cells[0], *cells[1:]], "line 5 holds a double quote"),  # would swallow later lines
    (lambda cells: [cells[0], f'"{cells[1]}"', *cells[2:]], "line 5 holds a double quote"),  # would be unquoted
    (lambda cells: cells[:2] + ["inf"] + cells[3:], "line 5 has rating inf"),
    (lambda cells: cells[:3] + ["1e400"] + cells[4:], "line 5 has timestamp inf"),
    (lambda cells: cells[:4] + [""], "line 5 has no value for market"),          # an empty market
    (lambda cells: [cells[0], "", *cells[2:]], "line 5 has no value for item_id"),
    (lambda cells: cells[:2] + [""] + cells[3:], "line 5 has no value for rating"),
    (lambda cells: cells[:3] + ["nan"] + cells[4:], "line 5 has no value for timestamp .*NaN, NA, NULL"),
    (lambda cells: ["NA", *cells[1:]], "line 5 has no value for user_id .*a word the reader takes for a missing"),
    (lambda cells: cells[:2] + ["4,5"] + cells[3:], "line 5 has rating:float '4,5', not a number"),
    # tokens that would silently become other tokens
    (lambda cells: [cells[0] + " ", *cells[1:]], "line 5 has blanks around its user_id 'aa_u0 '"),
    (lambda cells: [cells[0], " " + cells[1], *cells[2:]], "line 5 has blanks around its item_id"),
    (lambda cells: [*cells[:4], cells[4] + " "], "line 5 has blanks around its market 'aa '"),  # a fourth market
    (lambda cells: [*cells[:4], "cc"], "user 'aa_u0' has rows in markets aa, cc"),  # part source, part target
])
def test_a_row_that_would_be_dropped_or_misread_is_refused(tmp_path, edit, message):
    root, lines = tiny_lines(tmp_path)
    lines[4] = "\t".join(edit(lines[4].split("\t")))
    write_lines(root, lines)
    with pytest.raises(CrossMarketError, match=message):
        split_of(root)


@pytest.mark.parametrize("header, message", [
    ("\ufeffuser_id:token", "starts with a byte-order mark"),
    ("user_id", "header field 'user_id' has no known type"),
    ("user_id:token\titem_id:tokn", "header field 'item_id:tokn' has no known type"),
    ("user_id:token\titem_id:token\tuser_id:float", "names 'user_id' twice"),
    ("user_id:token\titem_id:token_seq\trating:float\ttimestamp:float\tmarket:token",
     "header field 'item_id:token_seq' must be 'item_id:token'"),
    ("user_id:token\titem_id:token\trating:float\ttimestamp:token\tmarket:token",
     "header field 'timestamp:token' must be 'timestamp:float'"),
    ("", "is empty"),
])
def test_a_header_recbole_would_misread_is_refused(tmp_path, header, message):
    root, lines = tiny_lines(tmp_path)
    write_lines(root, [header] + (lines[1:] if header else []))
    if not header:
        open(os.path.join(root, "edited", "edited.inter"), "w").close()
    with pytest.raises(CrossMarketError, match=message):
        split_of(root)


def test_header_only_and_duplicate_rows_are_refused(tmp_path):
    root, lines = tiny_lines(tmp_path)
    write_lines(root, lines[:1])
    with pytest.raises(CrossMarketError, match="has a header but no rows"):
        split_of(root)
    write_lines(root, lines + [lines[3]])
    with pytest.raises(CrossMarketError, match=f"line {len(lines) + 1} repeats a \\(user, item\\) pair"):
        split_of(root)


def test_market_names_are_case_insensitive_in_the_file_too(tmp_path):
    root, lines = tiny_lines(tmp_path)
    _, lower = split_of(root)
    upper = [lines[0]] + [line.replace("\tbb", "\tBB") for line in lines[1:]]
    write_lines(root, upper)
    dataset, built = split_of(root, market="BB")
    assert "bb" in dataset.markets and "BB" not in dataset.markets
    for a, b in zip(lower, built):  # the same split as the lower-case file
        assert np.array_equal(a.inter_feat["item_id"].numpy(), b.inter_feat["item_id"].numpy())
    bb_rows = [i for i, line in enumerate(upper) if line.endswith("\tBB")]
    mixed = [line.replace("\tBB", "\tbb") if i == bb_rows[0] else line for i, line in enumerate(upper)]
    write_lines(root, mixed)
    with pytest.raises(CrossMarketError, match="market names 'BB' / 'bb' differ only in case"):
        split_of(root)


def test_no_source_market_and_nothing_left_after_filtering(tmp_path, tiny_root):
    with pytest.raises(CrossMarketError, match="train_markets: source .* there are none"):
        split_of(tiny_root, "tiny", train_markets="source", source_markets=[])
    with pytest.raises(CrossMarketError, match="no interaction is left after filtering"):
        split_of(tiny_root, "tiny", user_inter_num_interval="[100,inf)")


def test_fuzzed_atomic_files_load_or_give_one_error(tmp_path):
    """Random careless edits: the split either builds every row or raises CrossMarketError, never another exception.

    The tiny data's users have 4-8 items each, so no filter may remove a row: a split that builds holds them all.
    """
    root, lines = tiny_lines(tmp_path)
    rng = np.random.default_rng(1)
    edits = [
        lambda cells: cells[: int(rng.integers(0, len(cells)))],                       # columns cut off
        lambda cells: [c if rng.random() > 0.3 else "" for c in cells],                # blanked values
        lambda cells: cells + ["extra"],                                               # one field too many
        lambda cells: [cells[0], cells[1], "five", *cells[3:]],                        # a non-number rating
        lambda cells: [*cells[:4], cells[4].upper()],                                  # market case
        lambda cells: [" ", *cells[1:]],                                               # a blank user
    ]
    refused = 0
    for case in range(30):
        edited = list(lines)
        if case % 3 == 1:  # rows in another order: a valid file, every row kept
            edited[1:] = [edited[1:][i] for i in rng.permutation(len(edited) - 1)]
            write_lines(root, edited)
            _, built = split_of(root)
            assert sum(len(part.inter_feat) for part in built) == len(edited) - 1
            continue
        for row in rng.integers(1, len(lines), size=int(rng.integers(1, 4))):
            edited[row] = "\t".join(edits[int(rng.integers(0, len(edits)))](edited[row].split("\t")))
        if case % 5 == 0:
            edited.append(edited[int(rng.integers(1, len(edited)))])                   # a repeated row
        write_lines(root, edited)
        try:
            _, built = split_of(root)
        except CrossMarketError:
            refused += 1
            continue
        assert sum(len(part.inter_feat) for part in built) == len(edited) - 1  # nothing dropped silently
    assert refused >= 15  # the edits do reach the checks


# --- settings and files ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arg, message", [
    ("--eval_batch_size=0", "eval_batch_size must be an integer >= 1, got 0"),
    ("--valid_metric=AUC", "valid_metric must be one of the configured metrics"),
    ("--metrics=['AUC']", "metrics must be a list of distinct ranking metrics"),
    ("--metrics=['Foo']", "from Recall, Precision, NDCG, MRR, Hit, got ['Foo']"),  # RecBole: a traceback
    ("--topk=ten", "topk must be a non-empty list of distinct integers >= 1, got 'ten'"),
    ("--seed=abc", "seed must be an integer >= 0, got 'abc'"),
    ("--split_seed=-1", "split_seed must be an integer >= 0, got -1"),
    ("--pretrain_max_epochs=-1", "pretrain_max_epochs must be an integer >= 1"),
    ("--untrained_items=first", "untrained_items must be one of last, score"),
    ("--user_inter_num_interval=5", "user_inter_num_interval must be ~ or intervals"),  # RecBole: a warning, no filter
    ("--user_inter_num_interval=[a,b)", "user_inter_num_interval must be ~ or intervals"),  # RecBole: a traceback
    ("--state=LOUD", "state must be one of DEBUG, INFO"),
    ("--reproducibility=maybe", "reproducibility must be True or False"),
    ("--seed=99999999999999999999", "seed must be an integer from 0 to 2**32 - 1"),  # numpy: a traceback
    ("--topk=[5,5]", "topk must be a non-empty list of distinct integers"),
    ("--metrics=['Recall','recall','NDCG']", "metrics must be a list of distinct ranking metrics"),
    ("--train_neg_sample_args={'distribution':'uniform','sample_num':0}", "sample_num is an integer >= 1"),
    ("--bucket_window=0", "bucket_window must be an integer >= 1, or ~"),  # 0 would silently switch it off
    ("--bucket_window=-4", "bucket_window must be an integer >= 1, or ~"),
    ("--gpu_id=abc", "gpu_id must be a device number"),
    ("--data_path=", "--data_path is empty"),
    ("--epochs", "write --epochs=VALUE"),
    ("--eval_protocol=full", "give the eval protocol as --protocol"),
])
def test_values_recbole_checks_late_or_never(tmp_path, capsys, arg, message):
    code, err = cli(["--model=ACMR", arg, f"--checkpoint_dir={tmp_path / 'saved'}"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize("model, arg, message", [
    ("Pop", "--topk=[0]", "topk must be a non-empty list of distinct integers >= 1, got [0]"),
    ("BPR", "--train_neg_sample_args={'distribution':'zipf'}", "distribution [zipf]"),
    ("EASE", "--reg_weight=-5", "reg_weight must be a number > 0"),
    ("ItemKNN", "--k=0", "k must be an integer >= 1"),
    ("SASRec", "--n_heads=3", "n_heads (3) must divide hidden_size (64)"),
    ("NeuMF", "--mlp_hidden_size=[]", "mlp_hidden_size must be a non-empty list"),
    ("Pop", "--k=5", "--k is a setting of"),  # another model's hyper-parameter would be ignored
    ("Pop", "--eval_args={'order':'TO'}", "eval_args is set by recbole-cmr"),
    ("Pop", "--market=", "--market is empty"),
])
def test_model_settings_recbole_never_checks_or_would_ignore(tmp_path, capsys, model, arg, message):
    code, err = cli([f"--model={model}", arg, f"--checkpoint_dir={tmp_path / 'saved'}"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "saved").exists()


def test_a_gpu_asked_for_where_torch_sees_none_is_refused(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    code, err = cli(["--model=Pop", "--use_gpu=True", f"--checkpoint_dir={tmp_path / 'saved'}"], capsys)
    assert code == 2 and len(err) == 1 and "use_gpu is True but torch sees no CUDA device" in err[0]


@pytest.mark.parametrize("args, message", [
    (["--epochs=1", "--epochs=2"], "--epochs is given twice (--epochs=1 and --epochs=2)"),
    (["--market=aa", "--market=bb"], "--market is given twice"),
    (["-m=Pop", "--model=EASE"], "--model is given twice"),
    (["--test_protocols=paper,Paper"], "--test_protocols lists 'paper' more than once"),
    (["--compare", "--models=Pop,,EASE"], "--models has an empty name in 'Pop,,EASE'"),
    (["--compare", "--models=Pop", "--markets=bb,"], "--markets has an empty name in 'bb,'"),
])
def test_a_flag_given_twice_or_a_list_with_a_gap_is_refused(tmp_path, capsys, args, message):
    code, err = cli([*args, f"--checkpoint_dir={tmp_path / 'saved'}"], capsys)
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "saved").exists()


def test_data_the_run_refuses_prints_its_error_line_alone(tmp_path):
    root, lines = tiny_lines(tmp_path)
    write_lines(root, lines + [lines[3]])  # found after the run folder is made and logging started
    done = subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_cmr.py"), "--model=Pop", "--market=bb",
                           "--dataset=edited", f"--data_path={root}", f"--checkpoint_dir={tmp_path / 'saved'}"],
                          capture_output=True, text=True, timeout=300)  # a process: logging's exit flushes too
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and "repeats a (user, item) pair" in err[0], done.stderr
    assert os.listdir(tmp_path / "saved") == []


def test_a_market_emptied_by_the_filters_is_named_as_such(tmp_path):
    root, lines = tiny_lines(tmp_path)
    rows_of = {}
    for line in lines[1:]:
        rows_of.setdefault(line.split("\t")[0], []).append(line)
    write_lines(root, [lines[0]] + [line for user_rows in rows_of.values() for line in
                                    (user_rows[:2] if user_rows[0].endswith("\tcc") else user_rows)])
    with pytest.raises(CrossMarketError, match="market 'cc' has no interaction left after filtering"):
        split_of(root, market="cc", user_inter_num_interval="[3,inf)")


def test_k_is_itemknns_setting_outside_recommend(tiny_root, tmp_path, capsys):
    code = main(["--model=ItemKNN", "--k=3", "--market=bb", "--dataset=tiny", f"--data_path={tiny_root}",
                 "--eval_neg_num=20", f"--checkpoint_dir={tmp_path / 'saved'}"])
    run_dir = capsys.readouterr().out.split("run directory: ")[1].strip()
    assert code == 0 and json.load(open(os.path.join(run_dir, "config.json")))["k"] == 3


@pytest.mark.parametrize("content, message", [
    ("", "holds nothing"), ("- 1\n- 2\n", "holds a list"), (None, "is a folder"), ("a: [\n", "is not valid yaml"),
    ("model: EASE\n", "sets model: EASE, but the run's model is Pop"),  # RecBole would ignore the file's
    ("epochz: 1\n", "unknown key 'epochz'"),  # a typo would be a new, unused key
    ("num_samples: 4\nspace: {}\n", "is a search file"),
    ("MARKET_FIELD: [market]\n", "MARKET_FIELD must be a field name"),
    ("data_path: 123\n", "data_path must be a folder path, got 123"),
    ("field_separator: ','\n", "field_separator must be a tab"),
])
def test_bad_config_files(tmp_path, capsys, content, message):
    path = tmp_path / "conf.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    code, err = cli(["--model=Pop", f"--config_files={path}", f"--checkpoint_dir={tmp_path / 'saved'}"], capsys)
    assert code == 2 and len(err) == 1 and message in err[0]
    with pytest.raises(CrossMarketError, match=message):  # the Python API says the same
        make_config("Pop", "in", config_file_list=[str(path)])


def test_an_output_folder_that_is_a_file(tiny_root, tmp_path, capsys):
    blocker = tmp_path / "saved"
    blocker.write_text("not a folder")
    code, err = cli(["--model=Pop", "--market=bb", "--dataset=tiny", f"--data_path={tiny_root}",
                     f"--checkpoint_dir={blocker}"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot write or read") and "saved" in err[0]


def test_a_failed_write_names_the_file_asked_for_and_leaves_nothing(tmp_path):
    from recbole_cmr.utils import write_text

    (tmp_path / "taken.csv").mkdir()
    for path in (tmp_path / "missing" / "x.csv", tmp_path / "taken.csv"):
        with pytest.raises(OSError) as raised:
            write_text(str(path), "a,b\n")
        assert raised.value.filename == str(path)  # not its temporary file
    assert sorted(os.listdir(tmp_path)) == ["taken.csv"] and os.listdir(tmp_path / "taken.csv") == []


def limit_file_size(limit):
    """A child process's ``preexec_fn``: files it writes stop at ``limit`` bytes, a write beyond failing with EFBIG
    (as a full disk fails one with ENOSPC) instead of killing the process."""

    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


@pytest.mark.parametrize("limit", [3_000, 60_000])  # below the run's first files; below only its checkpoint
def test_a_write_the_disk_refuses_is_one_line_and_leaves_nothing(tiny_root, tmp_path, limit):
    saved = tmp_path / "saved"
    done = subprocess.run([sys.executable, os.path.join(REPO, "run_recbole_cmr.py"), "--model=BPR", "--market=bb",
                           "--dataset=tiny", f"--data_path={tiny_root}", f"--checkpoint_dir={saved}", "--epochs=1",
                           "--eval_neg_num=20"], capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size(limit))
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert last.startswith(f"error: cannot write or read {saved}{os.sep}") and "File too large" in last
    assert os.listdir(saved) == []


@pytest.mark.parametrize("hook", [True, False])
def test_a_tensorboard_write_the_disk_refuses_reaches_the_run_without_a_thread_traceback(tmp_path, hook):
    code = "\n".join([
        "import resource, signal, sys, threading",
        f"sys.path.insert(0, {REPO!r})",
        "from run_recbole_cmr import quiet_writer_thread_errors",
        "from torch.utils.tensorboard import SummaryWriter",
        *(["threading.excepthook = quiet_writer_thread_errors"] if hook else []),
        f"writer = SummaryWriter({str(tmp_path)!r})",
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)",
        "resource.setrlimit(resource.RLIMIT_FSIZE, (500, 500))",
        "try:",
        "    for step in range(200):",
        "        writer.add_scalar('loss', float(step), step)",
        "    writer.flush()",
        "except OSError as err:",
        "    print('the run meets', err.errno)",
    ])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == f"the run meets {errno.EFBIG}", done.stderr
    assert ("Traceback" in done.stderr) is not hook  # without the command's hook the thread prints its own


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_log_line_the_disk_refuses_stops_the_run():
    from recbole_cmr.quick_start import RunLogFileHandler

    logger = logging.getLogger("full-disk")
    logger.propagate = False
    logger.addHandler(RunLogFileHandler("/dev/full"))
    try:
        with pytest.raises(OSError) as raised:
            logger.warning("a line")  # logging alone would print a traceback on the console and go on
    finally:
        logger.handlers[0].close()
        logger.handlers.clear()
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == "/dev/full"


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                 (signal.SIGTERM, 143, "terminated")])
def test_interrupt_or_kill_is_one_line_and_keeps_only_a_resumable_run(tiny_root, tmp_path, signum, code, word):
    saved = tmp_path / "saved"
    command = [sys.executable, os.path.join(REPO, "run_recbole_cmr.py"), "--model=ACMR", "--market=bb",
               "--dataset=tiny", f"--data_path={tiny_root}", f"--checkpoint_dir={saved}", "--epochs=100000",
               "--pretrain_max_epochs=100000", "--stopping_step=100000", "--embedding_size=8", "--n_heads=2",
               "--n_layers=1", "--eval_neg_num=20"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            # a job started in the background (as CI may start this suite) inherits an ignored
                            # SIGINT, and Python keeps it ignored: give the run the terminal's default, as a user has
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:  # stopped once it has finished an epoch, so it has a state to continue from
        deadline = time.time() + 240
        while time.time() < deadline and not (saved.exists() and any(saved.glob("*.incomplete/pretrain.resume.pth"))):
            time.sleep(0.2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:  # a run that ignored the signal must not train on beside the rest of the suite
        proc.kill()
        proc.wait()
    assert proc.returncode == code, err
    kept = [str(path) for path in saved.iterdir()]
    assert len(kept) == 1 and kept[0].endswith(".incomplete")
    assert err.strip().splitlines()[-1] == (f"error: {word}; the unfinished run is kept in {kept[0]}; add "
                                            f"--resume={kept[0]} to the same command to continue it")
    assert "Traceback" not in err
    # the same command continues it; other settings are refused in one line, the folder kept
    changed = subprocess.run([*command, "--learning_rate=0.01", f"--resume={kept[0]}"], capture_output=True,
                             text=True, timeout=300)
    assert changed.returncode == 2 and changed.stderr.strip().splitlines() == [
        f"error: {kept[0]} was started with other settings (learning_rate differs); resume it with the command that "
        "started it, or delete it"]
    assert [str(path) for path in saved.iterdir()] == kept



def test_an_interrupt_while_a_state_is_saved_keeps_the_previous_state_and_is_one_interrupt(tmp_path):
    """A signal inside torch.save's zip writer surfaces as a RuntimeError, not the interrupt: the run would end
    in a traceback and lose its resumable folder. The interrupt is held until the write returns, then raised
    before the rename, so the previous state stays whole."""
    path = str(tmp_path / "pretrain.resume.pth")
    write_atomically(path, lambda f: torch.save({"epoch": torch.tensor(1)}, f), mode="wb")

    class KilledMidway:  # the file torch.save writes to; SIGTERM arrives between two of its writes
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    on_sigterm = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        with pytest.raises(Terminated):
            write_atomically(path, lambda f: torch.save({"epoch": torch.tensor(2)}, KilledMidway(f)), mode="wb")
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)
    assert os.listdir(tmp_path) == ["pretrain.resume.pth"]
    assert int(torch.load(path, weights_only=True)["epoch"]) == 1


# --- checkpoints -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def acmr_checkpoint(tiny_root, tmp_path_factory):
    saved = tmp_path_factory.mktemp("saved")
    config_dict = {"dataset": "tiny", "data_path": tiny_root, "checkpoint_dir": str(saved), "epochs": 1,
                   "eval_neg_num": 20, "state": "WARNING", "embedding_size": 8, "n_heads": 2, "n_layers": 1}
    path, _ = run("ACMR", "bb", config_dict=config_dict, phase="pretrain")
    return os.path.join(path, "pretrain.pth"), config_dict


def test_checkpoints_of_the_wrong_structure_or_architecture(acmr_checkpoint, tmp_path):
    path, config_dict = acmr_checkpoint
    good = torch.load(path, weights_only=True)
    config = make_config("ACMR", "bb", config_dict=config_dict)
    for name, content in [("list", [1, 2]), ("state_list", {**good, "state_dict": [1]}),
                          ("config_list", {**good, "config": ["x"]}), ("tensor", torch.zeros(3))]:
        torch.save(content, tmp_path / f"{name}.pth")
        with pytest.raises(CrossMarketError, match="was not written by recbole-cmr"):
            load_checkpoint(str(tmp_path / f"{name}.pth"), config)
    wider = make_config("ACMR", "bb", config_dict={**config_dict, "embedding_size": 16})
    dataset = create_dataset(wider)
    model = wider.model_class(wider, dataset.build()[0])
    with pytest.raises(CrossMarketError) as err:
        load_state_dict(model, good, path)
    assert "weight(s) of another shape (first: item_embedding.weight" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_checkpoint_without_its_pretraining_records_is_refused_for_finetuning(acmr_checkpoint, tmp_path):
    path, config_dict = acmr_checkpoint
    good = torch.load(path, weights_only=True)
    for missing in ("trained_items", "finetune_rng_state"):
        stripped = tmp_path / f"without_{missing}.pth"
        torch.save({k: v for k, v in good.items() if k != missing}, stripped)
        with pytest.raises(CrossMarketError, match="pre-train again"):
            run("ACMR", "bb", config_dict={**config_dict, "checkpoint_dir": str(tmp_path / "saved")},
                phase="finetune", pretrained=str(stripped))
    assert os.listdir(tmp_path / "saved") == []


def test_an_unsafe_checkpoint_is_never_suggested_to_load_unsafely(acmr_checkpoint, tmp_path):
    path, config_dict = acmr_checkpoint
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {}, "config": {}, "payload": np.random.default_rng(0)}, unsafe)
    with pytest.raises(CrossMarketError) as err:
        load_checkpoint(str(unsafe), make_config("ACMR", "bb", config_dict=config_dict))
    assert "never loaded" in str(err.value) and "weights_only" not in str(err.value)


def test_fuzzed_checkpoints_give_one_error(acmr_checkpoint, tmp_path):
    """Truncations and byte flips of a real checkpoint: loading either works or raises CrossMarketError."""
    path, config_dict = acmr_checkpoint
    config = make_config("ACMR", "bb", config_dict=config_dict)
    dataset = create_dataset(config)
    model = config.model_class(config, dataset.build()[0])
    data = open(path, "rb").read()
    rng = np.random.default_rng(0)
    for case in range(40):
        broken = bytearray(data[: int(rng.integers(0, len(data)))] if case % 2 else data)
        for position in rng.integers(0, len(broken), size=int(rng.integers(1, 20))) if broken else []:
            broken[position] = int(rng.integers(0, 256))
        target = tmp_path / f"fuzz{case}.pth"
        target.write_bytes(bytes(broken))
        if case % 2:  # a truncated file never loads
            with pytest.raises(CrossMarketError):
                load_state_dict(model, load_checkpoint(str(target), config), str(target))
            continue
        try:
            load_state_dict(model, load_checkpoint(str(target), config), str(target))
        except CrossMarketError:
            pass


# --- searches and grids ------------------------------------------------------------------------------------------

def test_a_search_value_out_of_range_fails_before_ray(tiny_root, tmp_path):
    import yaml

    search = tmp_path / "search.yaml"
    search.write_text(yaml.safe_dump({"num_samples": 1, "fixed": {"epochs": 1},
                                      "space": {"learning_rate": {"choice": [0.001, -0.01]}}}))
    with pytest.raises(CrossMarketError, match="learning_rate = -0.01 cannot run"):
        tune_model("Pop", "bb", str(search), config_dict={"dataset": "tiny", "data_path": tiny_root,
                                                          "checkpoint_dir": str(tmp_path / "saved")})
    assert not (tmp_path / "saved").exists()


def test_a_grid_replaces_a_corrupt_cached_pretraining_and_removes_stale_run_folders(tiny_root, tmp_path, capsys):
    out, cache = tmp_path / "grid", tmp_path / "pretrained"
    stale = out / "runs" / "FOREC-bb-market-seed1-x.incomplete"
    stale.mkdir(parents=True)
    cache.mkdir()
    settings = {"dataset": "tiny", "data_path": tiny_root, "epochs": 1, "pretrain_max_epochs": 1, "eval_neg_num": 20}
    from recbole_cmr.compare import pretrained_name

    name = pretrained_name(("FOREC", "FOREC", "cross-market", "bb", 1), "market", None,
                           {**settings, "state": "WARNING", "checkpoint_dir": str(out / "runs")})
    (cache / name).write_bytes(b"garbage")
    compare(["FOREC"], ["bb"], [1], "market", ["single"], str(out), settings, str(cache))
    printed = capsys.readouterr().out
    assert "removed 1 unfinished run folder" in printed and not stale.exists()
    assert f"cached pre-training {cache / name} cannot be read" in printed
    assert "finetune_rng_state" in torch.load(cache / name, weights_only=True)

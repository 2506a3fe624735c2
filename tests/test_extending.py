"""Extending the plugin the documented way: a new cross-market model is a file, a yaml and a test."""

import glob
import os

import pytest

from recbole_cmr.compare import compare
from recbole_cmr.quick_start import run
from recbole_cmr.recommend import load_run, recommend_histories
from recbole_cmr.utils import CrossMarketError

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recbole_cmr")

TOY_MODEL = '''"""A toy cross-market model: an item's popularity among the users of the user's market."""

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_cmr.model.abstract_recommender import CrossMarketModel


class ToyMarketPop(CrossMarketModel, GeneralRecommender):
    input_type = InputType.POINTWISE
    type = ModelType.TRADITIONAL
    label = "ToyMarketPop (a test's model)"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.fake_loss = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("user_market", torch.as_tensor(dataset.user_market))
        feat = dataset.inter_feat
        counts = torch.zeros(len(dataset.field2id_token[dataset.market_field]), self.n_items)
        counts.index_put_((self.user_market[feat[self.USER_ID]], feat[self.ITEM_ID]), torch.ones(len(feat)),
                          accumulate=True)
        self.register_buffer("counts", counts)

    def calculate_loss(self, interaction):
        return torch.nn.Parameter(torch.zeros(1))

    def predict(self, interaction):
        return self.counts[self.user_market[interaction[self.USER_ID]], interaction[self.ITEM_ID]]

    def full_sort_predict(self, interaction):
        return self.counts[self.user_market[interaction[self.USER_ID]]].view(-1)

    def score_history(self, history, market, candidates):
        return self.counts[market, candidates]
'''

TOY_YAML = """epochs: 1                         # (int) Counting needs one pass.
train_neg_sample_args: ~          # (dict or None) No negatives.
"""


@pytest.fixture
def toy_model():
    """The two files a contributor writes, placed where the plugin looks, removed afterwards."""
    files = [os.path.join(PACKAGE, "model", "toy_market_pop.py"),
             os.path.join(PACKAGE, "properties", "model", "ToyMarketPop.yaml")]
    for path, text in zip(files, (TOY_MODEL, TOY_YAML)):
        with open(path, "w") as f:
            f.write(text)
    yield "ToyMarketPop"
    for path in files + glob.glob(os.path.join(PACKAGE, "model", "__pycache__", "toy_market_pop.*.pyc")):
        os.remove(path)


def test_a_model_file_and_its_yaml_are_all_a_new_model_needs(toy_model, tiny_root, tmp_path):
    settings = {"dataset": "tiny", "data_path": tiny_root, "checkpoint_dir": str(tmp_path / "saved"),
                "eval_neg_num": 20, "state": "WARNING"}
    path, rows = run(toy_model, "bb", config_dict=settings)
    assert [r["split"] for r in rows] == ["valid", "test"] and 0 < rows[-1]["ndcg@10"] <= 1
    with pytest.raises(CrossMarketError, match="cannot run with train_markets: target"):
        run(toy_model, "bb", config_dict={**settings, "train_markets": "target"})
    out = compare([toy_model, "Pop"], ["bb"], [1], "market", ["single", "++"], str(tmp_path / "cmp"), settings,
                  references=["ToyMarketPop (a test's model)"])
    table = open(os.path.join(out, "table.md")).read()
    assert table.count("| ToyMarketPop (a test's model) |") == 4  # one row per metric: one cell, its own scope
    assert "## ToyMarketPop (a test's model) vs the best other model" in table
    assert "| Pop (single) |" in table and "| Pop (++) |" in table
    rows = recommend_histories(load_run(path), {"newcomer": ["i20", "i21"]}, k=3)
    assert [r["rank"] for r in rows] == [1, 2, 3]

"""MMoE, Cross-Stitch, CoNet and DDTCDR across markets: a task per market (or domain), the row's own task scores."""

import re

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from recbole_cmr.data.dataset import CrossMarketDataset
from recbole_cmr.model.multitask import DDTCDR, CoNet, CrossStitch, MMoE
from recbole_cmr.quick_start import run
from recbole_cmr.utils import CrossMarketError


@pytest.mark.parametrize("model", ["MMoE", "CrossStitch", "CoNet", "DDTCDR"])
def test_end_to_end_under_every_protocol(tiny_settings, model):
    _, rows = run(model, "bb", config_dict=tiny_settings(), test_protocols=["full", "paper"])
    assert {r["protocol"] for r in rows} == {"market", "full", "paper"}
    assert all(0 < r["ndcg@10"] <= 1 for r in rows)


@pytest.mark.parametrize("model_class, task_weight", [(MMoE, "towers.{m}.weight"), (CrossStitch, "out"),
                                                      (CoNet, "heads.{d}.weight"), (DDTCDR, "heads.{d}.weight")])
def test_a_row_is_scored_by_its_users_market(tiny_config, model_class, task_weight):
    """Changing another market's (or, for the two-domain models, the other domain's) task leaves the target
    market's scores alone; changing its own task moves them."""
    config = tiny_config(model_class.__name__)
    init_seed(config["seed"], True)
    dataset = CrossMarketDataset(config)
    train, _, _ = dataset.build()
    model = model_class(config, train).eval()
    bb, aa = dataset.market_id("bb"), dataset.market_id("aa")
    users = torch.as_tensor(np.flatnonzero(dataset.user_market == bb)[:5])
    rows = Interaction({"user_id": users, "item_id": torch.arange(1, 6)})
    before = model.predict(rows)
    with torch.no_grad():
        weight = dict(model.named_parameters())[task_weight.format(m=aa, d=1)]
        weight[aa if task_weight == "out" else slice(None)] += 1.0  # another market's (domain's) task only
    assert torch.equal(model.predict(rows), before)
    with torch.no_grad():
        weight = dict(model.named_parameters())[task_weight.format(m=bb, d=0)]
        weight[bb if task_weight == "out" else slice(None)] += 1.0  # the users' own market's task
    assert not torch.allclose(model.predict(rows), before)


@pytest.mark.parametrize("model, overrides, message", [
    ("MMoE", {"n_experts": 0}, "n_experts must be an integer >= 1"),
    ("CrossStitch", {"stitch_self_weight": 0}, "stitch_self_weight must be in (0, 1]"),
    ("MMoE", {"task_hidden_size": []}, "task_hidden_size must be a non-empty list"),
    ("DDTCDR", {"transfer_weight": 2}, "transfer_weight must be in [0, 1]"),
])
def test_impossible_hyper_parameters(tiny_settings, model, overrides, message):
    with pytest.raises(CrossMarketError, match=re.escape(message)):
        run(model, "bb", config_dict=tiny_settings(**overrides))

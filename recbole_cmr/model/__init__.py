"""Models added by recbole-cmr, one module each, found by class name (``utils.plugin_model_names``):
ACMR, M3Rec, FOREC, MANeuMF, CMRanker, MMoE, CrossStitch, CoNet, DDTCDR, and Pop (RecBole's, its counting
fixed). Any other name is RecBole's own model.
The contract of a cross-market model is :class:`~recbole_cmr.model.abstract_recommender.CrossMarketModel`."""

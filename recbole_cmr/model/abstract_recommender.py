"""The contract of a cross-market model: what the runner, the grid and ``recommend`` read from it.

A new cross-market model is one file in ``recbole_cmr/model/`` (found by its class name, no registry to
edit), its yaml ``recbole_cmr/properties/model/<Name>.yaml`` and its test. Its class derives from
:class:`CrossMarketModel` and one of RecBole's recommenders (``GeneralRecommender``, ...), which give
``calculate_loss``, ``predict`` and ``full_sort_predict`` as for any RecBole model. Everything here is
optional: the defaults fit a model that trains once on all markets. A shared base of several models is
named with a leading underscore, so it is not offered as a model.
"""


class CrossMarketModel:
    """Mixin declaring a model cross-market: the comparison grid runs it once per market and seed with its
    own scope (RecBole's built-ins run once per scope, "single" and "++")."""

    #: Table label; None: the class name.
    label = None
    #: ``train_markets`` values the model can train with; the first is its default (no yaml repeats it).
    train_markets = ("all",)

    @staticmethod
    def check_settings(settings):
        """Problems (strings) with the model's hyper-parameters in a final config dict, found before any
        data is read; [] when they are fine."""
        return []

    def start_finetune(self):
        """Two-phase models (``finetune: True`` in the yaml): called after the pre-trained weights are loaded,
        before fine-tuning on the target market (FOREC forks its head here)."""

    #: ``score_history(history, market, candidates)`` -> scores: ``history`` item ids of a user the model
    #: never saw, ``market`` id, ``candidates`` item ids; define it to serve new users (``--recommend
    #: --history``). None: the model needs a trained user vector.
    score_history = None

    #: ``write_pictures(dataset, folder, title, seed)``: extra PNGs in the run folder (``cmr_plots``); None: none.
    write_pictures = None

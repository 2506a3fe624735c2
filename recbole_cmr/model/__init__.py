"""Models added by recbole-cmr; any other name falls back to RecBole's built-ins."""

from recbole_cmr.model.acmr import ACMR

__all__ = ["ACMR"]

"""Models added by recbole-cmr; any other name falls back to RecBole's built-ins."""

from recbole_cmr.model.acmr import ACMR
from recbole_cmr.model.m3rec import M3Rec
from recbole_cmr.model.neumf import FOREC, MANeuMF

__all__ = ["ACMR", "FOREC", "MANeuMF", "M3Rec"]

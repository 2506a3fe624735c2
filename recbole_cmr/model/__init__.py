"""Models added by recbole-cmr (Pop: RecBole's, counting fixed); any other name falls back to RecBole's built-ins."""

from recbole_cmr.model.acmr import ACMR
from recbole_cmr.model.m3rec import M3Rec
from recbole_cmr.model.neumf import FOREC, MANeuMF
from recbole_cmr.model.pop import Pop

__all__ = ["ACMR", "FOREC", "MANeuMF", "M3Rec", "Pop"]

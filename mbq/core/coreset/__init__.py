"""Per-sample importance scores and per-bit coreset sampling (EMQ).

scores.py    importance of every training sample for one child (one width)
forgetting.py  forgetting-event counts gathered during training
sampling.py  per-epoch, per-bit subset draws (Gumbel top-k, top-k, random)
bitwise.py   the per-bit coreset state a training run carries (and resumes)
io.py        the coreset safetensors file of ``mbq select-coreset``
select.py    what ``mbq select-coreset`` runs
"""
from .sampling import draw_subset, subset_size

__all__ = ["draw_subset", "subset_size"]

"""Merge methods: factories that validate hyperparameters and return a :class:`MergeMethod`.

>>> m = mergejax.methods.get("ties", density=0.2)
>>> m.traits.lam_scales_task_vector, m.traits.stochastic
(True, False)
>>> mergejax.methods.names()[:6]
['adamerging', 'average', 'breadcrumbs', 'breadcrumbs_ties', 'cart', 'dare_linear']

A user's method: a factory declared with :func:`method_factory` that returns a :class:`MergeMethod`
with its :class:`Traits`, added with :func:`register`; ``mergejax.merge``, ``mergejax-merge`` (flags
from its schema) and the study then run it on every path its traits allow.
"""

from __future__ import annotations

from mergejax.methods.average import average
from mergejax.methods.base import (HParam, LeafContext, LeafPass, MergeMethod, Traits, choice, expert_weights, flag,
                                   integer, leaf_key, method_factory, number)
from mergejax.methods.breadcrumbs import breadcrumbs, breadcrumbs_ties
from mergejax.methods.dare import dare_keep_masks, dare_linear
from mergejax.methods.data_aware import adamerging, fisher, regmean
from mergejax.methods.della import della, della_linear
from mergejax.methods.fusion import arcee_fusion
from mergejax.methods.lines import lines
from mergejax.methods.model_stock import model_stock, nearswap
from mergejax.methods.passthrough import passthrough
from mergejax.methods.ram import ram, ramplus_tl
from mergejax.methods.registry import formula, get, hparam_names, names, register, schema
from mergejax.methods.sce import sce
from mergejax.methods.spherical import karcher, multislerp, nuslerp, slerp
from mergejax.methods.subspace import cart, iso_c, iso_cts, tsv_m
from mergejax.methods.task_arithmetic import task_arithmetic
from mergejax.methods.ties import dare_ties, ties

for _f in (average, task_arithmetic, ties, dare_linear, dare_ties, slerp, nuslerp, multislerp, karcher, breadcrumbs,
           breadcrumbs_ties, della, della_linear, model_stock, sce, nearswap, tsv_m, iso_c, iso_cts, cart, lines,
           regmean, fisher, adamerging, ram, ramplus_tl, arcee_fusion, passthrough):
  register(_f.__name__, _f)

__all__ = ["HParam", "LeafContext", "LeafPass", "MergeMethod", "Traits", "adamerging", "arcee_fusion", "average",
           "breadcrumbs",
           "breadcrumbs_ties", "cart", "choice", "dare_keep_masks", "dare_linear", "dare_ties", "della", "della_linear",
           "expert_weights", "fisher", "flag", "formula", "get", "hparam_names", "integer", "iso_c", "iso_cts", "karcher",
           "leaf_key", "lines", "method_factory", "model_stock", "multislerp", "names", "nearswap", "number", "nuslerp",
           "passthrough", "ram", "ramplus_tl", "regmean", "register", "schema", "sce", "slerp", "task_arithmetic", "ties", "tsv_m"]

"""Evaluation: one evaluator (packed rank classification, generation) over seqio tasks, the metrics'
aggregation, and the paper's normalization.

    from mergejax import evaluation
    adapter = evaluation.builtin_adapter(config)          # or evaluation.from_flax_lm(my_module)
    ev = evaluation.Evaluator(adapter, "mj_heldout_rank", split="validation")
    results = ev.evaluate(params)                         # params may already live on the mesh
"""

from mergejax.evaluation import normalize, suites
from mergejax.models.adapter import ModelAdapter, builtin_adapter, from_flax_lm, from_nnx_lm
from mergejax.evaluation.aggregate import EvalResults, aggregate, format_table
from mergejax.evaluation.evaluator import Evaluator, evaluate, evaluate_many
from mergejax.evaluation.inference import Inference, default_mesh, greedy_decode, token_scores
from mergejax.tasks import register_category, task_category

__all__ = [
    "ModelAdapter", "builtin_adapter", "from_flax_lm", "from_nnx_lm", "Evaluator", "evaluate", "evaluate_many",
    "Inference", "default_mesh", "greedy_decode", "token_scores", "EvalResults", "aggregate",
    "format_table", "register_category", "task_category", "normalize", "suites",
]

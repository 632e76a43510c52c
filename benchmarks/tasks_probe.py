"""Learnability probe of the synthetic suite: pretrain -> instruction-tune -> experts.

Trains one size of the built-in decoder briefly and prints rank-classification accuracy
(validation) of the pretrained base, the instruction-tuned base and per-category experts, so a
change to a task generator can be checked for: expert >> base on its category, IT > PT on
held-out, neither at chance nor ceiling. A probe, not the world builder (short schedules).

  python benchmarks/tasks_probe.py --size=xs --categories=sentiment,mcqa --workdir=runs/probe
"""

import json
import time

from absl import app, flags

flags.DEFINE_string("size", "xs", "Model size (mergejax.models.SIZES).")
flags.DEFINE_string("workdir", "runs/tasks_probe", "Where checkpoints go (reused if complete).")
flags.DEFINE_list("categories", ["sentiment", "mcqa"], "Held-in categories to train experts for.")
flags.DEFINE_integer("pretrain_steps", 400, "Pretraining steps.")
flags.DEFINE_integer("instruct_steps", 900, "Instruction-tuning steps (the world's default).")
flags.DEFINE_integer("expert_steps", 150, "Expert fine-tuning steps.")
flags.DEFINE_integer("batch_size", 32, "Batch size (rows of 128 tokens).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import mergejax.tasks  # pylint: disable=g-import-not-at-top,unused-import
  from mergejax import models  # pylint: disable=g-import-not-at-top
  from mergejax.evaluation import adapter as adapter_lib, evaluator  # pylint: disable=g-import-not-at-top
  from mergejax.training import data, recipes, trainer  # pylint: disable=g-import-not-at-top

  vocab = data.padded_vocab_size(data.vocab_size("mj_pretrain"))
  cfg = models.get_config(FLAGS.size, vocab_size=vocab, max_len=128)
  lengths = {"inputs": 64, "targets": 64}
  t0 = time.time()

  def train(name, mixture, steps, lr, init=None):
    out = f"{FLAGS.workdir}/{FLAGS.size}/{name}"
    r = trainer.train(cfg, out, steps=steps, opt=trainer.OptimConfig(lr=lr, warmup_steps=min(30, steps // 10)),
                      batch_size=FLAGS.batch_size, feature_lengths=lengths, mixture=mixture, init_params=init,
                      progress=False)
    print(f"[{time.time() - t0:6.0f}s] {name}: loss {r.final_loss:.3f}, {r.tokens_per_s:,.0f} tokens/s", flush=True)
    return models.load_checkpoint(out)[1]

  adapter = adapter_lib.builtin_adapter(cfg)
  results = {}

  def score(name, params, mixture):
    res = evaluator.evaluate(params, mixture, "validation", adapter=adapter, batch_size=64)
    results[f"{name}/{mixture}"] = res.task_scores
    print(f"[{time.time() - t0:6.0f}s] {name:12s} {mixture}: "
          + ", ".join(f"{k.removesuffix('_rank')} {v:.1f}" for k, v in sorted(res.task_scores.items())), flush=True)

  pt = train("pretrained", "mj_pretrain", FLAGS.pretrain_steps, 3e-3)
  it = train("instruction_tuned", recipes.mixture_name("instruction_tune"), FLAGS.instruct_steps, 2e-3, pt)
  score("pretrained", pt, "mj_heldout_rank")
  score("instr_tuned", it, "mj_heldout_rank")
  for cat in FLAGS.categories:
    ex = train(f"expert_{cat}", f"mj_heldin_{cat}", FLAGS.expert_steps, 1e-3, pt)
    score("pretrained", pt, f"mj_heldin_{cat}_rank")
    score("expert", ex, f"mj_heldin_{cat}_rank")
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  app.run(main)

"""Fine-tuning a checkpoint of a Hugging Face family (Llama, Mistral, Qwen, Gemma) with mergejax's trainer.

    result = finetune("/ckpt/llama-1b", "/ckpt/llama-1b-sentiment", mixture="mj_heldin_sentiment", steps=2000)

The checkpoint is read by :func:`mergejax.models.from_pretrained` onto the training mesh (each tensor
sharded over it), the seqio mixture is tokenized with the checkpoint's own tokenizer
(:func:`mergejax.tasks.per_vocabulary.with_vocabulary`), and :func:`mergejax.training.trainer.train` runs
the same optimizer, schedule and loop as for the built-in decoder; the forward pass is the checkpoint's model
adapter. The result is a Hugging Face directory (``model.safetensors``, the source's ``config.json`` and
tokenizer files, ``mergejax_manifest.json`` with the training metadata) that ``from_pretrained``, a study
manifest and transformers all read. The experts of a study of one's own checkpoints can be made this way.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

from mergejax import models
from mergejax.tasks import per_vocabulary
from mergejax.training import recipes
from mergejax.training import trainer as trainer_lib


def finetune(source: str | os.PathLike, out: str | os.PathLike, *, mixture: str, steps: int,
             opt: trainer_lib.OptimConfig | None = None, batch_size: int = recipes.BATCH_SIZE,
             feature_lengths: Mapping[str, int] | None = None, seed: int = 0, dtype: Any = "float32",
             mesh: Any = None, checkpoint_every: int = 0, log_every: int = 10, progress: bool = True,
             info: Mapping[str, Any] | None = None) -> trainer_lib.TrainResult:
  """Fine-tunes the Hugging Face checkpoint ``source`` on ``mixture`` and writes ``out`` (skipped when complete).

  Args:
    source: a directory :func:`mergejax.models.from_pretrained` reads, of a Hugging Face family, with its
      tokenizer files.
    out: the output directory (written atomically).
    mixture: a registered seqio task or mixture (e.g. ``recipes.mixture_name("expert", "sentiment")``); its
      text is tokenized with the checkpoint's tokenizer.
    steps, opt, batch_size, feature_lengths, seed, checkpoint_every, log_every, progress: as for
      :func:`mergejax.training.trainer.train` (``opt`` defaults to the expert recipe's).
    dtype: the training (and saved) dtype of the parameters.
    mesh: the training mesh (default: every device on one "data" axis; the parameters are FSDP-sharded over it).
    info: extra metadata for the output's ``mergejax_manifest.json``.
  """
  if trainer_lib.family_output_complete(out):
    return trainer_lib.TrainResult(pathlib.Path(out).absolute(), skipped=True)
  mesh = trainer_lib.data_mesh() if mesh is None else mesh
  lm = models.from_pretrained(source, dtype=dtype, mesh=mesh)
  if lm.vocabulary is None:
    raise ValueError(f"{source}: no tokenizer files (tokenizer.json or tokenizer.model) to tokenize {mixture!r} with")
  model = trainer_lib.family_model(lm)
  if opt is None:
    d = {k: v for k, v in recipes.DEFAULTS["expert"].items() if k != "steps"}
    opt = trainer_lib.OptimConfig(**d)
  if mixture.startswith("t0_"):  # T0's tasks (over TFDS) register on first use, the synthetic suite's on import
    from mergejax.tasks import t0  # pylint: disable=g-import-not-at-top
    t0.ensure_registered()
  data = per_vocabulary.with_vocabulary(mixture, lm.vocabulary)
  lengths = dict(feature_lengths or recipes.FEATURE_LENGTHS)
  if sum(lengths.values()) > lm.config.max_len:
    raise ValueError(f"{source}: rows of {sum(lengths.values())} tokens exceed the model's "
                     f"max_position_embeddings {lm.config.max_len}")
  return trainer_lib.train(model, out, steps=steps, opt=opt, batch_size=batch_size, feature_lengths=lengths,
                           mixture=data, seed=seed, init_params=lm.params, checkpoint_every=checkpoint_every,
                           log_every=log_every, progress=progress, desc=pathlib.Path(out).name, mesh=mesh,
                           info={"source": str(pathlib.Path(source).absolute()), "mixture": mixture, **dict(info or {})})

r"""The training loop: AdamW with warmup + cosine decay and gradient clipping, one jitted train step
sharded over a data-parallel mesh, orbax CheckpointManager for resumption, tqdm progress.

AdamW is written as

.. math::
   u_t = \mathrm{Adam}_{\beta_1,\beta_2}(\mathrm{clip}_c(g_t)) + \lambda\,\theta_{t-1},\qquad
   \theta_t = \theta_{t-1} - \eta_t\,u_t

(``optax.chain(clip_by_global_norm, scale_by_adam, add_decayed_weights)``, i.e. ``optax.adamw``
with clipping), with :math:`\eta_t` from ``optax.warmup_cosine_decay_schedule`` evaluated on the
host and passed to the step as an argument. So one compiled step serves every run of a model size
(the world builder trains 20 models per size without re-tracing).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import shutil
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from mergejax import models
from mergejax.models import families, llamalike
from mergejax.models.adapter import ModelAdapter
from mergejax.training import data as data_lib

PyTree = Any


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW + schedule hyperparameters.

  Attributes:
    lr: peak learning rate.
    warmup_steps: linear warmup from 0 (clipped to steps - 1).
    min_lr_ratio: the cosine decays to ``lr * min_lr_ratio`` at the last step.
    b1, b2, eps: Adam moments.
    weight_decay: decoupled weight decay on matrices (not on norm scales).
    clip_norm: global gradient-norm clip.
  """

  lr: float = 1e-3
  warmup_steps: int = 20
  min_lr_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-8
  weight_decay: float = 0.01
  clip_norm: float = 1.0


def lr_schedule(opt: OptimConfig, steps: int) -> optax.Schedule:
  """Linear warmup to ``opt.lr``, cosine decay to ``opt.lr * opt.min_lr_ratio`` at ``steps``."""
  warmup = max(1, min(opt.warmup_steps, steps - 1))
  return optax.warmup_cosine_decay_schedule(0.0, opt.lr, warmup, max(steps, warmup + 1),
                                            opt.lr * opt.min_lr_ratio)


def data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D ("data",) mesh over all devices (Auto axes: GSPMD propagation)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


@dataclasses.dataclass(frozen=True)
class FamilyModel:
  """A decoder of a Hugging Face family (Llama, Mistral, Qwen, Gemma: :mod:`mergejax.models.llamalike`) to train.

  The model-specific half of training is the checkpoint's :class:`~mergejax.ModelAdapter`:
  batches come in seqio's token ids (tokenized with the checkpoint's own vocabulary) and the adapter's seqio
  view (:meth:`~mergejax.ModelAdapter.for_seqio`) maps them to the checkpoint's ids, puts its
  BOS in each segment's first slot and scores every position (``apply_packed``, with a mask that keeps the
  packed segments of a row apart). Build one with :func:`family_model`.

  Attributes:
    config: the decoder's config (its dtype is the training dtype).
    adapter: ``PretrainedLM.adapter`` (over the checkpoint's ids, with its seqio offset and BOS).
    source: the checkpoint directory whose config.json and tokenizer files the trained model carries.
  """

  config: llamalike.DecoderConfig
  adapter: ModelAdapter
  source: pathlib.Path

  @property
  def name(self) -> str:
    return self.config.family


def family_model(lm: models.PretrainedLM) -> FamilyModel:
  """The :class:`FamilyModel` of a :class:`mergejax.models.PretrainedLM` of a Hugging Face family."""
  if lm.config.layout != "hf":
    raise ValueError(f"{lm.path}: a built-in decoder checkpoint: train it with its models.ModelConfig")
  return FamilyModel(lm.config, lm.adapter, pathlib.Path(lm.path).absolute())


def segment_mask(segments_BxL: jax.Array) -> jax.Array:
  """Causal attention within each packed segment: query i sees key j <= i of the same segment (padding,
  segment 0, sees padding, so no row of the mask is empty)."""
  length = segments_BxL.shape[1]
  causal_LxL = jnp.tril(jnp.ones((length, length), jnp.bool_))
  return causal_LxL[None] & (segments_BxL[:, :, None] == segments_BxL[:, None, :])


class Trainer:
  """Compiled init / train step for one (model, optimizer constants, mesh).

  The model is the built-in decoder (a :class:`mergejax.models.ModelConfig`) or a Hugging Face family's
  decoder (:class:`FamilyModel`); only the forward pass, the parameter shapes and their shardings differ.
  Get one with :func:`get_trainer`, which caches it so every run of a size reuses the compiled step.
  """

  def __init__(self, config: models.ModelConfig | FamilyModel, opt: OptimConfig, mesh: jax.sharding.Mesh):
    self.config, self.mesh = config, mesh
    decay = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
    self.tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm),
                          optax.scale_by_adam(opt.b1, opt.b2, opt.eps),
                          optax.add_decayed_weights(opt.weight_decay, mask=decay))
    dummy = jnp.zeros((1, 8), jnp.int32)
    if isinstance(config, FamilyModel):
      cfg = config.config
      module = models.LlamaLike(cfg)
      self.param_shardings = {n: NamedSharding(mesh, families.partition_spec(cfg, n, s, mesh))
                              for n, s in models.param_shapes(cfg).items()}
      dtype = jnp.dtype(llamalike.DTYPES[cfg.dtype])
      self.abstract_params = {n: jax.ShapeDtypeStruct(s, dtype, sharding=self.param_shardings[n])
                              for n, s in models.param_shapes(cfg).items()}
      init = lambda rng: module.init(rng, dummy)["params"]
      self._logits = functools.partial(_family_logits, config.adapter.for_seqio())
    else:
      self.model = models.Decoder(config)
      boxed = jax.eval_shape(lambda: self.model.init(jax.random.key(0), dummy)["params"])
      with nn.logical_axis_rules(models.LOGICAL_RULES):
        self.param_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh,
                                                           models.LOGICAL_RULES)
      self.abstract_params = jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed),
          self.param_shardings)
      init = lambda rng: nn.unbox(self.model.init(rng, dummy)["params"])
      self._logits = lambda params, batch: self.model.apply(
          {"params": params}, batch["decoder_input_tokens"], batch["decoder_segment_ids"],
          batch["decoder_positions"])
    self.batch_sharding = NamedSharding(mesh, P("data"))
    self.replicated = NamedSharding(mesh, P())
    self._init = jax.jit(init, out_shardings=self.param_shardings)
    self._copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=self.param_shardings)
    self._opt_init = jax.jit(self.tx.init)
    self._state_shardings = None
    self._step = None

  # -- state ---------------------------------------------------------------------------------------

  def init_state(self, seed: int = 0, params: PyTree | None = None) -> dict[str, PyTree]:
    """A fresh train state: random params from ``seed``, or a *copy* of ``params`` (left intact)."""
    with jax.set_mesh(self.mesh):
      if params is None:
        p = self._init(jax.random.key(seed))
      else:
        models_paths = jax.tree.structure(self.abstract_params)
        if jax.tree.structure(params) != models_paths:
          raise ValueError("init params do not match the model's parameter tree "
                           f"({models_paths} vs {jax.tree.structure(params)})")
        p = self._copy(jax.device_put(params, self.param_shardings))
      state = {"params": p, "opt_state": self._opt_init(p), "step": jnp.zeros((), jnp.int32)}
    state["step"] = jax.device_put(state["step"], self.replicated)
    if self._state_shardings is None:
      self._state_shardings = jax.tree.map(lambda x: x.sharding, state)
    return state

  def abstract_state(self) -> PyTree:
    """ShapeDtypeStructs (with shardings) of the train state, for restoring."""
    if self._state_shardings is None:
      self.init_state()  # learns the optimizer state's shardings
    shapes = jax.eval_shape(lambda: {"params": self.abstract_params,
                                     "opt_state": self.tx.init(self.abstract_params),
                                     "step": jnp.zeros((), jnp.int32)})
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                        self._state_shardings)

  # -- step ----------------------------------------------------------------------------------------

  def _train_step(self, state, batch, lr):
    def loss_fn(params):
      logits_BxLxV = self._logits(params, batch)
      ce_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV,
                                                               batch["decoder_target_tokens"])
      w_BxL = batch["decoder_loss_weights"].astype(jnp.float32)
      n = jnp.sum(w_BxL)
      # where, not a product: a seqio view's logits are -inf in the columns of ids the checkpoint lacks
      # (id 0, padding's target, under a token offset), so padding's cross-entropy is inf.
      return jnp.sum(jnp.where(w_BxL > 0, ce_BxL * w_BxL, 0.0)) / jnp.maximum(n, 1.0), n

    (loss, n), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = jax.tree.map(lambda p, u: p - lr * u.astype(p.dtype), state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "loss_tokens": n}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  def step(self, state: PyTree, batch: Mapping[str, np.ndarray], lr: float):
    """One optimizer step on a global numpy batch; returns (new_state, metrics). Donates ``state``."""
    if self._step is None:
      self._step = jax.jit(self._train_step, donate_argnums=(0,),
                           out_shardings=(self._state_shardings, self.replicated))
    gbatch = {k: self.put_batch(v) for k, v in batch.items() if k in data_lib.FEATURES}
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(models.LOGICAL_RULES):
      return self._step(state, gbatch, jnp.float32(lr))

  def put_batch(self, x: np.ndarray) -> jax.Array:
    """A global batch array from this process's rows of the global numpy batch."""
    n, p = x.shape[0], jax.process_count()
    if n % len(self.mesh.devices.flat):
      raise ValueError(f"global batch size {n} is not divisible by the {self.mesh.size} devices")
    i = jax.process_index()
    local = x[i * n // p:(i + 1) * n // p]
    return jax.make_array_from_process_local_data(self.batch_sharding, local, x.shape)


def _family_logits(adapter: ModelAdapter, params: PyTree, batch: Mapping[str, jax.Array]) -> jax.Array:
  """Logits at every position of packed seqio rows, through the adapter's packed forward pass."""
  segments_BxL = batch["decoder_segment_ids"]
  gather_BxL = jnp.broadcast_to(jnp.arange(segments_BxL.shape[1], dtype=jnp.int32)[None], segments_BxL.shape)
  return adapter.apply_packed(params, batch["decoder_input_tokens"], batch["decoder_positions"],
                              segment_mask(segments_BxL), gather_BxL)


_TRAINERS: dict[tuple, Trainer] = {}
_TRAINERS_LOCK = threading.Lock()  # the world builder trains on several devices from several threads


def get_trainer(config: models.ModelConfig, opt: OptimConfig, mesh: jax.sharding.Mesh | None = None
                ) -> Trainer:
  """A cached :class:`Trainer`; only the optimizer's constants (not lr / schedule) are part of the key."""
  mesh = data_mesh() if mesh is None else mesh
  key = (config, opt.b1, opt.b2, opt.eps, opt.weight_decay, opt.clip_norm,
         tuple(d.id for d in mesh.devices.flat), mesh.axis_names)
  with _TRAINERS_LOCK:
    if key not in _TRAINERS:
      _TRAINERS[key] = Trainer(config, opt, mesh)
    return _TRAINERS[key]


@dataclasses.dataclass
class TrainResult:
  """What :func:`train` did."""

  path: pathlib.Path
  skipped: bool = False
  steps: int = 0
  resumed_from: int = 0
  losses: list[tuple[int, float]] = dataclasses.field(default_factory=list)
  tokens_per_s: float = 0.0
  seconds: float = 0.0

  @property
  def final_loss(self) -> float:
    return self.losses[-1][1] if self.losses else float("nan")


def _train_dir(out: pathlib.Path) -> pathlib.Path:
  return out.parent / f".{out.name}.train"


def family_output_complete(out: str | pathlib.Path) -> bool:
  """Whether ``out`` holds a Hugging Face directory mergejax finished writing (written atomically)."""
  from mergejax.checkpoints import output as output_lib  # pylint: disable=g-import-not-at-top  (checkpoint I/O)
  return output_lib.written_by_mergejax(out) and (pathlib.Path(out) / "config.json").is_file()


def is_complete(config: models.ModelConfig | FamilyModel, out: str | pathlib.Path) -> bool:
  """Whether ``out`` holds the finished output of a run of ``config``."""
  return family_output_complete(out) if isinstance(config, FamilyModel) else models.is_complete(out)


def train(config: models.ModelConfig | FamilyModel, out_dir: str | pathlib.Path, *, steps: int, opt: OptimConfig,
          batch_size: int, feature_lengths: Mapping[str, int] | None = None,
          mixture: str | None = None, batches: Sequence[Mapping[str, np.ndarray]] | None = None,
          seed: int = 0, init_params: PyTree | None = None, checkpoint_every: int = 0,
          log_every: int = 10, progress: bool = True, desc: str = "",
          info: Mapping[str, Any] | None = None, on_step: Callable[[int, Mapping[str, float]], None] | None = None,
          mesh: jax.sharding.Mesh | None = None, position: int | None = None) -> TrainResult:
  """Trains ``config`` for ``steps`` steps and writes the final params to ``out_dir`` (atomically): a built-in
  decoder checkpoint, or for a :class:`FamilyModel` a Hugging Face directory (``model.safetensors``, the source's
  config.json and tokenizer files, ``mergejax_manifest.json`` with the run's metadata) that
  :func:`mergejax.models.from_pretrained` and transformers read.

  Skips the run when ``out_dir`` already holds a complete checkpoint. With ``checkpoint_every > 0``
  the full train state is saved every that many steps under ``.<name>.train`` beside ``out_dir``
  (orbax CheckpointManager) and a killed run resumes from the latest one, replaying the same data.

  Args:
    config: the built-in decoder's config (its vocab_size must cover the data's vocabulary), or a
      :class:`FamilyModel` (data tokenized with its checkpoint's vocabulary; see
      :func:`mergejax.training.finetune.finetune`), which needs ``init_params``.
    out_dir: final checkpoint directory.
    steps: optimizer steps.
    opt: optimizer hyperparameters.
    batch_size: global batch (rows); divisible by the number of devices.
    feature_lengths: seqio task feature lengths, e.g. {"inputs": 96, "targets": 32}.
    mixture: seqio task/mixture to stream batches from (with ``seed``), or
    batches: pre-materialized batches (at least ``steps``; see ``data.materialize``).
    seed: data order and (without ``init_params``) parameter init.
    init_params: start from these params (they are copied, not consumed).
    checkpoint_every: save a resumable state every this many steps (0: never).
    log_every: how often the loss is fetched for the history and progress bar.
    progress: show a tqdm bar with loss and tokens/s.
    desc: progress-bar label.
    info: extra metadata stored in ``train_info.json`` (``mergejax_manifest.json`` for a FamilyModel).
    on_step: called as ``on_step(step, metrics)`` after each logged step (after any checkpoint).
    mesh: device mesh (default: all devices on one "data" axis).
    position: tqdm line of the progress bar (concurrent runs each get their own line).
  """
  out = pathlib.Path(out_dir).absolute()
  if is_complete(config, out):
    return TrainResult(out, skipped=True)
  if isinstance(config, FamilyModel) and init_params is None:
    raise ValueError(f"train: the {config.name} model of {config.source} needs init_params (its loaded params)")
  if out.exists() or out.is_symlink():
    raise ValueError(f"{out}: exists but is not a complete model checkpoint; mergejax did not write it "
                     "(its checkpoints appear complete or not at all), so it is left alone: remove it to "
                     "train this run")
  if (mixture is None) == (batches is None):
    raise ValueError("train: pass exactly one of mixture= or batches=")
  if batches is not None and len(batches) < steps:
    raise ValueError(f"train: {len(batches)} batches given for {steps} steps")
  trainer = get_trainer(config, opt, mesh)
  schedule = lr_schedule(opt, steps)
  tdir = _train_dir(out)

  mngr = None
  start = 0
  if checkpoint_every > 0:
    with models.ORBAX_LOCK:
      mngr = ocp.CheckpointManager(tdir, options=ocp.CheckpointManagerOptions(
          max_to_keep=1, save_interval_steps=checkpoint_every, enable_async_checkpointing=False,
          create=True))
  if mngr is not None and mngr.latest_step() is not None:
    start = int(mngr.latest_step())
    with models.ORBAX_LOCK:  # orbax is not thread-safe; the world builder trains runs in threads
      state = mngr.restore(start, args=ocp.args.StandardRestore(trainer.abstract_state()))
  else:
    state = trainer.init_state(seed=seed, params=init_params)

  if batches is not None:
    it: Iterator = iter(batches[start:steps])
  else:
    if feature_lengths is None:
      raise ValueError("train: feature_lengths is required with mixture=")
    it = data_lib.batches(mixture, batch_size=batch_size, feature_lengths=feature_lengths, seed=seed,
                          skip=start)

  result = TrainResult(out, steps=steps, resumed_from=start)
  t_first = time.perf_counter()
  timed_tokens, timed_from = 0, None
  bar = tqdm(total=steps, initial=start, desc=desc or out.name, disable=not progress,
             dynamic_ncols=True, leave=False, position=position)
  for step in range(start, steps):
    batch = next(it)
    state, metrics = trainer.step(state, batch, float(schedule(step + 1)))
    n_tok = int(np.prod(batch["decoder_input_tokens"].shape))
    if step == start:  # first step includes compilation: time from after it
      jax.block_until_ready(metrics["loss"])
      timed_from = time.perf_counter()
    else:
      timed_tokens += n_tok
    done = step + 1
    if mngr is not None and done % checkpoint_every == 0 and done < steps:
      with models.ORBAX_LOCK:
        mngr.save(done, args=ocp.args.StandardSave(state))
    if done % log_every == 0 or done == steps:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      result.losses.append((done, m["loss"]))
      dt = time.perf_counter() - timed_from if timed_from else 0.0
      tps = timed_tokens / dt if dt > 0 and timed_tokens else 0.0
      bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
      if on_step is not None:
        on_step(done, m)
    bar.update(1)
  bar.close()
  jax.block_until_ready(state["params"])
  t_end = time.perf_counter()
  if timed_from is not None and timed_tokens:
    result.tokens_per_s = timed_tokens / max(t_end - timed_from, 1e-9)
  result.seconds = t_end - t_first

  meta = {"steps": steps, "batch_size": batch_size, "seed": seed, "optim": dataclasses.asdict(opt),
          "final_loss": result.final_loss, "tokens_per_s": result.tokens_per_s,
          "mixture": mixture, **dict(info or {})}
  meta = json.loads(json.dumps(meta, default=str))
  if isinstance(config, FamilyModel):
    from mergejax.models import pretrained  # pylint: disable=g-import-not-at-top  (imports seqio, TensorFlow)
    pretrained.save_family(state["params"], config.source, out, family=config.name, info={"training": meta})
  else:
    models.save_checkpoint(out, config, state["params"], info=meta,
                           overwrite=False,  # nothing is at `out` (checked above)
                           tokenizer_model=data_lib.sentencepiece_file(mixture) if mixture is not None else None)
  if mngr is not None:
    with models.ORBAX_LOCK:
      mngr.close()
  if jax.process_index() == 0:
    shutil.rmtree(tdir, ignore_errors=True)
  return result

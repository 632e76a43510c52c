"""Tiny checkpoints of every model family, their weights from a seed, and transformers' outputs on them.

Weights come from NumPy (seeded by tensor name), so they are the same with or without torch. With torch
and transformers installed, :func:`reference` builds the transformers model from the same config.json and
weights (a strict load: the names and shapes are transformers' own) and computes its float32 logits, greedy
continuations and rank-classification scores. The golden fixtures in tests/fixtures/models hold those
outputs, so the parity tests also run where torch is absent. Regenerate them with

    PYTHONPATH=. .venv/bin/python tests/model_zoo.py
"""

from __future__ import annotations

import json
import pathlib
import zlib

import numpy as np

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "models"

_BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, torch_dtype="float32")

CONFIGS = {
    # Llama 3.1 RoPE scaling, transformers 4 spelling; original context 64 puts frequencies in all three bands.
    "llama": dict(_BASE, model_type="llama", architectures=["LlamaForCausalLM"], rope_theta=500000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=[2, 3]),
    # Tied embeddings, attention and MLP biases, transformers 5 spelling of the RoPE settings.
    "llama_tied": dict(_BASE, model_type="llama", architectures=["LlamaForCausalLM"],
                       rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
                       tie_word_embeddings=True, attention_bias=True, mlp_bias=True, bos_token_id=1, eos_token_id=2),
    "mistral": dict(_BASE, model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=4,
                    rope_theta=10000.0, bos_token_id=1, eos_token_id=2),
    "qwen2": dict(_BASE, model_type="qwen2", architectures=["Qwen2ForCausalLM"], tie_word_embeddings=True,
                  use_sliding_window=True, sliding_window=4, max_window_layers=1, rope_theta=1000000.0,
                  bos_token_id=None, eos_token_id=5),
    "qwen3": dict(_BASE, model_type="qwen3", architectures=["Qwen3ForCausalLM"], head_dim=16, rope_theta=1000000.0,
                  tie_word_embeddings=False, eos_token_id=5),
    "gemma2": dict(_BASE, model_type="gemma2", architectures=["Gemma2ForCausalLM"], num_hidden_layers=3, head_dim=8,
                   hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=16, sliding_window=4,
                   final_logit_softcapping=3.0, attn_logit_softcapping=5.0, rope_theta=10000.0, rms_norm_eps=1e-6,
                   bos_token_id=2, eos_token_id=1, pad_token_id=0),
    "gemma3_text": dict(_BASE, model_type="gemma3_text", architectures=["Gemma3ForCausalLM"], num_hidden_layers=3,
                        head_dim=8, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=8, sliding_window=4,
                        sliding_window_pattern=2, rope_theta=1000000.0, rope_local_base_freq=10000.0,
                        rope_scaling={"rope_type": "linear", "factor": 8.0}, rms_norm_eps=1e-6,
                        bos_token_id=2, eos_token_id=1, pad_token_id=0),
}

# Inputs of the parity checks: two rows of 12 tokens (longer than every sliding window of 4).
TOKENS = np.array([[1, 17, 42, 9, 33, 8, 61, 25, 4, 50, 13, 29], [1, 5, 5, 38, 20, 47, 11, 2, 59, 31, 44, 7]],
                  np.int32)
PROMPTS = np.array([[1, 30, 12, 45], [1, 9, 27, 3]], np.int32)  # greedy continuation prompts
GREEDY_STEPS = 16
# Rank classification: (prompt, [choices]) in token ids.
RANK_EXAMPLES = [
    ([1, 40, 22, 7, 19], [[12, 3], [55], [8, 8, 31]]),
    ([1, 6, 60], [[14], [27, 52], [33, 9], [2]]),
    ([1, 58, 16, 23, 41, 10], [[44, 39, 5], [21]]),
]


def weights(family: str, config: dict | None = None) -> dict[str, np.ndarray]:
  """Random float32 weights of ``family``'s tiny config (or ``config``), the same on every machine (seeded by
  name)."""
  from mergejax.models import families, llamalike  # pylint: disable=g-import-not-at-top
  cfg = families.parse_hf_config(config or CONFIGS[family], where=family)
  out = {}
  for name, shape in llamalike.param_shapes(cfg).items():
    rng = np.random.default_rng(zlib.crc32(f"{family}:{name}".encode()))
    if name.endswith("embed_tokens.weight"):
      w = rng.standard_normal(shape)
    elif len(shape) == 2:
      w = rng.standard_normal(shape) * shape[1] ** -0.5
    elif name.endswith("bias"):
      w = 0.1 * rng.standard_normal(shape)
    else:  # norm scales: around 1 (Gemma stores w of 1 + w)
      w = (0.0 if cfg.norm_plus_one else 1.0) + 0.1 * rng.standard_normal(shape)
    out[name] = w.astype(np.float32)
  return out


def write_checkpoint(family: str, directory: pathlib.Path, dtype=np.float32, config: dict | None = None
                     ) -> pathlib.Path:
  """A Hugging Face directory (config.json + model.safetensors) of ``family``'s tiny model (or of ``config``)."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  directory.mkdir(parents=True, exist_ok=True)
  dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
  (directory / "config.json").write_text(json.dumps(config or CONFIGS[family], indent=2))
  w = weights(family, config)
  if dtype != np.float32:
    w = {k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}
  save_file(w, str(directory / "model.safetensors"), metadata={"format": "pt"})
  return directory


def torch_model(family: str, directory: pathlib.Path):
  """transformers' model of a checkpoint written by :func:`write_checkpoint` (float32, eager attention)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  config = transformers.AutoConfig.from_pretrained(str(directory))
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                                        dtype=torch.float32)
  state = {k: torch.from_numpy(v.copy()) for k, v in weights(family).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  allowed = {"lm_head.weight"} if CONFIGS[family].get("tie_word_embeddings", family.startswith("gemma")) else set()
  if set(missing) - allowed or unexpected:
    raise AssertionError(f"{family}: transformers' names differ: missing {missing}, unexpected {unexpected}")
  return model.eval()


def _greedy_torch(model, prompt):
  """GREEDY_STEPS argmax tokens after ``prompt``, decoding with transformers' KV cache (no EOS stop)."""
  out = model(prompt, use_cache=True)
  cache, toks = out.past_key_values, []
  nxt = out.logits[:, -1].argmax(-1, keepdim=True)
  for _ in range(GREEDY_STEPS):
    toks.append(nxt)
    out = model(nxt, past_key_values=cache, use_cache=True)
    cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
  return np.concatenate([t.numpy() for t in toks], axis=1).astype(np.int32)


def rank_scores_torch(model) -> list[list[float]]:
  import torch  # pylint: disable=g-import-not-at-top
  out = []
  with torch.no_grad():
    for prompt, choices in RANK_EXAMPLES:
      row = []
      for c in choices:
        ids = torch.tensor([prompt + c])
        logp = torch.log_softmax(model(ids).logits.float(), -1)[0]
        row.append(float(sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(c))))
      out.append(row)
  return out


def reference(family: str, directory: pathlib.Path) -> dict[str, np.ndarray]:
  """transformers' float32 logits on TOKENS, greedy continuations of PROMPTS (KV cache) and rank scores."""
  import torch  # pylint: disable=g-import-not-at-top
  model = torch_model(family, directory)
  with torch.no_grad():
    logits = model(torch.from_numpy(TOKENS.astype(np.int64))).logits.float().numpy()
    greedy = _greedy_torch(model, torch.from_numpy(PROMPTS.astype(np.int64)))
  scores = rank_scores_torch(model)
  flat = np.array([s for row in scores for s in row], np.float64)
  return {"logits": logits.astype(np.float32), "greedy": greedy, "rank_scores": flat}


def golden(family: str) -> dict[str, np.ndarray]:
  with np.load(FIXTURES / f"{family}.npz") as z:
    return {k: z[k] for k in z.files}


def main() -> None:
  import tempfile  # pylint: disable=g-import-not-at-top
  FIXTURES.mkdir(parents=True, exist_ok=True)
  for family in CONFIGS:
    with tempfile.TemporaryDirectory() as tmp:
      ref = reference(family, write_checkpoint(family, pathlib.Path(tmp)))
    np.savez_compressed(FIXTURES / f"{family}.npz", **ref)
    print(family, {k: v.shape for k, v in ref.items()})


if __name__ == "__main__":
  main()

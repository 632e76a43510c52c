"""PEFT LoRA adapters as inputs: the adapted model equals PEFT's merge_and_unload() (linear and embedding
LoRA, rank_pattern / alpha_pattern, modules_to_save; GPT-2 Conv1D with fan_in_fan_out, lora_bias and
rsLoRA), and a merge with a LoRA expert equals the merge with PEFT's merged checkpoint."""

import json

import numpy as np
import pytest

from mergejax.checkpoints import CheckpointError, open_source
from mergejax.cli import merge as merge_cli
from test_checkpoints_fixtures import bits
from test_cli_merge import _cfg

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def _randomize_lora(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "lora_" in n:
        p.copy_(0.05 * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))


def _lora_world(root, model_fn, lora_kwargs, dtype, seed=0):
  torch.manual_seed(seed)
  base = model_fn().to(dtype)
  base.save_pretrained(root / "base", safe_serialization=True)
  lcfg = peft.LoraConfig(init_lora_weights=False, **lora_kwargs)
  pm = peft.get_peft_model(model_fn().to(dtype).requires_grad_(False), lcfg)
  pm.base_model.model.load_state_dict(base.state_dict(), strict=False)
  _randomize_lora(pm, seed + 1)
  if lora_kwargs.get("modules_to_save"):
    with torch.no_grad():
      for n, p in pm.named_parameters():
        if "modules_to_save" in n:
          p.add_(0.1)
  pm.save_pretrained(root / "lora")
  reloaded = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(root / "base", dtype=dtype),
                                            root / "lora")
  reloaded.merge_and_unload().save_pretrained(root / "peft_merged", safe_serialization=True)
  return root / "base", root / "lora", root / "peft_merged"


def _llama():
  cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=96, max_position_embeddings=64)
  return transformers.LlamaForCausalLM(cfg)


def _gpt2():
  cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=96, n_positions=64)
  return transformers.GPT2LMHeadModel(cfg)


LLAMA_LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
                  rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3}, modules_to_save=["lm_head"])
GPT2_LORA = dict(r=4, lora_alpha=6, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, lora_bias=True,
                 use_rslora=True)


def _read(src):
  return {s.path: np.asarray(src.read([s.path])[s.path]) for s in src.specs()}


@pytest.mark.parametrize("arch,dtype", [("llama", torch.bfloat16), ("llama", torch.float32), ("gpt2", torch.float32)])
def test_adapter_applied_equals_peft_merge_and_unload(tmp_path, arch, dtype):
  base, lora, merged = _lora_world(tmp_path, _llama if arch == "llama" else _gpt2,
                                   LLAMA_LORA if arch == "llama" else GPT2_LORA, dtype)
  adapted = _read(open_source(lora, base=open_source(base)))
  want = _read(open_source(merged))
  assert sorted(adapted) == sorted(want)
  changed = 0
  for k, w in want.items():
    got = adapted[k]
    assert got.dtype == w.dtype and got.shape == w.shape, k
    np.testing.assert_array_equal(bits(got), bits(w), err_msg=k)
    changed += not np.array_equal(got, np.asarray(open_source(base).read([k])[k]))
  assert changed >= (7 if arch == "llama" else 4)  # q, v, down (x2 layers) + embed + lm_head; c_attn/c_fc (+bias)


def test_merge_with_lora_expert_equals_merge_with_peft_merged_model(tmp_path):
  base, lora, merged = _lora_world(tmp_path, _llama, LLAMA_LORA, torch.bfloat16)
  torch.manual_seed(5)
  full = _llama().to(torch.bfloat16)
  full.save_pretrained(tmp_path / "full", safe_serialization=True)
  cfg = _cfg(method__name="task_arithmetic", method__lam=0.7)
  a = merge_cli.merge_checkpoints(str(base), [str(lora), str(tmp_path / "full")], str(tmp_path / "with_lora"), cfg)
  b = merge_cli.merge_checkpoints(str(base), [str(merged), str(tmp_path / "full")], str(tmp_path / "with_peft"), cfg)
  ga, gb = _read(open_source(a)), _read(open_source(b))
  for k in gb:
    np.testing.assert_array_equal(bits(ga[k]), bits(gb[k]), err_msg=k)
  man = json.loads((a / "mergejax_manifest.json").read_text())
  assert [i["name"] for i in man["inputs"]][1] == str(lora)


def test_lora_without_base_or_with_unsupported_variant_is_one_line(tmp_path):
  base, lora, _ = _lora_world(tmp_path, _llama, dict(r=2, lora_alpha=2, target_modules=["q_proj"]), torch.float32)
  with pytest.raises(CheckpointError, match="is not a full model: give its base model"):
    merge_cli.merge_checkpoints(None, [str(lora), str(base)], str(tmp_path / "o"), _cfg(method__name="average"))
  cfg = json.loads((lora / "adapter_config.json").read_text())
  (lora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
  with pytest.raises(CheckpointError) as err:
    merge_cli.merge_checkpoints(str(base), [str(lora)], str(tmp_path / "o"), _cfg(method__name="task_arithmetic"))
  assert "DoRA adapters (use_dora) are not supported" in str(err.value) and "\n" not in str(err.value)
  assert not (tmp_path / "o").exists()

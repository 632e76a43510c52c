"""mergejax-yaml: mergekit recipes parsed with mergekit's semantics (precedence, gradients, filters, method
mapping), every unsupported key refused in one line, and merges equal to a float32 NumPy transcription of
mergekit 0.1.5 (generalized_task_arithmetic.py, sparsify.py, linear.py; dtype float32, out bf16), apart
from entries at a TIES trim threshold (mergekit keeps exactly k by sort order, mergejax every tie); every other
mergekit method through a recipe gives what mergejax.merge gives with the mapped hyperparameters."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mergejax.checkpoints import open_source
from mergejax.recipes import mergekit as mk
from mergejax.recipes import run as run_lib
from test_checkpoints_fixtures import bits

REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ parsing and semantics (no files)


def _plan(text):
  return mk.plan(mk.parse(text))


def test_gradient_interpolation_and_filters_follow_mergekit():
  s = mk.parse_setting("p", [0.0, 0.5, 1.0, 0.0])
  # t = i / (n - 1); s = t (len - 1); (1 - f) v[floor s] + f v[floor s + 1]
  for t, want in [(0.0, 0.0), (1 / 3, 0.5), (0.5, 0.75), (2 / 3, 1.0), (1.0, 0.0), (0.25, 0.375)]:
    assert mk.evaluate(s, "x", t, float, "p") == pytest.approx(want, abs=1e-15)
  assert mk.evaluate(mk.parse_setting("p", [True, False]), "x", 0.6, bool, "p") is True  # index int(0.6)
  cond = mk.parse_setting("p", [{"filter": "mlp", "value": [1.0, 3.0]}, {"filter": "self_attn", "value": 7},
                                {"value": 9}])
  assert mk.evaluate(cond, "model.layers.1.mlp.up_proj.weight", 0.5, float, "p") == 2.0
  assert mk.evaluate(cond, "model.layers.1.self_attn.q_proj.weight", 0.5, float, "p") == 7.0
  assert mk.evaluate(cond, "model.norm.weight", 0.5, float, "p") == 9.0
  only = mk.parse_setting("p", {"filter": "mlp", "value": 2})
  assert mk.evaluate(only, "lm_head.weight", 0.0, float, "p") is None  # falls through to the next level
  assert mk.evaluate(mk.parse_setting("p", "1e-3"), "x", 0, float, "p") == 0.001
  assert mk.layer_t("model.layers.3.mlp.up_proj.weight", 4) == 1.0 and mk.layer_t("model.norm.weight", 4) == 0.0
  assert mk.layer_t("model.layers.0.mlp.up_proj.weight", 1) == 1.0


RECIPE = """
merge_method: ties
base_model: b
models:
  - model: e1
    parameters: {weight: [0.0, 1.0], density: 0.4}
  - model: e2
    parameters:
      weight: [{filter: mlp, value: 0.25}]
parameters: {weight: 0.5, density: 0.6, lambda: 0.8, normalize: false}
"""


def test_precedence_model_then_global_then_default():
  pl = _plan(RECIPE)
  assert pl.method == "ties" and str(pl.base) == "b" and [str(x) for x in pl.inputs] == ["e1", "e2"]
  # e1: own gradient at t=0.5; e2: its filter does not match -> global weight; density differs per model
  with pytest.raises(mk.RecipeError, match="different densities"):
    mk.leaf_hparams(pl, "model.layers.1.self_attn.q_proj.weight", 0.5)
  pl2 = _plan(RECIPE.replace("density: 0.4", "density: 0.6"))
  hp = mk.leaf_hparams(pl2, "model.layers.1.self_attn.q_proj.weight", 0.5)
  assert hp == {"lam": 0.8, "weights": [0.5, 0.5], "aggregate": "sum", "sign": "sum", "scope": "tensor",
                "density": 0.6}
  assert mk.leaf_hparams(pl2, "model.layers.1.mlp.up_proj.weight", 1.0)["weights"] == [1.0, 0.25]
  dflt = _plan("merge_method: ties\nbase_model: b\nmodels: [{model: e1, parameters: {weight: 1}}]\n")
  assert mk.leaf_hparams(dflt, "w", 0) == {"lam": 1.0, "weights": [1.0], "aggregate": "mean", "sign": "sum",
                                           "scope": "tensor", "density": 1.0}


def test_method_mapping():
  lin = _plan("merge_method: linear\nbase_model: b\nmodels: [{model: a, parameters: {weight: 2}}, "
              "{model: b, parameters: {weight: 1}}]\n")
  assert lin.method == "average" and lin.base is None and [str(x) for x in lin.inputs] == ["a", "b"]
  assert mk.leaf_hparams(lin, "w", 0) == {"weights": [2.0, 1.0]}
  ta = _plan("merge_method: task_arithmetic\nbase_model: b\nparameters: {normalize: true, weight: 1}\n"
             "models: [{model: a, parameters: {weight: 3}}, {model: c}]\n")
  assert mk.leaf_hparams(ta, "w", 0) == {"lam": 1.0, "weights": [0.75, 0.25]}
  dare = _plan("merge_method: dare_ties\nbase_model: b\nmergejax: {dare: paper, scope: global}\n"
               "models: [{model: a, parameters: {weight: 1, density: 0.3}}]\n")
  hp = mk.leaf_hparams(dare, "w", 0)
  assert hp["drop_rate"] == pytest.approx(0.7) and hp["density"] == 1.0 and hp["scope"] == "global"
  assert hp["aggregate"] == "sum"
  lora = _plan("merge_method: task_arithmetic\nbase_model: b\nmodels: [{model: b+ad, parameters: {weight: 1}}]\n")
  assert lora.inputs[0].path == "b" and lora.inputs[0].lora == "ad"


@pytest.mark.parametrize("text,msg", [
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a}]\nfoo: 1\n", "foo: unknown key"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, weight: 1}]\n", "models[0].weight: unknown key"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {densty: 0.2}}]\n",
     "models[0].parameters.densty: ties has no parameter 'densty'"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {lambda: 2}}]\n",
     "models[0].parameters.lambda: lambda applies to the whole merge"),
    ("merge_method: model_soup\nbase_model: b\nmodels: [{model: a}]\n", "merge_method: 'model_soup' is not "
     "available in mergejax yet"),
    ("merge_method: dare_ties\nbase_model: b\nmodels: [{model: a}]\n", "add `mergejax: {dare: paper}`"),
    ("merge_method: ties\nmodels: [{model: a}]\n", "base_model: required by ties"),
    ("merge_method: ties\nbase_model: b\nmodules: {text: {models: [{model: a}]}}\n", "modules: multi-module merges"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a}]\ndtype: int8\n", "dtype: 'int8' is not one of"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a}]\ntokenizer_source: base\ntokenizer: {source: union}\n",
     "give one of them, not both"),
    ("merge_method: linear\nmodels: [{model: a}]\nmergejax: {scope: global}\n", "mergejax.scope: linear has no scope"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a}]\nmergejax: {seed: x, fast: 1}\n", "mergejax.fast"),
    ("merge_method: ties\nbase_model: b\nslices: [{sources: [{model: a, layer_range: [0, 2]}]}, "
     "{sources: [{model: a, layer_range: [2, 4]}]}]\n", "slices[0].sources: ties needs base_model b among the sources"),
    ("merge_method: ties\n  base_model: [\n", "not valid YAML at line"),
])
def test_unsupported_keys_are_one_line_naming_the_key(text, msg):
  with pytest.raises(mk.RecipeError) as err:
    _plan(text)
  assert msg in str(err.value) and "\n" not in str(err.value)


def test_per_tensor_errors_name_the_key():
  pl = _plan("merge_method: ties\nbase_model: b\nmodels: [{model: a}]\n")
  with pytest.raises(mk.RecipeError, match=r"models\[0\]: parameter 'weight' is required for tensor 'w'"):
    mk.leaf_hparams(pl, "w", 0)
  pl = _plan("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1}}]\n"
             "parameters: {rescale: true}\n")
  with pytest.raises(mk.RecipeError, match="parameters.rescale: ties with rescale"):
    mk.leaf_hparams(pl, "w", 0)
  pl = _plan("merge_method: linear\nmodels: [{model: a, parameters: {weight: x}}]\n")
  with pytest.raises(mk.RecipeError, match=r"models\[0\].parameters.weight: 'x' is not a number"):
    mk.leaf_hparams(pl, "w", 0)


# ------------------------------------------------------------------ merges vs mergekit's formulas

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
  root = tmp_path_factory.mktemp("llamas")
  cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=64, max_position_embeddings=32)
  torch.manual_seed(0)
  base = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
  base.save_pretrained(root / "base")
  for i in range(3):
    m = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():
      for p, q in zip(m.parameters(), base.parameters()):
        p.copy_(q + 0.02 * torch.randn(q.shape, generator=torch.Generator().manual_seed(i + 1)).to(torch.bfloat16))
    m.save_pretrained(root / f"e{i}")
  return root


def _load(d):
  src = open_source(d)
  return {s.path: np.asarray(src.read([s.path])[s.path]) for s in src.specs()}


def _kit_gta(base, xs, w, density, lam, normalize, consensus):
  """mergekit's GTATask.merge_group for one tensor in float32 (deltas, magnitude top-k, weights, sign
  by sum, masked sum, divisor, lambda)."""
  base = base.astype(np.float32)
  deltas = []
  for x in xs:
    d = x.astype(np.float32) - base
    if density < 1:
      k = max(1, int(density * d.size))
      keep = np.zeros(d.size, np.float32)
      keep[np.argsort(-np.abs(d).reshape(-1), kind="stable")[:k]] = 1
      d = d * keep.reshape(d.shape)
    deltas.append(d)
  wd = [d * np.float32(wi) for d, wi in zip(deltas, w)]
  if consensus:
    sign = np.where(sum(wd) >= 0, np.float32(1), np.float32(-1))
    mask = [(np.sign(d) == sign).astype(np.float32) for d in wd]
    mixed = sum(d * m for d, m in zip(wd, mask))
    div = sum(np.float32(wi) * m for wi, m in zip(w, mask))
    div[div == 0] = 1
  else:
    mixed = sum(wd)
    div = np.float32(sum(np.float32(x) for x in w))
    div = div if abs(div) >= 1e-8 else np.float32(1)
  if normalize:
    mixed = mixed / div
  if lam != 1:
    mixed = mixed * np.float32(lam)
  return base + mixed


def _at_threshold(base, xs, density):
  out = np.zeros(base.shape, bool)
  for x in xs:
    a = np.abs(x.astype(np.float32) - base.astype(np.float32))
    k = max(1, int(density * a.size))
    out |= a == np.sort(a.reshape(-1))[::-1][k - 1]
  return out


def _run(text, out, **kw):
  return run_lib.run(mk.plan(mk.parse(text)), str(out), **kw)


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties"])
def test_merge_equals_mergekit_formulas_with_gradients_and_filters(llamas, tmp_path, method):
  density = 0.4 if method == "ties" else 1.0
  text = f"""
merge_method: {method}
base_model: {llamas / 'base'}
models:
  - model: {llamas / 'e0'}
    parameters: {{weight: [0.2, 1.0, 0.6]{', density: 0.4' if method == 'ties' else ''}}}
  - model: {llamas / 'e1'}
    parameters:
      weight: [{{filter: mlp, value: 0.3}}, {{filter: self_attn, value: [1.0, 0.5]}}, {{value: 0.7}}]
{'      density: 0.4' if method == 'ties' else ''}
  - model: {llamas / 'e2'}
    parameters: {{weight: 1.0{', density: 0.4' if method == 'ties' else ''}}}
{'  - model: ' + str(llamas / 'base') + chr(10) + '    parameters: {weight: 0.5}' if method == 'linear' else ''}
dtype: float32
out_dtype: bfloat16
"""
  out = _run(text, tmp_path / "o")
  got = _load(out)
  b = _load(llamas / "base")
  xs = [_load(llamas / f"e{i}") for i in range(3)]
  n_layers = 3
  n_thr = n_other = 0
  for k, g in got.items():
    t = mk.layer_t(k, n_layers)
    w0 = 0.2 + (1.0 - 0.2) * 0 if t == 0 else None
    s = t * 2
    i0 = int(s)
    w0 = (1 - (s - i0)) * [0.2, 1.0, 0.6][i0] + (s - i0) * [0.2, 1.0, 0.6][min(2, i0 + 1)]
    w1 = 0.3 if "mlp" in k else ((1 - t) * 1.0 + t * 0.5) if "self_attn" in k else 0.7
    w = [w0, w1, 1.0]
    if method == "linear":
      ins, ws = [x[k] for x in xs] + [b[k]], w + [0.5]
      acc = np.zeros(g.shape, np.float32)  # torch's addcmul_: one fused multiply-add per input
      for x, wi in zip(ins, ws):
        acc = (acc.astype(np.float64) + x.astype(np.float64) * np.float64(np.float32(wi))).astype(np.float32)
      want = acc / np.float32(sum(np.float32(x) for x in ws))
    else:
      want = _kit_gta(b[k], [x[k] for x in xs], w, density, 1.0, method == "ties", method == "ties")
    diff = bits(want.astype(g.dtype)).reshape(g.shape + (-1,)) != bits(g).reshape(g.shape + (-1,))
    diff = diff.any(-1)
    if method == "ties":
      thr = _at_threshold(b[k], [x[k] for x in xs], density)
      n_thr += int(thr.sum())
      diff &= ~thr
    n_other += int(diff.sum())
  assert n_other == 0
  man = json.loads((out / "mergejax_manifest.json").read_text())
  assert man["mergekit_method"] == method and "merge_method" in man["recipe"]
  card = (out / "README.md").read_text()
  assert "## Recipe" in card
  # The gradient and filter weights vary tensor by tensor: the card says which, and points to the recipe.
  assert "weights" in man["varying_by_tensor"]
  assert "- varying tensor by tensor (the recipe's per-layer gradients or filters, below): " in card
  assert "`weights`" in card


def test_lora_model_in_recipe_equals_peft_merged_model(llamas, tmp_path):
  peft = pytest.importorskip("peft")
  lcfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
  pm = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(llamas / "e0"), lcfg)
  pm.save_pretrained(tmp_path / "lora")
  pm.merge_and_unload().save_pretrained(tmp_path / "peft_merged")
  text = """
merge_method: task_arithmetic
base_model: {b}
models:
  - model: {m}
    parameters: {{weight: 0.5}}
  - model: {e1}
    parameters: {{weight: 0.5}}
dtype: float32
"""
  a = _run(text.format(b=llamas / "base", m=f"{llamas / 'e0'}+{tmp_path / 'lora'}", e1=llamas / "e1"), tmp_path / "a")
  c = _run(text.format(b=llamas / "base", m=tmp_path / "peft_merged", e1=llamas / "e1"), tmp_path / "c")
  ga, gc = _load(a), _load(c)
  for k in gc:
    np.testing.assert_array_equal(bits(ga[k]), bits(gc[k]), err_msg=k)
  assert json.loads((a / "config.json").read_text())["dtype"] == "float32"  # mergekit: out_dtype else dtype
  # The manifest fingerprints the adapter beside the model it is applied to.
  lora_input = json.loads((a / "mergejax_manifest.json").read_text())["inputs"][1]
  assert lora_input["lora"]["path"] == str(tmp_path / "lora") and len(lora_input["lora"]["sha256_sampled"]) == 64


def test_passthrough_slices_stack_layers(llamas, tmp_path):
  text = f"""
merge_method: passthrough
slices:
  - sources: [{{model: {llamas / 'e0'}, layer_range: [0, 2]}}]
  - sources: [{{model: {llamas / 'e1'}, layer_range: [1, 3], parameters: {{scale: [{{filter: o_proj, value: 0.5}}]}}}}]
dtype: bfloat16
"""
  out = _run(text, tmp_path / "o")
  got = _load(out)
  e0, e1 = _load(llamas / "e0"), _load(llamas / "e1")
  assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
  np.testing.assert_array_equal(bits(got["model.layers.1.mlp.up_proj.weight"]), bits(e0["model.layers.1.mlp.up_proj.weight"]))
  np.testing.assert_array_equal(bits(got["model.layers.2.mlp.up_proj.weight"]), bits(e1["model.layers.1.mlp.up_proj.weight"]))
  want = (e1["model.layers.2.self_attn.o_proj.weight"].astype(np.float32) * np.float32(0.5)).astype(
      got["model.layers.3.self_attn.o_proj.weight"].dtype)
  np.testing.assert_array_equal(bits(got["model.layers.3.self_attn.o_proj.weight"]), bits(want))
  np.testing.assert_array_equal(bits(got["model.embed_tokens.weight"]), bits(e0["model.embed_tokens.weight"]))
  np.testing.assert_array_equal(bits(got["lm_head.weight"]), bits(e1["lm_head.weight"]))
  model = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert len(model.model.layers) == 4


def _layer(d, i, k):
  return d[f"model.layers.{i}.{k}"]


def test_merged_slices_stack_each_slices_merge_with_mergekits_rules(llamas, tmp_path):
  """Slices with a merge method (mergekit's plan_module): slice k's sources' layers are merged into the
  output's next layers with slice k's parameters and a gradient position t local to the slice; the
  embeddings come from the first slice's sources, the final norm and head from the last's (t = 0)."""
  b, e0, e1, e2 = (llamas / n for n in ("base", "e0", "e1", "e2"))
  text = f"""
merge_method: task_arithmetic
base_model: {b}
slices:
  - sources:
      - {{model: {b}, layer_range: [0, 2]}}
      - {{model: {e0}, layer_range: [0, 2], parameters: {{weight: [1.0, 0.25]}}}}
  - sources:
      - {{model: {b}, layer_range: [1, 3]}}
      - {{model: {e1}, layer_range: [0, 2]}}
    parameters: {{weight: [{{filter: mlp, value: 0.5}}, {{value: 0.75}}]}}
  - sources:
      - {{model: {b}, layer_range: [2, 3]}}
      - {{model: {e2}, layer_range: [2, 3]}}
parameters: {{lambda: 0.8, weight: 1.0}}
dtype: float32
"""
  out = _run(text, tmp_path / "o")
  got, base, xs = _load(out), _load(b), [_load(e) for e in (e0, e1, e2)]
  assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 5
  assert transformers.AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 5
  ta = lambda bb, x, w: _kit_gta(bb, [x], [w], 1.0, 0.8, False, False)  # noqa: E731
  keys = ("mlp.up_proj.weight", "self_attn.q_proj.weight", "input_layernorm.weight")
  # (output layer, base layer, expert, expert layer, weight); slice 0's weight gradient runs over its 2 layers
  for o, bl, x, xl, w in [(0, 0, 0, 0, 1.0), (1, 1, 0, 1, 0.25), (2, 1, 1, 0, None), (3, 2, 1, 1, None),
                          (4, 2, 2, 2, 1.0)]:
    for k in keys:
      wk = w if w is not None else (0.5 if "mlp" in k else 0.75)
      np.testing.assert_array_equal(bits(_layer(got, o, k)), bits(ta(_layer(base, bl, k), _layer(xs[x], xl, k), wk)),
                                    err_msg=f"layer {o} {k}")
  np.testing.assert_array_equal(bits(got["model.embed_tokens.weight"]),
                                bits(ta(base["model.embed_tokens.weight"], xs[0]["model.embed_tokens.weight"], 1.0)))
  for k in ("model.norm.weight", "lm_head.weight"):
    np.testing.assert_array_equal(bits(got[k]), bits(ta(base[k], xs[2][k], 1.0)), err_msg=k)
  assert sorted(got) == sorted(set(got))
  assert json.loads((out / "mergejax_manifest.json").read_text())["slices"] == 3


def test_one_slice_over_part_of_the_layers_keeps_only_those(llamas, tmp_path):
  b, e0 = llamas / "base", llamas / "e0"
  out = _run(f"merge_method: linear\nslices: [{{sources: [{{model: {b}, layer_range: [1, 3]}}, "
             f"{{model: {e0}, layer_range: [1, 3]}}]}}]\nparameters: {{weight: 1.0}}\ndtype: float32\n", tmp_path / "o")
  got, base, x = _load(out), _load(b), _load(e0)
  assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
  assert not any(k.startswith("model.layers.2.") for k in got)
  k = "mlp.down_proj.weight"
  want = (base[f"model.layers.2.{k}"].astype(np.float32) + x[f"model.layers.2.{k}"].astype(np.float32)) / 2
  np.testing.assert_allclose(_layer(got, 1, k), want, rtol=0, atol=1e-7)


@pytest.mark.parametrize("slices,msg", [
    ("[{sources: [{model: B, layer_range: [0, 2]}, {model: E, layer_range: [0, 3]}]}]",
     r"slices\[0\].sources: every source of a slice spans the same number of layers"),
    ("[{sources: [{model: B, layer_range: [0, 2]}, {model: E, layer_range: [0, 2]}]}, "
     "{sources: [{model: E, layer_range: [2, 3]}]}]", r"slices\[1\].sources: task_arithmetic needs base_model"),
    ("[{sources: [{model: B, layer_range: [0, 1]}, {model: E, layer_range: [0, 1]}]}, "
     "{sources: [{model: B, layer_range: [1, 3]}, {model: E, layer_range: [1, 3]}, {model: F, layer_range: [1, 3]}]}]",
     "slices: the first and the last slice need the same number of sources"),
])
def test_bad_merged_slices_are_one_line(slices, msg):
  text = f"merge_method: task_arithmetic\nbase_model: B\nslices: {slices}\n"
  with pytest.raises(mk.RecipeError, match=msg) as e:
    _plan(text)
  assert "\n" not in str(e.value)


def test_cli_one_line_errors_and_nothing_written(llamas, tmp_path):
  cfg = tmp_path / "r.yml"
  cfg.write_text(f"merge_method: ties\nbase_model: {llamas / 'base'}\nmodels:\n  - model: {llamas / 'e0'}\n"
                 "    parameters: {weight: 1, density: 0.0}\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "mergejax.cli.recipe", str(cfg), str(tmp_path / "o")], capture_output=True,
                     text=True, env=env, cwd=REPO, timeout=120)
  assert r.returncode == 1
  lines = [l for l in r.stderr.splitlines() if l.startswith("mergejax-")]
  assert lines == [f"mergejax-yaml: error: {cfg}: tensor 'lm_head.weight': ties: hyperparameter density=0.0 is out of "
                   "range: allowed (0.0, 1.0]"], r.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yml"]


def test_modules_flag_registers_a_users_method_before_the_recipe_is_read(tmp_path):
  """``--modules`` imports the user's module (which registers ``largest_delta``) before planning."""
  cfg = tmp_path / "r.yml"
  cfg.write_text("merge_method: largest_delta\nbase_model: b\nmodels: [{model: a}]\nparameters: {alpha: 0.5}\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "mergejax.cli.recipe", str(cfg), str(tmp_path / "o"), "--dry_run"]
  r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
  assert r.returncode == 1 and "merge_method: 'largest_delta' is not available in mergejax yet" in r.stderr
  r = subprocess.run(cmd + ["--modules=tests.user_method"], capture_output=True, text=True, env=env, cwd=REPO,
                     timeout=120)
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines()[:3] == ["method: largest_delta (mergekit largest_delta)", "base: b", "input: a"]
  assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case", ["missing_model", "not_lora", "named_template", "token_source", "negative_weight"])
def test_bad_recipe_inputs_are_one_line_and_leave_nothing(llamas, tmp_path, case):
  base, e0 = llamas / "base", llamas / "e0"
  body = f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
  model, extra, msg = str(e0), "", ""
  if case == "missing_model":
    model, msg = str(tmp_path / "nope"), f"{tmp_path / 'nope'}: no such file or directory"
  elif case == "not_lora":
    model, msg = f"{e0}+{llamas / 'e1'}", "not a PEFT LoRA adapter directory"
  elif case == "named_template":
    extra, msg = "chat_template: chatml\n", "chat_template: 'chatml': named templates are not bundled"
  elif case == "token_source":
    extra = f"tokenizer:\n  source: base\n  tokens:\n    hi:\n      source: {tmp_path / 'other'}\n"
    msg = f"tokenizer.tokens.hi.source: {tmp_path / 'other'} is not one of the merged models"
  else:
    msg = "is out of range: allowed finite numbers >= 0"
  text = body + f"  - model: {model}\n    parameters: {{weight: {-1 if case == 'negative_weight' else 1}}}\n" + extra
  with pytest.raises(ValueError) as err:
    _run(text, tmp_path / "o")
  assert msg in str(err.value) and "\n" not in str(err.value), str(err.value)
  assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o*"))


# mergekit recipe (top-level parameters, per-model parameters of e0 and e1) -> the mergejax method it runs, and
# which models it takes: "base+1" (base_model and one more), "origin" (base_model as the task vectors'
# origin), "inputs" (the base merged as one more model, after the listed ones), "none" (no base_model).
YAML_METHODS = [
    ("slerp", {"t": 0.3}, {}, {"t": 0.3}, "base+1"),
    ("nearswap", {"t": 0.01}, {}, {"t": 0.01}, "base+1"),
    ("nuslerp", {"nuslerp_flatten": False}, {"weight": [0.3, 0.7]},
     {"weights": (0.3, 0.7), "nuslerp_flatten": False}, "origin"),
    ("nuslerp", {}, {"weight": [1.0, 2.0]}, {"weights": (1.0, 2.0)}, "none"),
    ("multislerp", {}, {"weight": [1.0, 2.0]}, {"weights": (1.0, 2.0)}, "origin"),
    ("karcher", {"max_iter": 5}, {}, {"max_iter": 5}, "inputs"),
    ("breadcrumbs", {"gamma": 0.05}, {"weight": [0.6, 0.8], "density": [0.7, 0.7]},
     {"weights": (0.6, 0.8), "density": 0.7, "gamma": 0.05}, "origin"),
    ("breadcrumbs_ties", {"normalize": True, "lambda": 0.9}, {"weight": [1.0, 0.5]},
     {"weights": (1.0, 0.5), "aggregate": "mean", "lam": 0.9}, "origin"),
    ("della", {"epsilon": 0.1}, {"weight": [1.0, 1.0], "density": [0.6, 0.6]},
     {"weights": (1.0, 1.0), "density": 0.6, "epsilon": 0.1}, "origin"),
    ("della_linear", {"rescale": False}, {"weight": [0.5, 0.5]}, {"weights": (0.5, 0.5), "rescale": False}, "origin"),
    ("model_stock", {"filter_wise": True}, {}, {"filter_wise": True}, "origin"),
    ("sce", {"select_topk": 0.5, "int8_mask": True}, {}, {"select_topk": 0.5}, "origin"),
    ("ram", {"epsilon": 1e-4}, {}, {"epsilon": 1e-4}, "origin"),
    ("ramplus_tl", {"r": 0.3, "alpha": 0.5}, {}, {"r": 0.3, "alpha": 0.5}, "origin"),
    ("arcee_fusion", {}, {}, {}, "base+1"),
]


@pytest.mark.parametrize("method,top,per_model,hp,models", YAML_METHODS,
                         ids=[f"{m[0]}-{m[4]}" for m in YAML_METHODS])
def test_every_mergekit_method_runs_from_a_recipe_as_the_library(llamas, tmp_path, method, top, per_model, hp,
                                                                 models):
  import mergejax  # pylint: disable=g-import-not-at-top
  from mergejax import methods  # pylint: disable=g-import-not-at-top
  names = ["e0"] if models == "base+1" else ["e0", "e1"]
  entries = []
  for i, n in enumerate(names):
    ps = {k: v[i] for k, v in per_model.items()}
    entries.append(f"  - model: {llamas / n}" + (f"\n    parameters: {json.dumps(ps)}" if ps else ""))
  text = (f"merge_method: {method}\n" + (f"base_model: {llamas / 'base'}\n" if models != "none" else "")
          + (f"parameters: {json.dumps(top)}\n" if top else "") + "models:\n" + "\n".join(entries) + "\n")
  got = _load(_run(text, tmp_path / "o", seed=3))
  base, xs = _load(llamas / "base"), [_load(llamas / n) for n in names]
  if models == "inputs":
    base, xs = None, xs + [base]
  elif models == "none":
    base = None
  want = mergejax.merge(base, xs, methods.get(method, **hp), seed=3)
  assert sorted(got) == sorted(want)
  for k in got:
    np.testing.assert_array_equal(bits(got[k]), bits(np.asarray(want[k])), err_msg=k)


@pytest.mark.parametrize("text,message", [
    ("merge_method: slerp\nbase_model: b\nmodels: [{model: b}, {model: a}, {model: c}]\nparameters: {t: 0.5}\n",
     "^models: slerp merges exactly 1 model besides base_model, got 2$"),
    ("merge_method: model_stock\nbase_model: b\nmodels: [{model: a}]\n",
     "^models: model_stock merges at least 2 models besides base_model, got 1$"),
    ("merge_method: nuslerp\nmodels: [{model: a}, {model: b}, {model: c}]\n", "^models: nuslerp merges exactly 2 models"),
    ("merge_method: regmean\nmodels: [{model: a}, {model: b}]\n", "^merge_method: regmean learns from data"),
    ("merge_method: regmean\nmodels: [{model: a}, {model: b}]\nmergejax: {merge_data: {sources: {a: s}}}\n",
     r"^mergejax.merge_data.sources: needs one source for each merged model \(a, b\); missing b$"),
    ("merge_method: fisher\nmodels: [{model: a}, {model: b}]\nmergejax: {merge_data: {sources: {a: s, b: s, c: s}}}\n",
     "^mergejax.merge_data.sources: .*; c is not merged$"),
    ("merge_method: regmean\nmodels: [{model: a}, {model: b}]\nmergejax: {merge_data: {sources: {a: s, b: s}, "
     "batch: 1}}\n", r"^mergejax.merge_data.batch: unknown key"),
    ("merge_method: regmean\nmodels: [{model: a}, {model: b}]\nmergejax: {merge_data: {sources: {a: s, b: s}, "
     "batches: 0}}\n", "^mergejax.merge_data: batches=0 must be a positive integer$"),
    ("merge_method: regmean\nmodels: [{model: a}, {model: b+lora}]\n"
     "mergejax: {merge_data: {sources: {a: s, b+lora: s}}}\n", "^models: b\\+lora: regmean loads each model whole"),
    ("merge_method: regmean\nmodels: [{model: a}, {model: b}]\ntokenizer_source: union\n"
     "mergejax: {merge_data: {sources: {a: s, b: s}}}\n", "^tokenizer_source: regmean learns from examples"),
    ("merge_method: adamerging\nbase_model: z\nslices: [{sources: [{model: z, layer_range: [0, 2]}, "
     "{model: a, layer_range: [0, 2]}]}]\nmergejax: {merge_data: {sources: {a: s}}}\n",
     "^slices: adamerging learns from each model's examples: write the merge with models:$"),
    ("merge_method: task_arithmetic\nbase_model: z\nmodels: [{model: a, parameters: {weight: 1}}]\n"
     "mergejax: {merge_data: {sources: {a: s}}}\n", "^mergejax.merge_data: task_arithmetic does not learn from data$"),
    ("merge_method: slerp\nbase_model: b\nmodels: [{model: b}, {model: a}]\nparameters: {t: 1.5}\n",
     r"t=1.5 is out of range: allowed \[0.0, 1.0\]"),
    ("merge_method: della\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, density: 0.5}}, "
     "{model: c, parameters: {weight: 1, density: 0.6}}]\n", "density: the models have different values"),
    ("merge_method: breadcrumbs\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1}}]\n"
     "parameters: {gamma: 1.5}\n", "gamma"),
])
def test_bad_method_recipes_are_one_line_before_any_file_is_read(text, message):
  from mergejax import methods  # pylint: disable=g-import-not-at-top
  with pytest.raises((mk.RecipeError, ValueError), match=message) as e:
    pl = _plan(text)
    hp = mk.leaf_hparams(pl, "model.layers.0.mlp.up_proj.weight", 0.0)
    methods.get(pl.method, **hp).check_experts(len(pl.inputs))
  assert "\n" not in str(e.value)


def test_a_merge_written_as_one_slice_over_every_layer_is_the_models_form(llamas, tmp_path):
  """mergekit's usual SLERP recipe (one slice, both sources over every layer, per-layer t by filter) gives
  what the same merge written with models: and top-level parameters gives."""
  b, e0 = llamas / "base", llamas / "e0"
  t = "[{filter: self_attn, value: [0, 0.5, 1]}, {filter: mlp, value: [1, 0.5, 0]}, {value: 0.5}]"
  sliced = _load(_run(f"merge_method: slerp\nbase_model: {b}\nslices:\n  - sources:\n"
                      f"      - {{model: {b}, layer_range: [0, 3]}}\n      - {{model: {e0}, layer_range: [0, 3]}}\n"
                      f"    parameters: {{t: {t}}}\ndtype: float32\n", tmp_path / "s"))
  models = _load(_run(f"merge_method: slerp\nbase_model: {b}\nmodels: [{{model: {b}}}, {{model: {e0}}}]\n"
                      f"parameters: {{t: {t}}}\ndtype: float32\n", tmp_path / "m"))
  base, expert = _load(b), _load(e0)
  for k in models:
    np.testing.assert_array_equal(bits(sliced[k]), bits(models[k]), err_msg=k)
  np.testing.assert_array_equal(bits(models["model.layers.0.self_attn.q_proj.weight"]),
                                bits(base["model.layers.0.self_attn.q_proj.weight"].astype(np.float32)))
  np.testing.assert_array_equal(bits(models["model.layers.2.self_attn.q_proj.weight"]),
                                bits(expert["model.layers.2.self_attn.q_proj.weight"].astype(np.float32)))

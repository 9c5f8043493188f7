"""Tests for the model zoo in models/: parameter counts, shapes, dtypes, BN, dropout, registry.

Big models are only traced (``jax.eval_shape``); real compute runs on the tiny variants.
On CPU, XLA compilation dominates, so inits and jitted applies are cached per model
config and the tests share input shapes.
"""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import MODEL_NAMES, get_model

TINY = ("resnet_tiny", "wrn_tiny", "vit_tiny")
GRAY8 = (2, 8, 8, 1)     # 8x8 grayscale digits
CIFAR = (2, 32, 32, 3)   # CIFAR-size colour images


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_init(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


_INITS, _APPLIES = {}, {}


def init(model, shape):
  """Real (cached) init of ``model`` for images of ``shape``; batch size is irrelevant."""
  key = (repr(model), tuple(shape[1:]))
  if key not in _INITS:
    x = jnp.zeros((1, *shape[1:]), jnp.float32)
    _INITS[key] = jax.jit(model.init, static_argnames="train")(
        jax.random.key(0, impl="rbg"), x, train=False)  # rbg compiles much faster
  return _INITS[key]


def forward(model, variables, x, *, train, dropout_key=None):
  """Jitted apply; returns (logits, updated batch_stats or None).

  In train mode BatchNorm stats are mutable; a dropout rng is passed only if given.
  """
  mutable = train and "batch_stats" in variables
  key = (repr(model), train, mutable, dropout_key is not None)
  if key not in _APPLIES:
    def fn(v, x, rng):
      rngs = {"dropout": rng} if rng is not None else {}
      if mutable:
        out, upd = model.apply(v, x, train=True, rngs=rngs, mutable=["batch_stats"])
        return out, upd["batch_stats"]
      return model.apply(v, x, train=train, rngs=rngs), None
    _APPLIES[key] = jax.jit(fn)
  return _APPLIES[key](variables, x, dropout_key)


def with_random_head(variables, seed=1):
  """ViT heads start at zero; give them random weights so outputs depend on the body."""
  params = dict(variables["params"])
  shape = params["head"]["kernel"].shape
  params["head"] = {**params["head"], "kernel": jnp.asarray(
      np.random.default_rng(seed).standard_normal(shape), jnp.float32)}
  return {**variables, "params": params}


def images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# --- parameter counts (abstract init only: no compute) ------------------------------
@pytest.mark.parametrize("name,num_classes,size,expected", [
    ("resnet18", 10, 32, 11_173_962),    # kuangliu/pytorch-cifar ResNet18
    ("resnet50", 10, 32, 23_520_842),    # kuangliu/pytorch-cifar ResNet50
    ("wrn28_10", 10, 32, 36_479_194),    # xternalz/WideResNet-pytorch WRN-28-10
    ("wrn16_4", 10, 32, 2_748_890),      # same implementation, WRN-16-4
    ("vit_b16", 1000, 224, 86_567_656),  # ViT-B/16 (token pool, no pre-logits)
    ("vit_s16", 1000, 224, 22_050_664),  # ViT-S/16
])
def test_parameter_counts(name, num_classes, size, expected):
  v = abstract_init(get_model(name, num_classes=num_classes), (1, size, size, 3))
  assert n_params(v["params"]) == expected


def test_resnet18_structure():
  v = abstract_init(get_model("resnet18", num_classes=10), (1, 32, 32, 3))
  assert n_params(v["batch_stats"]) == 2 * 4800  # mean + var of every BN channel
  p = v["params"]
  assert "proj_conv" not in p["stage1_block1"]   # 64 -> 64, stride 1: identity shortcut
  for s in (2, 3, 4):
    assert p[f"stage{s}_block1"]["proj_conv"]["kernel"].shape[:2] == (1, 1)
    assert "proj_bn" in p[f"stage{s}_block1"]
    assert "proj_conv" not in p[f"stage{s}_block2"]
  assert p["stem_conv"]["kernel"].shape == (3, 3, 3, 64) and "bias" not in p["stem_conv"]
  assert p["head"]["kernel"].shape == (512, 10)
  p50 = abstract_init(get_model("resnet50", num_classes=10), (1, 32, 32, 3))["params"]
  assert p50["head"]["kernel"].shape == (2048, 10)
  assert "proj_conv" in p50["stage1_block1"]    # 64 -> 256 needs a projection


def test_vit_gap_and_representation_counts():
  base = n_params(abstract_init(get_model("vit_s16", num_classes=1000), (1, 224, 224, 3))["params"])
  gap = n_params(abstract_init(get_model("vit_s16", num_classes=1000, pool="gap"),
                               (1, 224, 224, 3))["params"])
  assert base - gap == 384 + 384  # class token + its position embedding
  rep = n_params(abstract_init(get_model("vit_s16", num_classes=1000, representation_size=384),
                               (1, 224, 224, 3))["params"])
  assert rep - base == 384 * 384 + 384


@pytest.mark.parametrize("name,size,ch,spatial", [("resnet_tiny", 32, 3, 4),
                                                   ("resnet_tiny", 8, 1, 1),
                                                   ("resnet18", 32, 3, 4),
                                                   ("wrn_tiny", 32, 3, 8)])
def test_no_stem_downsampling(name, size, ch, spatial):
  """CIFAR stem: stride-1 conv, no max-pool; stages 2.. halve the resolution (traced only)."""
  model = get_model(name, num_classes=5)
  shape = (1, size, size, ch)
  v = abstract_init(model, shape)
  _, state = jax.eval_shape(lambda v, x: model.apply(
      v, x, train=False, mutable=["intermediates"],
      capture_intermediates=lambda mdl, _: (mdl.name or "").startswith("stage")),
      v, jax.ShapeDtypeStruct(shape, jnp.float32))
  inter = state["intermediates"]
  stages = sorted(inter)
  assert inter[stages[0]]["__call__"][0].shape[1:3] == (size, size)
  assert inter[stages[-1]]["__call__"][0].shape[1:3] == (spatial, spatial)


# --- shapes / dtypes on tiny variants ----------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_tiny_shapes_and_dtypes(name):
  f32 = get_model(name, num_classes=5)
  bf16 = get_model(name, num_classes=5, dtype=jnp.bfloat16)
  abstract = abstract_init(bf16, CIFAR)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(abstract))  # params stay f32
  outs = {}
  for model, shape in ((f32, GRAY8), (f32, CIFAR), (bf16, CIFAR)):
    v = init(f32, shape)
    if name.startswith("vit"):
      v = with_random_head(v)
    x = images(shape)
    for train in (False, True):
      out, stats = forward(model, v, x, train=train)
      assert out.shape == (shape[0], 5)
      assert out.dtype == jnp.float32
      assert np.all(np.isfinite(np.asarray(out)))
      if stats is not None:
        assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(stats))
      outs[model.dtype, shape, train] = np.asarray(out)
  # bf16 really computes in bf16 (not bit-identical) yet stays close to f32
  a, b = outs[jnp.float32, CIFAR, False], outs[jnp.bfloat16, CIFAR, False]
  assert not np.array_equal(a, b)
  np.testing.assert_allclose(b, a, atol=0.1 * np.abs(a).max() + 0.05)


# --- ViT head / pooling / representation --------------------------------------------
def test_vit_head_zero_init_and_bias():
  model = get_model("vit_tiny", num_classes=5, head_bias_init=-10.0)
  v = init(model, CIFAR)
  assert np.all(np.asarray(v["params"]["head"]["kernel"]) == 0)
  np.testing.assert_array_equal(v["params"]["head"]["bias"], np.full((5,), -10.0))
  base = get_model("vit_tiny", num_classes=5)  # same architecture: reuses compiled applies
  for train in (False, True):
    out, _ = forward(base, v, images(CIFAR), train=train)
    np.testing.assert_array_equal(out, np.full((2, 5), -10.0, np.float32))
  v0 = init(base, CIFAR)
  assert np.all(np.asarray(v0["params"]["head"]["bias"]) == 0)
  assert np.all(np.asarray(v0["params"]["head"]["kernel"]) == 0)


def test_vit_gap_pool():
  gap = get_model("vit_tiny", num_classes=5, pool="gap")
  vt, vg = init(get_model("vit_tiny", num_classes=5), CIFAR), init(gap, CIFAR)
  assert "cls" in vt["params"] and "cls" not in vg["params"]
  assert vt["params"]["pos_embedding"].shape == (1, 65, 32)  # 64 patches + class token
  assert vg["params"]["pos_embedding"].shape == (1, 64, 32)
  vg = with_random_head(vg)
  out, state = jax.jit(lambda v, x: gap.apply(
      v, x, train=False, mutable=["intermediates"],
      capture_intermediates=lambda mdl, _: mdl.name == "encoder_norm"))(vg, images(CIFAR))
  assert out.shape == (2, 5) and out.dtype == jnp.float32
  feats = state["intermediates"]["encoder_norm"]["__call__"][0]   # (2, 64, 32)
  head = vg["params"]["head"]
  np.testing.assert_allclose(out, feats.mean(axis=1) @ head["kernel"] + head["bias"],
                             rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="pool"):
    abstract_init(get_model("vit_tiny", num_classes=5, pool="max"), CIFAR)


def test_vit_representation_layer_is_tanh():
  model = get_model("vit_tiny", num_classes=16, representation_size=16)
  v = init(model, CIFAR)
  assert v["params"]["pre_logits"]["kernel"].shape == (32, 16)
  assert v["params"]["head"]["kernel"].shape == (16, 16)
  params = dict(v["params"])
  params["head"] = {"kernel": jnp.eye(16), "bias": jnp.zeros(16)}   # logits = pre-logits
  pre = params["pre_logits"]
  params["pre_logits"] = {**pre, "kernel": pre["kernel"] * 50.0}   # saturate the tanh
  out, _ = forward(model, {"params": params}, images(CIFAR), train=False)
  assert np.all(np.abs(np.asarray(out)) <= 1.0)
  assert np.abs(np.asarray(out)).max() > 0.9


# --- BatchNorm -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet_tiny", "wrn_tiny"])
def test_batchnorm_train_updates_stats_eval_uses_running(name):
  model = get_model(name, num_classes=5)
  v = init(model, CIFAR)
  x = images(CIFAR) * 2.0 + 1.0
  x_other = x.at[1].set(images(CIFAR, seed=5)[1] * 5.0 - 3.0)  # same example 0, new example 1
  tr, new_stats = forward(model, v, x, train=True)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), v["batch_stats"], new_stats)
  assert all(jax.tree.leaves(changed))
  # eval needs no mutation and is per-example (running averages, not batch statistics)
  ev, _ = forward(model, v, x, train=False)
  ev_other, _ = forward(model, v, x_other, train=False)
  np.testing.assert_allclose(ev[0], ev_other[0], rtol=1e-5, atol=1e-5)
  # ... it reads the running averages: the updated stats change eval outputs
  ev_new, _ = forward(model, {**v, "batch_stats": new_stats}, x, train=False)
  assert not np.allclose(ev, ev_new)
  # train mode normalises with batch statistics: example 0 depends on example 1
  tr_other, _ = forward(model, v, x_other, train=True)
  assert not np.allclose(tr[0], tr_other[0], atol=1e-4)


def test_batchnorm_momentum():
  model = get_model("resnet_tiny", num_classes=5)
  v = init(model, GRAY8)
  x = images(GRAY8) + 3.0
  _, upd = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats", "intermediates"],
      capture_intermediates=lambda mdl, _: mdl.name == "stem_conv"))(v, x)
  y = np.asarray(upd["intermediates"]["stem_conv"]["__call__"][0])
  stats = upd["batch_stats"]["stem_bn"]
  np.testing.assert_allclose(stats["mean"], 0.1 * y.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * y.var((0, 1, 2)), rtol=1e-4, atol=1e-6)


# --- dropout -------------------------------------------------------------------------
@pytest.mark.parametrize("name,overrides,check_eval", [
    ("wrn_tiny", dict(dropout_rate=0.3), True),
    ("vit_tiny", dict(dropout_rate=0.1), True),
    ("vit_tiny", dict(attention_dropout_rate=0.5), False),
])
def test_dropout(name, overrides, check_eval):
  model = get_model(name, num_classes=5, **overrides)
  v = init(get_model(name, num_classes=5), CIFAR)  # dropout adds no parameters
  if name.startswith("vit"):
    v = with_random_head(v)
  x = images(CIFAR)
  a, _ = forward(model, v, x, train=True, dropout_key=jax.random.key(1))
  b, _ = forward(model, v, x, train=True, dropout_key=jax.random.key(2))
  a2, _ = forward(model, v, x, train=True, dropout_key=jax.random.key(1))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, a2)
  if check_eval:
    e1, _ = forward(model, v, x, train=False)  # no dropout rng needed in eval
    e2, _ = forward(model, v, x, train=False)
    np.testing.assert_array_equal(e1, e2)
  # Train with dropout > 0 needs the 'dropout' rng: flax's own error for a missing rng stream, nothing else
  # (a shape or dtype error would also be "an exception").
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
    jax.eval_shape(lambda: model.apply(v, x, train=True, mutable=["batch_stats"]))


def test_dropout_default_off():
  for name in ("wrn_tiny", "vit_tiny", "wrn28_10", "vit_b16"):
    assert get_model(name, num_classes=2).dropout_rate == 0.0
  assert get_model("vit_b16", num_classes=2).attention_dropout_rate == 0.0


# --- registry ------------------------------------------------------------------------
def test_registry_names():
  expected = {"resnet18", "resnet50", "resnet_tiny", "wrn28_10", "wrn16_4", "wrn_tiny",
              "vit_s16", "vit_b16", "vit_l16", "vit_ti4", "vit_tiny"}
  assert isinstance(MODEL_NAMES, tuple)
  assert set(MODEL_NAMES) == expected
  for name in MODEL_NAMES:
    m = get_model(name, num_classes=10)
    assert m.num_classes == 10 and m.dtype == jnp.float32
  assert get_model("resnet_tiny", num_classes=3, dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_unknown_model_message():
  with pytest.raises(ValueError) as e:
    get_model("xyz", num_classes=10)
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith("unknown model 'xyz'; choose one of: resnet18, resnet50")
  for name in MODEL_NAMES:
    assert name in msg


def test_overrides():
  m = get_model("vit_s16", num_classes=10, dropout_rate=0.1, head_bias_init=-10.0, pool="gap")
  assert (m.dropout_rate, m.head_bias_init, m.pool, m.hidden_size) == (0.1, -10.0, "gap", 384)
  assert get_model("wrn28_10", num_classes=100, dropout_rate=0.3).dropout_rate == 0.3
  with pytest.raises(ValueError) as e:
    get_model("resnet18", num_classes=10, drop_rate=0.1)
  assert "drop_rate" in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(TypeError):
    get_model("resnet18")  # num_classes is required

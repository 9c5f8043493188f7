"""The training step and what it is built from: mesh, model, base optimizer, updater, initial state.

Pure JAX (no TensorFlow, no I/O), so a step can be built, timed or tested where only JAX is installed;
``rsam/training/loop.py`` feeds it data, checkpoints it and writes its metrics.
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

import models
from data import mixup, sources
from rsam.training import config_check, factory, losses, optim, sharding
from rsam.training.sharding import make_mesh  # noqa: F401  (the one mesh constructor; re-exported)


def build_model(config, num_classes: int):
  dtype = jnp.bfloat16 if config.compute_dtype == 'bfloat16' else jnp.float32
  return models.get_model(config.model.name, num_classes=num_classes, dtype=dtype,
                          **dict(config.model.get('overrides', {})))


def init_variables(model, config, image_shape, key=None):
  """Float32 parameters and the model's other collections (e.g. batch_stats), as one dict each, drawn
  from ``key`` (default ``jax.random.key(config.seed)``)."""
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  key = jax.random.key(config.seed) if key is None else key
  variables = model.init({'params': key, 'dropout': jax.random.key(0)}, dummy, train=False)
  params = variables.pop('params')
  return params, dict(variables)


def make_train_step(config, model, updater, tx, num_classes: int):
  """``train_step(state, batch) -> (state, metrics)``, its randomness from ``jax.random.key(config.seed)``."""
  seeded = make_seeded_train_step(config, model, updater, tx, num_classes)
  root = jax.random.key(config.seed)
  return lambda state, batch: seeded(root, state, batch)


def make_seeded_train_step(config, model, updater, tx, num_classes: int):
  """``train_step(root, state, batch)``: the step with its root key as an argument, so it can be vmapped
  over seeds (rsam/training/multi_seed.py). Step t draws mixup and updater keys from fold_in(root, t)."""
  loss_fn = losses.make_loss_fn(model, config.loss)

  def train_step(root, state, batch):
    step = state['step']
    mix_key, update_key = jax.random.split(jax.random.fold_in(root, step))
    targets = losses.make_targets(batch['label'], num_classes, config.loss, config.label_smoothing)
    images = batch['image']
    if config.mixup_alpha > 0:
      images, targets = mixup.mixup(mix_key, images, targets, alpha=config.mixup_alpha)
    result = updater(loss_fn, state['params'], state['model_state'], {'image': images, 'target': targets},
                     update_key, step)
    updates, opt_state = tx.update(result.grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    # A non-finite loss or update leaves the state as it was (the loop then stops or skips). The update
    # is checked rather than the gradient: it carries a bad gradient and the optimizer's own arithmetic,
    # and XLA then writes the donated state in place (a check on the gradient made it copy all of it).
    finite = jnp.isfinite(result.loss) & jnp.isfinite(optax.tree.norm(updates))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = {'step': step + 1,
                 'params': keep(params, state['params']),
                 'model_state': keep(result.model_state, state['model_state']),
                 'opt_state': keep(opt_state, state['opt_state'])}
    metrics = {'loss': result.loss, **result.aux, 'finite': finite.astype(jnp.float32)}
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

  return train_step


@dataclasses.dataclass(frozen=True)
class Run:
  """What a config builds: the model, base optimizer, lr schedule, updater and the initial state."""
  model: Any
  tx: Any
  schedule: Any
  updater: Any
  total_steps: int
  num_classes: int
  init_state: Any  # () -> state {'step', 'params', 'model_state', 'opt_state'}, laid out as state_sharding
  state_sharding: Any  # a NamedSharding per state leaf (rsam/training/sharding.py: replicated unless fsdp > 1)
  batch_sharding: Any  # the batch's leading axis over every mesh axis


def _parts(config):
  """(model, tx, schedule, lr_max, lr_min, total_steps, num_classes, init_state) of ``config``; no device."""
  num_classes = sources.num_classes(config.data)
  total_steps = config_check.total_steps(config)
  schedule, lr_max, lr_min = optim.make_lr_schedule(config.schedule, config.optimizer.lr, total_steps)
  tx = optim.make_optimizer(config.optimizer, schedule)
  model = build_model(config, num_classes)

  def init_state():
    params, model_state = init_variables(model, config, sources.image_shape(config.data))
    return {'step': jnp.zeros((), jnp.int32), 'params': params, 'model_state': model_state,
            'opt_state': tx.init(params)}
  return model, tx, schedule, lr_max, lr_min, total_steps, num_classes, init_state


def state_shapes(config):
  """The train state's ShapeDtypeStructs (jax.eval_shape: traced, nothing materialized, no mesh)."""
  return jax.eval_shape(_parts(config)[-1])


def build(config, mesh: Mesh) -> Run:
  num_devices = mesh.devices.size
  model, tx, schedule, lr_max, lr_min, total_steps, num_classes, init_state = _parts(config)
  updater = factory.make_updater(config.updater, total_steps=total_steps, lr_schedule=schedule,
                              lr_max=lr_max, lr_min=lr_min, mesh=mesh,
                              accum_steps=config.grad_accum_steps,
                              per_device_batch=config.batch_size // num_devices)  # batch over all axes
  min_bytes = sharding.min_shard_bytes(config)
  shapes = jax.eval_shape(init_state)  # shapes only: nothing is materialized to decide the layout
  sharding.check_state_split(mesh, shapes['params'], min_bytes)
  state_sharding = sharding.state_shardings(mesh, shapes, min_bytes)
  init = jax.jit(init_state, out_shardings=state_sharding)
  return Run(model, tx, schedule, updater, total_steps, num_classes, init, state_sharding,
             sharding.batch_sharding(mesh))

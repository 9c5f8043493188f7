r"""Benchmark suite: updater step times, memory and compile time, our SAM against optax's, and
input-pipeline throughput, written as a markdown + JSON report.

    python scripts/benchmark.py --preset full --out results/benchmarks     # the report (~15 min, 2 CPU cores)
    python scripts/benchmark.py --preset gpu --out DIR                     # ViT-B/16 bf16 on one GPU/TPU chip
    python scripts/benchmark.py --preset smoke --out /tmp/bench            # seconds; what the test runs

What is measured, and how
-------------------------
Step time. For each model (a CIFAR ResNet and a small ViT by default) every variant

    sgd (Plain), sam, rsam, gsam, rgsam, lpf_sgd (rsam/training/factory.py defaults), sam_grouped (SAM with
    m-sharpness groups of ``--m`` examples, rsam.msharpness.PerGroup in the backend's default mode),
    sam_grouped_vmap (the same with the groups batched, mode 'vmap'), optax_sam (optax.contrib.sam,
    opaque mode, with the same base optimizer and ρ as ``sam``), rsam_fused_noise (an ablation: R-SAM
    traced with rsam.updaters.materialized as the identity, so XLA may fuse the noise draw into its
    consumers)

is the FULL jitted train step of the training loop (``rsam.training.train_step.make_train_step``: targets,
updater, base optax update, non-finite guard; same shardings and state donation as the loop) on the same
synthetic batch, model, devices and initial state. Every executable is compiled (timed: lower, compile),
warmed up, then timed INTERLEAVED: ``--repeats`` rounds, each round times ``--steps`` consecutive steps of
every variant (the order rotates from round to round). A ratio A/B is computed per round from the two
times of that round (paired, so slow drifts of a shared machine cancel) and reported as the median over
rounds with its min–max and a distribution-free confidence interval (order statistics, ≥ 95%); a
target is 'met' when that interval lies within it, 'missed' when it lies beyond, else 'within noise'.
Step times are reported as median and min–max over rounds.

Model FLOPs and MFU. Per forward-backward pass a step does 3 × the forward FLOPs (XLA's count of the
unoptimised forward pass of one example, the same on every backend) × batch; the sharpness-aware variants
do two passes. Model TFLOP/s per device divides that by the median step time and the number of devices;
MFU divides it by the device's dense bf16 peak (a datasheet table by device kind, or --peak_tflops), and
is left out for float32 compute or an unknown device.

Memory. ``compiled.memory_analysis()`` of each step executable (works on every backend): the peak
estimate is arguments + outputs + temporaries − aliased (donated) bytes, per device. Where the device
reports ``memory_stats()`` (GPU/TPU), ``peak_bytes_in_use`` after each variant's warm-up is recorded too
(a process-wide high-water mark, so it only grows from variant to variant). The XLA cost analysis (flops,
bytes accessed) of each step is recorded: a noise-free check of what a time ratio should be.

Our SAM against optax. ``optax.contrib.sam(base, chain(normalize(), sgd(ρ)), opaque_mode=True)``
computes the ascent gradient through ``grad_fn``, which returns gradients only: the BatchNorm statistics
of its pass are dropped. That is what our updaters do too (model state comes from the first pass), so the
comparison holds for a BatchNorm ResNet as well as for the BN-free ViT; both models are compared. The
first step of both from the same state is checked to give the same parameters.

Sharded state. ``rsam_fsdp`` is the ``rsam`` step with the train state split along an 'fsdp' mesh axis
over every device (rsam/training/sharding.py; every leaf that can be split is, as the benchmark models are
small): 'R-SAM fsdp/replicated' is the cost of the all-gathers and reduce-scatters XLA adds, for
information (on one device the two are the same program). The report also tabulates the train state per
device of the ViT-B/16 and ViT-L/16 ImageNet configs against the fsdp size, from shapes alone.

Input pipelines. ``data.make_train_iterator`` itself (shuffle, stateless per-example augmentation,
batching: the training code path) fed through ``tfds.testing.mock_data(as_dataset_fn=...)`` with encoded
images this script makes: PNG-encoded 32×32 images for CIFAR (tfds stores CIFAR as PNG) and JPEGs of
ImageNet size (default 500×375, q=90) for ImageNet (decode + Inception crop + flip + RandAugment(2, 15) to
224²). Each is measured in a child process pinned to ONE CPU core (images/s per core) and in one using all
cores, then compared with the training step it feeds: the CIFAR ResNet step (first model) and a ViT step at
the ImageNet resolution (``--imagenet_step``).

Machine noise: the load average is sampled every round, and the CPU time that OTHER processes used during
the run is computed from /proc/stat minus this process's own CPU time; both are in the report.
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from rsam.training.cost import forward_flops_per_example, peak_tflops  # pylint: disable=wrong-import-position  # noqa: E402,F401

VARIANTS = ('sgd', 'sam', 'rsam', 'rsam_fused_noise', 'gsam', 'rgsam', 'lpf_sgd', 'sam_grouped',
            'sam_grouped_vmap', 'optax_sam', 'rsam_fsdp')
# Variants with the state split along 'fsdp' over every device (rsam/training/sharding.py); the others
# replicate it. Every leaf that can be split is (shard_min_bytes 0): the benchmark models are small.
FSDP = ('rsam_fsdp',)
# m-sharpness variants: the group mode each runs in (rsam.msharpness; 'auto' = the backend's default).
GROUPED = {'sam_grouped': 'auto', 'sam_grouped_vmap': 'vmap'}
# Forward-backward passes per step: the unit of the model FLOPs behind MFU.
PASSES = {'sgd': 1, 'lpf_sgd': 1}
# (name, numerator, denominator, target: numerator/denominator ≤ target, or None = reported only)
TIME_RATIOS = (
    ('SAM/SGD', 'sam', 'sgd', 2.05),
    ('R-SAM/SAM', 'rsam', 'sam', 1.03),
    ('R-SAM (δ0 fused)/SAM', 'rsam_fused_noise', 'sam', None),  # ablation: materialized() off
    ('GSAM/SAM', 'gsam', 'sam', 1.03),
    ('R-GSAM/SAM', 'rgsam', 'sam', 1.05),
    ('LPF-SGD/SGD', 'lpf_sgd', 'sgd', None),
    ('grouped/ungrouped', 'sam_grouped', 'sam', 1.15),
    ('grouped vmap/ungrouped', 'sam_grouped_vmap', 'sam', None),
    ('SAM/optax SAM', 'sam', 'optax_sam', 1.00),
    ('R-SAM fsdp/replicated', 'rsam_fsdp', 'rsam', None),  # for information: the cost of the gathers
)
MEMORY_RATIOS = (
    ('R-SAM/SAM', 'rsam', 'sam', 1.10),
    ('SAM/SGD', 'sam', 'sgd', None),
    ('GSAM/SAM', 'gsam', 'sam', None),
    ('R-GSAM/SAM', 'rgsam', 'sam', None),
    ('LPF-SGD/SGD', 'lpf_sgd', 'sgd', None),
    ('grouped/ungrouped', 'sam_grouped', 'sam', None),
    ('grouped vmap/ungrouped', 'sam_grouped_vmap', 'sam', None),
    ('SAM/optax SAM', 'sam', 'optax_sam', None),
    ('R-SAM fsdp/replicated', 'rsam_fsdp', 'rsam', None),
)
# Models whose train state per device the report tabulates against the fsdp size: the ImageNet ViT
# config (configs/imagenet_vit.py, R-SAM, AdamW) of each, from shapes alone.
STATE_MEMORY_FSDP = (1, 2, 4, 8, 16, 32)
PIPELINE_TARGET = 3.0  # pipeline images/s (all cores) ≥ 3 × the images/s of the step it feeds
CONFIDENCE = 0.95      # of the distribution-free interval for a median ratio
# The peak of a device by its device_kind (for MFU) and the model FLOPs: rsam/training/cost.py.

# model specs: name[:key=value,...]; keys: batch, image (side), data (cifar10|digits|imagenet2012),
# dtype (float32|bfloat16: the config's compute_dtype), widths=a/b/c/d, depth, hidden, heads, mlp, patch
PRESETS = {
    'full': dict(
        models=['resnet18:widths=32/64/128/256,batch=128', 'vit_ti4:depth=6,batch=128'],
        variants=VARIANTS, repeats=9, steps=1, warmup=2, m=16, fast_compile=False,
        imagenet_step='vit_s16:batch=8,image=224,data=imagenet2012', pipelines=True,
        state_memory=('vit_b16', 'vit_l16'),
        # Whole epochs (each epoch is a fresh tf.data pipeline that refills its shuffle buffer).
        cifar=dict(num_examples=4096, batch=128, batches=64, distinct=512),
        imagenet=dict(num_examples=256, batch=32, batches=7, distinct=32, width=500, height=375,
                      image_size=224, randaugment_layers=2, randaugment_magnitude=15),
        pin=True),
    # A ViT with no encoder block (patch embedding + head) on 8×8 digits, compiled at XLA's lowest
    # optimisation level: the whole suite in seconds, for the test. Its numbers mean nothing.
    'smoke': dict(
        models=['vit_tiny:depth=0,batch=16,data=digits'],
        variants=VARIANTS, repeats=2, steps=1, warmup=1, m=None, fast_compile=True,
        imagenet_step='', pipelines=True, state_memory=('vit_tiny',),
        cifar=dict(num_examples=64, batch=16, batches=2, distinct=8),
        imagenet=dict(num_examples=16, batch=8, batches=1, distinct=4, width=64, height=48,
                      image_size=32, randaugment_layers=2, randaugment_magnitude=15),
        pin=False),
    # One GPU (or TPU chip): the paper's ViT-B/16 at 224 px in bfloat16, m = 16 as the official runs.
    # Only the step suite: the input pipelines are measured on CPU hosts (full preset); a device host
    # may lack TensorFlow (the step code imports none). lpf_sgd is left out to fit one short device call.
    'gpu': dict(
        models=['vit_b16:batch=256,image=224,data=imagenet2012,dtype=bfloat16'],
        variants=tuple(v for v in VARIANTS if v != 'lpf_sgd'), repeats=7, steps=5, warmup=2, m=16,
        fast_compile=False, imagenet_step='', pipelines=False, pin=False,
        state_memory=('vit_b16', 'vit_l16')),
}


# ------------------------------------------------------------------------------------------- helpers
def _median(xs):
  return float(statistics.median(xs))


def _summary(xs):
  xs = [float(x) for x in xs]
  return {'median': _median(xs), 'min': min(xs), 'max': max(xs), 'n': len(xs), 'values': xs}


def median_interval(xs, level=CONFIDENCE):
  """(low, high, coverage): a distribution-free confidence interval for the median of ``xs``.

  The k-th smallest and k-th largest values, with the largest k for which P(Binomial(n, 1/2) < k) ≤
  (1 − level)/2 on each side; coverage = 1 − 2·P(Binomial(n, 1/2) < k) ≥ level. Below 6 values no k
  reaches 95%: then (min, max) and its lower coverage.
  """
  xs, n = sorted(float(x) for x in xs), len(xs)
  below = lambda k: sum(math.comb(n, i) for i in range(k)) / 2 ** n  # P(B < k)
  k = 1
  while k + 1 <= n // 2 and 2 * below(k + 1) <= 1 - level:
    k += 1
  return xs[k - 1], xs[n - k], 1 - 2 * below(k)


def ratio_status(low, high, target):
  """'met' when the whole interval is ≤ target, 'missed' when all of it is above, else 'within noise'."""
  if target is None:
    return None
  return 'met' if high <= target else ('missed' if low > target else 'within noise')


def _parse_model(spec: str) -> dict:
  name, _, rest = spec.partition(':')
  out = {'spec': spec, 'name': name, 'batch': 128, 'image': None, 'data': 'cifar10', 'dtype': 'float32',
         'overrides': {}}
  for item in filter(None, rest.split(',')):
    key, _, value = item.partition('=')
    if key in ('batch', 'image'):
      out[key] = int(value)
    elif key in ('data', 'dtype'):
      out[key] = value
    elif key == 'widths':
      out['overrides']['widths'] = tuple(int(v) for v in value.split('/'))
    elif key in ('depth', 'patch', 'hidden', 'heads', 'mlp'):
      field = {'patch': 'patch_size', 'hidden': 'hidden_size', 'heads': 'num_heads',
               'mlp': 'mlp_dim'}.get(key, key)
      out['overrides'][field] = int(value)
    else:
      raise SystemExit(f'model spec {spec!r}: unknown key {key!r}')
  return out


def _cpu_busy_seconds():
  """Busy CPU seconds of the whole machine (all cores) since boot, from /proc/stat (None elsewhere)."""
  try:
    with open('/proc/stat') as f:
      fields = [int(v) for v in f.readline().split()[1:]]
  except OSError:
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
  return (sum(fields[:8]) - idle) / os.sysconf('SC_CLK_TCK')


def _own_cpu_seconds():
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


class MachineMonitor:
  """Load average and the CPU time other processes take while the benchmark runs."""

  def __init__(self):
    self.start_wall = time.time()
    self.start_busy = _cpu_busy_seconds()
    self.start_own = _own_cpu_seconds()
    self.load_before = os.getloadavg()
    self.samples = []

  def sample(self):
    self.samples.append(os.getloadavg()[0])

  def result(self):
    wall = time.time() - self.start_wall
    busy = _cpu_busy_seconds()
    own = _own_cpu_seconds() - self.start_own
    out = {'load_average_before': list(self.load_before), 'load_average_after': list(os.getloadavg()),
           'load_average_1min_during': _summary(self.samples) if self.samples else None,
           'wall_s': wall, 'own_cpu_cores_mean': own / wall}
    if self.start_busy is not None and busy is not None:
      out['other_processes_cpu_cores_mean'] = max(0.0, (busy - self.start_busy - own) / wall)
    return out


def _versions():
  """Installed versions, read from package metadata (nothing imported; None where not installed)."""
  from importlib import metadata

  def version(name):
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return None
  names = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'libtpu', 'flax', 'optax',
           'tensorflow', 'tensorflow-cpu', 'tensorflow-datasets')
  return {'python': platform.python_version(), **{n: version(n) for n in names}}


def _hardware():
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    pass
  mem = None
  try:
    with open('/proc/meminfo') as f:
      mem = int(next(l.split()[1] for l in f if l.startswith('MemTotal'))) / 2 ** 20
  except (OSError, StopIteration):
    pass
  devices = jax.devices()
  return {'cpu': cpu, 'cpu_count': os.cpu_count(),
          'cpu_affinity': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
          'memory_gib': mem, 'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
          'num_devices': len(devices), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'machine': platform.machine(), 'system': platform.system()}


def _git():
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True,
                            timeout=10).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return {'commit': commit or None, 'uncommitted_changes': bool(dirty)}
  except (OSError, subprocess.SubprocessError):
    return {'commit': None, 'uncommitted_changes': None}


def _command(argv):
  """The command line, with paths inside the repository made relative to it (no machine paths)."""
  def rel(a):
    if os.path.isabs(a) and os.path.abspath(a).startswith(ROOT + os.sep):
      return os.path.relpath(a, ROOT)
    return a
  return ' '.join(shlex.quote(rel(a)) for a in ['python', 'scripts/benchmark.py'] + list(argv))


# ------------------------------------------------------------------------------------ the train steps
def _config(model, updater: str, m=None, group_mode='auto', fsdp=False):
  from configs.common import get_base_config
  c = get_base_config(updater)
  c.model.name = model['name']
  c.model.overrides = dict(model['overrides'])
  c.data.name = model['data']
  c.data.num_train_examples = 50_000
  if model['image'] and model['data'] == 'imagenet2012':
    c.data.image_size = model['image']
  c.batch_size = model['batch']
  c.compute_dtype = model.get('dtype', 'float32')
  c.total_steps = 1000
  if m is not None:
    c.updater.m = m
    c.updater.group_mode = group_mode
  if fsdp:
    c.mesh.data, c.mesh.fsdp, c.shard_min_bytes = 1, -1, 0
  return c


def _optax_sam_step(config, model, tx, num_classes):
  """The loop's train step with optax.contrib.sam (opaque mode) in place of updater + base update."""
  import jax
  import jax.numpy as jnp
  import optax
  from rsam.training import losses
  loss_fn = losses.make_loss_fn(model, config.loss)
  root = jax.random.key(config.seed)
  rho = config.updater.rho
  opt = optax.contrib.sam(tx, optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
                          sync_period=2, opaque_mode=True)

  def train_step(state, batch):
    step = state['step']
    _, update_key = jax.random.split(jax.random.fold_in(root, step))
    _, dropout_key = jax.random.split(update_key)
    targets = losses.make_targets(batch['label'], num_classes, config.loss, config.label_smoothing)
    b = {'image': batch['image'], 'target': targets}
    (loss, (model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'], state['model_state'], b, dropout_key)
    # grad_fn returns gradients only: the BatchNorm statistics of the ascent pass are dropped, as ours.
    grad_fn = lambda p, _: jax.grad(lambda q: loss_fn(q, state['model_state'], b, dropout_key)[0])(p)
    updates, opt_state = opt.update(grads, state['opt_state'], state['params'], grad_fn=grad_fn)
    params = optax.apply_updates(state['params'], updates)
    # The same guard as the loop's step: the loss and the update the optimizer produced.
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(updates))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = {'step': step + 1, 'params': keep(params, state['params']),
                 'model_state': keep(model_state, state['model_state']),
                 'opt_state': keep(opt_state, state['opt_state'])}
    out = {'loss': loss, **metrics, 'finite': finite.astype(jnp.float32)}
    return new_state, {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}

  return train_step, opt


def _memory(compiled):
  try:
    ma = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if ma is None:
    return None
  fields = ('argument_size_in_bytes', 'output_size_in_bytes', 'temp_size_in_bytes',
            'alias_size_in_bytes', 'generated_code_size_in_bytes')
  out = {f: int(getattr(ma, f, 0) or 0) for f in fields}
  out['peak_estimate_bytes'] = (out['argument_size_in_bytes'] + out['output_size_in_bytes']
                                + out['temp_size_in_bytes'] - out['alias_size_in_bytes'])
  return out


def _cost(compiled):
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca:
    return None
  return {k: float(ca[k]) for k in ('flops', 'bytes accessed', 'transcendentals') if k in ca}


def _device_peak():
  import jax
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return None if not stats else stats.get('peak_bytes_in_use')


def _synthetic_batch(model, num_classes, image_shape, mesh, seed=0):
  import jax
  import numpy as np
  rng = np.random.default_rng(seed)
  b = model['batch']
  batch = {'image': rng.standard_normal((b,) + tuple(image_shape)).astype(np.float32),
           'label': rng.integers(0, num_classes, size=(b,)).astype(np.int32)}
  from rsam.training import sharding
  return jax.device_put(batch, sharding.batch_sharding(mesh))


FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def _build_variant(model, variant, mesh, m, base_state=None, fast_compile=False):
  """(compiled step, initial state, batch, info) of one variant.

  ``base_state``: a state of the same model and base optimizer to start from (copied: steps donate it),
  so every variant starts from the same parameters and only one initialisation is compiled.
  """
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  import data
  from rsam.training import sharding, train_step
  updater = {'sgd': 'plain', 'sam_grouped': 'sam', 'sam_grouped_vmap': 'sam', 'optax_sam': 'sam',
             'rsam_fused_noise': 'rsam', 'rsam_fsdp': 'rsam'}.get(variant, variant)
  config = _config(model, updater, m=m if variant in GROUPED else None,
                   group_mode=GROUPED.get(variant, 'auto'), fsdp=variant in FSDP)
  if variant in FSDP:  # the same devices, all on 'fsdp'
    mesh = sharding.make_mesh(config, mesh.devices.flat)
  run = train_step.build(config, mesh)
  if variant == 'optax_sam':
    step_fn, opt = _optax_sam_step(config, run.model, run.tx, run.num_classes)
    base_init = run.init_state

    def init_state():
      state = base_init() if base_state is None else base_state
      state = jax.tree.map(lambda x: x.copy(), {k: v for k, v in state.items() if k != 'opt_state'})
      return {**state, 'opt_state': jax.jit(opt.init, out_shardings=NamedSharding(mesh, P()))(
          state['params'])}
  else:
    step_fn = train_step.make_train_step(config, run.model, run.updater, run.tx, run.num_classes)
    init_state = (run.init_state if base_state is None
                  else lambda: jax.device_put(jax.tree.map(lambda x: x.copy(), base_state),
                                              run.state_sharding))
  state_sharding = run.state_sharding if variant != 'optax_sam' else sharding.replicated(mesh)
  jitted = jax.jit(step_fn, in_shardings=(state_sharding, run.batch_sharding),
                   out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=(0,))
  state = init_state()
  batch = _synthetic_batch(model, run.num_classes, data.image_shape(config.data), mesh)
  t0 = time.perf_counter()
  with _noise_left_to_fusion(variant == 'rsam_fused_noise'):
    lowered = jitted.lower(state, batch)
  t1 = time.perf_counter()
  compiled = lowered.compile(compiler_options=FAST_COMPILE if fast_compile else None)
  t2 = time.perf_counter()
  num_params = sum(x.size for x in jax.tree.leaves(state['params']))
  info = {'lower_s': t1 - t0, 'compile_s': t2 - t1, 'memory': _memory(compiled),
          'cost': _cost(compiled), 'num_params': int(num_params),
          'hlo_conditionals': compiled.as_text().count(' conditional('),
          'updater': repr(run.updater) if variant != 'optax_sam' else 'optax.contrib.sam(opaque)',
          'mesh': dict(mesh.shape), 'state_bytes_per_device': sharding.addressable_bytes(state)}
  if variant in GROUPED:
    info['m'] = m
    info['groups_per_device'] = model['batch'] // mesh.devices.size // m
    info['group_mode'] = run.updater.part_mode()
  return compiled, state, batch, info, run


@contextlib.contextmanager
def _noise_left_to_fusion(enabled: bool):
  """The rsam_fused_noise ablation: rsam.updaters.materialized() is the identity while the step traces,
  so XLA may fuse the noise draw into every consumer of w + δ0, as it did before materialized()."""
  from rsam import updaters
  real = updaters.materialized
  if enabled:
    updaters.materialized = lambda tree, step: tree
  try:
    yield
  finally:
    updaters.materialized = real


def bench_updaters(model, *, variants, repeats, steps, warmup, m, mesh, monitor, log,
                   fast_compile=False, peak_override=None, progress=lambda partial: None):
  """Compiles, warms up and times every variant on ``model``; ``progress`` gets the partial result
  after each compilation and each round (so a run cut short still leaves what it measured)."""
  import jax
  import numpy as np
  per_device = model['batch'] // mesh.devices.size
  if m is None or per_device % m:
    m = per_device if m is None else math.gcd(per_device, m)
  import data
  compiled, states, batches, infos = {}, {}, {}, {}
  base_state = None
  out = {'model': model, 'batch': model['batch'], 'devices': mesh.devices.size, 'm': m, 'variants': infos}
  for v in variants:
    log(f"[{model['spec']}] compiling {v}")
    compiled[v], states[v], batches[v], infos[v], run = _build_variant(
        model, v, mesh, m, base_state=base_state, fast_compile=fast_compile)
    log(f"[{model['spec']}] {v}: lower {infos[v]['lower_s']:.1f} s, compile {infos[v]['compile_s']:.1f} s")
    if base_state is None and v != 'optax_sam':
      base_state = jax.tree.map(lambda x: x.copy(), states[v])
      config = _config(model, 'plain')
      out['forward_gflops_per_example'] = forward_flops_per_example(
          run.model, states[v], data.image_shape(config.data)) / 1e9
      device = mesh.devices.flat[0]
      out['device_kind'] = device.device_kind
      out['peak_tflops_per_device'], out['peak_source'] = peak_tflops(
          device.device_kind, config.compute_dtype, peak_override)
    progress(out)
  first_params = {}
  for v in variants:  # warm-up; the first step of every variant starts from the same state
    for i in range(warmup):
      states[v], metrics = compiled[v](states[v], batches[v])
      jax.block_until_ready((states[v], metrics))
      if i == 0 and v in ('sam', 'optax_sam'):
        first_params[v] = jax.device_get(states[v]['params'])
    infos[v]['device_peak_bytes_after_warmup'] = _device_peak()
    infos[v]['finite_after_warmup'] = bool(metrics['finite']) if warmup else None
  times = {v: [] for v in variants}
  for r in range(repeats):
    monitor.sample()
    order = variants[r % len(variants):] + variants[:r % len(variants)]
    for v in order:
      t0 = time.perf_counter()
      for _ in range(steps):
        states[v], metrics = compiled[v](states[v], batches[v])
      jax.block_until_ready((states[v], metrics))
      times[v].append((time.perf_counter() - t0) / steps)
    log(f"[{model['spec']}] round {r + 1}/{repeats}: "
        + ', '.join(f'{v} {times[v][-1]:.3f}s' for v in variants))
    for v in variants:
      infos[v]['step_s'] = _summary(times[v])
    progress(out)
  out['num_params'] = infos[variants[0]]['num_params']
  for v in variants:
    infos[v]['images_per_s'] = model['batch'] / _median(times[v])
  derive_ratios(out)
  if 'sam' in first_params and 'optax_sam' in first_params:
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(first_params['sam'])])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(first_params['optax_sam'])])
    out['sam_vs_optax_first_step_max_abs_param_diff'] = float(np.max(np.abs(a - b)))
  return out


def state_memory(models, fsdp_sizes=STATE_MEMORY_FSDP) -> dict:
  """{model: params, and bytes of the train state per device by fsdp size} for the ImageNet ViT R-SAM
  config of each model (configs/imagenet_vit.py: AdamW, so parameters + two moments, float32), by the
  training code's own rule (rsam.training.sharding.leaf_spec at the config's shard_min_bytes) from
  shapes alone: nothing is materialized, so ViT-L/16 costs a trace, not 3 GB."""
  import jax
  from configs import imagenet_vit
  from rsam.training import sharding, train_step
  out = {}
  for name in models:
    config = imagenet_vit.get_config(f'model={name},updater=rsam')
    config.total_steps = 100_000  # the shapes do not depend on it; spares reading the dataset's size
    shapes = train_step.state_shapes(config)
    min_bytes = sharding.min_shard_bytes(config)
    by_fsdp = sharding.bytes_by_fsdp(shapes, fsdp_sizes, min_bytes)
    out[name] = {'num_params': int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes['params']))),
                 'min_shard_bytes': min_bytes,
                 'bytes_per_device': {str(k): v for k, v in by_fsdp.items()}}
  return out


def derive_ratios(out):
  """Fills out['time_ratios'], ['memory_ratios'], ['flops_ratios'] from the per-variant measurements
  (also used by --render to redo a report's derived numbers from its JSON)."""
  variants = out['variants']
  out['time_ratios'], out['memory_ratios'], out['flops_ratios'] = {}, {}, {}
  for name, a, b, target in TIME_RATIOS:
    if a not in variants or b not in variants:
      continue
    ta, tb = variants[a]['step_s']['values'], variants[b]['step_s']['values']
    s = _summary([x / y for x, y in zip(ta, tb)])  # paired: both measured in the same round
    low, high, coverage = median_interval(s['values'])
    status = ratio_status(low, high, target)
    s.update(target=target, ci_low=low, ci_high=high, ci_coverage=coverage, status=status,
             met=None if status is None else status == 'met', ratio_of_medians=_median(ta) / _median(tb))
    out['time_ratios'][name] = s
    ca, cb = variants[a]['cost'], variants[b]['cost']
    # XLA's cost analysis counts a while loop's body once: groups in a loop are not comparable.
    looped = any(variants[x].get('groups_per_device', 1) > 1
                 and variants[x].get('group_mode', 'unroll' if variants[x].get('groups_unrolled') else 'loop')
                 == 'loop' for x in (a, b))
    if looped:
      out['flops_ratios'][name] = None
    elif ca and cb and ca.get('flops') and cb.get('flops'):
      out['flops_ratios'][name] = {
          'flops': ca['flops'] / cb['flops'],
          'bytes_accessed': (ca.get('bytes accessed', 0) / cb['bytes accessed']
                             if cb.get('bytes accessed') else None)}
  for name, a, b, target in MEMORY_RATIOS:
    if a in variants and b in variants and variants[a]['memory'] and variants[b]['memory']:
      ma, mb = variants[a]['memory'], variants[b]['memory']
      value = ma['peak_estimate_bytes'] / mb['peak_estimate_bytes']
      out['memory_ratios'][name] = {
          'value': value, 'temp_ratio': (ma['temp_size_in_bytes'] / mb['temp_size_in_bytes']
                                         if mb['temp_size_in_bytes'] else None),
          'target': target, 'met': None if target is None else value <= target}
      out['memory_ratios'][name]['status'] = _met_or_missed(out['memory_ratios'][name]['met'])
  # Model FLOP utilisation: 3 × forward FLOPs × batch per forward-backward pass, per device.
  fwd, peak = out.get('forward_gflops_per_example'), out.get('peak_tflops_per_device')
  for v, x in variants.items():
    if fwd and 'step_s' in x:
      flops = PASSES.get(v, 2) * 3 * fwd * 1e9 * out['batch'] / out['devices']
      x['model_tflops_per_s_per_device'] = flops / x['step_s']['median'] / 1e12
      x['mfu'] = x['model_tflops_per_s_per_device'] / peak if peak else None
  return out


def _met_or_missed(met):
  return None if met is None else ('met' if met else 'missed')


# --------------------------------------------------------------------------------- input pipelines
def _synthetic_encoded(kind, distinct, width, height, seed=0):
  """Encoded images: PNG 32×32 (CIFAR, as tfds stores it) or JPEG q=90 of ImageNet-like content."""
  import numpy as np
  import tensorflow as tf
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(distinct):
    if kind == 'cifar':
      img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
      out.append(tf.io.encode_png(img).numpy())
      continue
    # Smooth colour fields plus texture: JPEGs of about the size (bytes per pixel) of ImageNet photos.
    coarse = rng.uniform(0, 255, size=(height // 25 + 2, width // 25 + 2, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse[None], (height, width), method='bicubic')[0].numpy()
    img = np.clip(smooth + rng.normal(0, 18, size=smooth.shape), 0, 255).astype(np.uint8)
    out.append(tf.io.encode_jpeg(img, quality=90).numpy())
  return out


def pipeline_worker(args: dict) -> dict:
  """Throughput of data.make_train_iterator on synthetic encoded images (runs in a child process)."""
  import numpy as np
  import tensorflow as tf
  import tensorflow_datasets as tfds
  import data
  kind = args['kind']
  encoded = _synthetic_encoded(kind, args['distinct'], args.get('width', 32), args.get('height', 32))
  n = args['num_examples']
  images = [encoded[i % len(encoded)] for i in range(n)]
  labels = np.arange(n, dtype=np.int64) % (10 if kind == 'cifar' else 1000)

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del self, split, decoders, read_config, kwargs
    return tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels, 'id': labels})

  if kind == 'cifar':
    cfg = {'name': 'cifar10', 'num_train_examples': n}
  else:
    cfg = {'name': 'imagenet2012', 'num_train_examples': n, 'image_size': args['image_size'],
           'randaugment_layers': args['randaugment_layers'],
           'randaugment_magnitude': args['randaugment_magnitude']}
  batch, batches = args['batch'], args['batches']
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    it = data.make_train_iterator(cfg, global_batch_size=batch, seed=0, process_index=0,
                                  process_count=1)
    steps_per_epoch = n // batch
    warm = steps_per_epoch if kind == 'cifar' else 1  # CIFAR: the first epoch fills the cache
    for _ in range(warm):
      first = next(it)
    t0 = time.perf_counter()
    c0 = _own_cpu_seconds()
    for _ in range(batches):
      last = next(it)
    wall = time.perf_counter() - t0
    cpu = _own_cpu_seconds() - c0
  return {'kind': kind, 'images_per_s': batch * batches / wall, 'num_examples': n, 'wall_s': wall,
          'cpu_cores_used': cpu / wall, 'batch': batch, 'batches': batches,
          'image_shape': list(last['image'].shape[1:]), 'dtype': str(last['image'].dtype),
          'mean_encoded_bytes': float(np.mean([len(e) for e in encoded])),
          'affinity_cores': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
          'finite': bool(np.isfinite(first['image']).all() and np.isfinite(last['image']).all())}


def _run_worker(args: dict, cores):
  """pipeline_worker in a child process restricted to ``cores`` (None: all cores); the child pins
  itself before TensorFlow starts, so its thread pools are sized for those cores."""
  args = dict(args, pin_cores=None if cores is None else sorted(cores))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--pipeline_worker', json.dumps(args)],
                        capture_output=True, text=True, env=env, cwd=ROOT, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if proc.returncode or not lines:
    raise RuntimeError(f'pipeline worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}')
  return json.loads(lines[-1])


def bench_pipelines(preset, *, pin, log):
  out = {}
  for kind in ('cifar', 'imagenet'):
    args = dict(preset[kind], kind=kind)
    if pin and hasattr(os, 'sched_setaffinity'):
      one_core = {sorted(os.sched_getaffinity(0))[0]}
      log(f'pipeline {kind}: one core')
      single = _run_worker(args, one_core)
      log(f'pipeline {kind}: all cores')
      full = _run_worker(args, None)
      method = 'child processes: one pinned to 1 core (sched_setaffinity), one on all cores'
    else:
      log(f'pipeline {kind}: in process (all cores; per core = total / cores used)')
      full = pipeline_worker(args)
      single = dict(full, images_per_s=full['images_per_s'] / max(full['cpu_cores_used'], 1e-9))
      method = ('in process on all cores; "1 core" = images per CPU-second the process used '
                '(images/s ÷ mean CPU cores used)')
    out[kind] = {'config': args, 'one_core': single, 'all_cores': full, 'method': method,
                 'images_per_s_per_core': single['images_per_s'],
                 'images_per_s_all_cores': full['images_per_s']}
  return out


def _compare_pipeline(pipe, step_result, variant_names=('sgd', 'sam', 'rsam')):
  rows = {}
  for v in variant_names:
    if v not in step_result['variants']:
      continue
    step_ips = step_result['variants'][v]['images_per_s']
    rows[v] = {'step_images_per_s': step_ips,
               'pipeline_over_step': pipe['images_per_s_all_cores'] / step_ips,
               'cores_needed_to_feed_step': step_ips / pipe['images_per_s_per_core']}
  strictest = min(rows, key=lambda v: rows[v]['pipeline_over_step'])
  met = rows[strictest]['pipeline_over_step'] >= PIPELINE_TARGET
  return {'model': step_result['model']['spec'], 'by_step': rows, 'strictest_step': strictest,
          'value': rows[strictest]['pipeline_over_step'], 'target': PIPELINE_TARGET, 'met': met,
          'status': _met_or_missed(met)}


# ---------------------------------------------------------------------------------------- reports
def _mb(x):
  return f'{x / 2 ** 20:.1f}' if x is not None else 'n/a'


def _gib(x):
  return f'{x:.1f}' if x is not None else 'n/a'


def _fmt_ratio(s):
  if 'ci_low' not in s:  # a report from before the intervals
    return f"{s['median']:.3f} [{s['min']:.3f}–{s['max']:.3f}]"
  return (f"{s['median']:.3f} [{s['ci_low']:.3f}–{s['ci_high']:.3f}] "
          f"({s['min']:.3f}–{s['max']:.3f})")


def _status(s):
  status = s.get('status', _met_or_missed(s.get('met')))
  return {None: '—', 'missed': '**missed**'}.get(status, status)


def _flops_note(r) -> str:
  if not r.get('forward_gflops_per_example'):
    return ''
  return (f" Model FLOPs: 3 × {r['forward_gflops_per_example']:.3g} GFLOP (XLA's count of one forward "
          f"pass per image) × batch per forward-backward pass (2 for the sharpness-aware variants); MFU "
          f"against {r['peak_tflops_per_device'] or 'n/a'} TFLOP/s ({r['peak_source']}).")


def markdown(report) -> str:
  h, v, mon = report['hardware'], report['versions'], report['machine_load']
  lines = [f"# Benchmark report ({report['preset']} preset)", '',
           f"- Date (UTC): {report['date']}",
           f"- Command: `{report['command']}`",
           f"- Commit: {report['git']['commit']} (uncommitted changes: {report['git']['uncommitted_changes']})",
           f"- Hardware: {h['cpu']}, {h['cpu_count']} CPU cores ({h['cpu_affinity']} usable), "
           f"{_gib(h['memory_gib'])} GiB RAM; JAX {h['platform']} with {h['num_devices']} device(s) "
           f"(XLA_FLAGS=`{h['xla_flags']}`)",
           '- Versions: ' + ', '.join(f'{k} {val}' for k, val in v.items() if val),
           f"- Machine load: 1-min load average {mon['load_average_before'][0]:.2f} before, "
           + (f"median {mon['load_average_1min_during']['median']:.2f} "
              f"[{mon['load_average_1min_during']['min']:.2f}–{mon['load_average_1min_during']['max']:.2f}] "
              f"during the step timings (this benchmark included), " if mon['load_average_1min_during'] else '')
           + f"{mon['load_average_after'][0]:.2f} after; other processes used "
           + (f"{mon['other_processes_cpu_cores_mean']:.2f}" if 'other_processes_cpu_cores_mean' in mon else 'n/a')
           + f" CPU cores on average over the {mon['wall_s']:.0f} s run (this one: "
           f"{mon['own_cpu_cores_mean']:.2f}).",
           '', '## Targets', '',
           '| model | metric | median [confidence interval] (min–max) | target | status |',
           '|---|---|---|---|---|']
  for r in report['step_times']:
    for name, s in r['time_ratios'].items():
      tgt = f"≤ {s['target']:.2f}" if s['target'] is not None else '(none)'
      lines.append(f"| {r['model']['spec']} | step time {name} | {_fmt_ratio(s)} | {tgt} | {_status(s)} |")
    for name, s in r['memory_ratios'].items():
      if s['target'] is not None:
        lines.append(f"| {r['model']['spec']} | peak memory {name} | {s['value']:.3f} | ≤ {s['target']:.2f} "
                     f"| {_status(s)} |")
  for kind, c in report.get('pipeline_vs_step', {}).items():
    lines.append(f"| {c['model']} | {kind} pipeline / {c['strictest_step']} step (images/s) | "
                 f"{c['value']:.2f} | ≥ {c['target']:.1f} | {_status(c)} |")
  coverage = [s['ci_coverage'] for r in report['step_times'] for s in r['time_ratios'].values()
              if 'ci_coverage' in s]
  lines += ['', 'Ratios are medians over rounds of the per-round ratio of the two variants (each round '
            'times every variant back to back, so both see the same machine state); min–max is the '
            'spread over rounds. The interval is a distribution-free confidence interval for that median '
            + (f'(order statistics, coverage {min(coverage):.1%}) ' if coverage else '')
            + "and decides the status: 'met' when all of it is within the target, '**missed**' when none "
            "of it is, 'within noise' when it straddles the target (more rounds, or a quieter machine, "
            "would tell). 'R-SAM (δ0 fused)/SAM' is an ablation, not a target: R-SAM with "
            '`rsam.updaters.materialized` off, as the noise was drawn before that fix.', '']
  for r in report['step_times']:
    grouped = r['variants'].get('sam_grouped', {})
    how = grouped.get('group_mode', 'unroll' if grouped.get('groups_unrolled') else 'loop')
    lines += [f"## Step times: {r['model']['spec']}", '',
              f"{r['num_params'] / 1e6:.2f}M parameters, batch {r['batch']}, {r['devices']} device(s), "
              f"m = {r['m']} for the grouped variants ({grouped.get('groups_per_device', '?')} groups per "
              f"device; sam_grouped in mode '{how}', sam_grouped_vmap in 'vmap'); {report['settings']['repeats']} rounds × "
              f"{report['settings']['steps']} steps after {report['settings']['warmup']} warm-up steps; "
              f"compute {r['model'].get('dtype', 'float32')}." + _flops_note(r), '',
              '| variant | step s: median [min–max] | images/s | model TFLOP/s per device (MFU) | '
              'compile s (lower + compile) | peak memory MB (args+out+temp−alias) | temp MB | '
              'XLA GFLOP/step | GB accessed/step |',
              '|---|---|---|---|---|---|---|---|---|']
    for name, x in r['variants'].items():
      s, mem, cost = x['step_s'], x['memory'] or {}, x['cost'] or {}
      gflop = f"{cost['flops'] / 1e9:.2f}" if cost.get('flops') else 'n/a'
      gbytes = f"{cost['bytes accessed'] / 1e9:.2f}" if cost.get('bytes accessed') else 'n/a'
      tflops = x.get('model_tflops_per_s_per_device')
      mfu = f"{tflops:.3g}" if tflops is not None else 'n/a'
      if x.get('mfu') is not None:
        mfu += f" ({x['mfu']:.1%})"
      lines.append(
          f"| {name} | {s['median']:.3f} [{s['min']:.3f}–{s['max']:.3f}] | {x['images_per_s']:.1f} | "
          f"{mfu} | {x['lower_s'] + x['compile_s']:.1f} ({x['lower_s']:.1f} + {x['compile_s']:.1f}) | "
          f"{_mb(mem.get('peak_estimate_bytes'))} | {_mb(mem.get('temp_size_in_bytes'))} | {gflop} | "
          f"{gbytes} |")
    if r['flops_ratios']:
      lines += ['', 'XLA cost-analysis ratios (noise-free; what the time ratios would be if time followed '
                'flops or bytes): ' + '; '.join(
                    (f"{k}: flops {f['flops']:.3f}" + (f", bytes {f['bytes_accessed']:.3f}"
                                                       if f['bytes_accessed'] else '')
                     if f else f'{k}: n/a (the cost analysis counts the scan over groups once)')
                    for k, f in r['flops_ratios'].items())]
    fsdp = {v: r['variants'][v] for v in FSDP if 'state_bytes_per_device' in r['variants'].get(v, {})}
    if fsdp and 'state_bytes_per_device' in r['variants'].get('rsam', {}):
      mb = lambda x: f"{x['state_bytes_per_device'] / 2**20:.3f} MB"
      lines += ['', f"Train state on one device (measured from its shards): rsam {mb(r['variants']['rsam'])}; "
                + '; '.join(f"{v} {mb(x)} (mesh {x['mesh']})" for v, x in fsdp.items())]
    if 'sam_vs_optax_first_step_max_abs_param_diff' in r:
      lines += ['', f"Our SAM and optax.contrib.sam from the same state: max |Δparams| after one step = "
                f"{r['sam_vs_optax_first_step_max_abs_param_diff']:.2e}."]
    peaks = {k: x['device_peak_bytes_after_warmup'] for k, x in r['variants'].items()}
    if any(p is not None for p in peaks.values()):
      lines += ['', 'Device peak_bytes_in_use after each warm-up (process high-water mark, in compile '
                'order): ' + ', '.join(f'{k} {_mb(p)} MB' for k, p in peaks.items())]
    lines.append('')
  if 'pipelines' in report:
    lines += ['## Input pipelines', '',
              '| pipeline | images/s on 1 core | images/s on all cores | output | mean encoded bytes |',
              '|---|---|---|---|---|']
    for kind, p in report['pipelines'].items():
      lines.append(f"| {kind} | {p['images_per_s_per_core']:.1f} | {p['images_per_s_all_cores']:.1f} | "
                   f"{'×'.join(map(str, p['all_cores']['image_shape']))} {p['all_cores']['dtype']} | "
                   f"{p['all_cores']['mean_encoded_bytes']:.0f} |")
    lines += ['', f"Method: {next(iter(report['pipelines'].values()))['method']}.", '',
              '| pipeline | feeds | step | step images/s | pipeline/step (all cores) | cores the pipeline '
              'needs to keep up |', '|---|---|---|---|---|---|']
    for kind, c in report['pipeline_vs_step'].items():
      for v, row in c['by_step'].items():
        lines.append(f"| {kind} | {c['model']} | {v} | {row['step_images_per_s']:.1f} | "
                     f"{row['pipeline_over_step']:.2f} | {row['cores_needed_to_feed_step']:.3f} |")
    lines.append('')
  if report.get('state_memory'):
    sizes = list(next(iter(report['state_memory'].values()))['bytes_per_device'])
    lines += ['## Train state per device against the fsdp size', '',
              'Parameters and AdamW moments (float32) of the ImageNet ViT R-SAM config, per device, with '
              'the state split along `fsdp` (`config.mesh`; any `data` size replicates it) by the '
              'training code\'s rule: leaves of at least `shard_min_bytes` on their largest dimension '
              'the fsdp size divides. From shapes alone; the step adds activations and the '
              'step\'s parameter-sized temporaries (perturbed weights, gradients).', '',
              '| model | parameters | ' + ' | '.join(f'fsdp={k} GiB' for k in sizes) + ' |',
              '|---|---|' + '---|' * len(sizes)]
    for name, row in report['state_memory'].items():
      lines.append(f"| {name} | {row['num_params'] / 1e6:.1f}M | "
                   + ' | '.join(f"{row['bytes_per_device'][k] / 2**30:.3f}" for k in sizes) + ' |')
    lines.append('')
  lines += ['## Method', '', report['method'], '']
  return '\n'.join(lines)


def check_report(report) -> list:
  """Problems with a report's shape (empty when well-formed): every variant the run asked for measured,
  every ratio between two of them present, every number finite and positive; the pipelines if asked."""
  problems = []
  settings = report.get('settings', {})
  asked = tuple(settings.get('variants') or VARIANTS)

  def num(x, where):
    if not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
      problems.append(f'{where}: {x!r} is not a finite positive number')
  if not report.get('step_times'):
    problems.append('no step_times')
  for r in report.get('step_times', []):
    tag = r.get('model', {}).get('spec')
    for name, a, b, _ in TIME_RATIOS:
      if a not in asked or b not in asked:
        continue
      if name not in r.get('time_ratios', {}):
        problems.append(f'{tag}: missing time ratio {name}')
      else:
        num(r['time_ratios'][name]['median'], f'{tag} time {name}')
    for name, a, b, _ in MEMORY_RATIOS:
      if a not in asked or b not in asked:
        continue
      if name not in r.get('memory_ratios', {}):
        problems.append(f'{tag}: missing memory ratio {name}')
      else:
        num(r['memory_ratios'][name]['value'], f'{tag} memory {name}')
    for v in asked:
      x = r.get('variants', {}).get(v)
      if x is None or 'step_s' not in x:
        problems.append(f'{tag}: missing variant {v}')
        continue
      num(x['step_s']['median'], f'{tag} {v} step_s')
      num(x['compile_s'], f'{tag} {v} compile_s')
      num(x.get('model_tflops_per_s_per_device'), f'{tag} {v} model TFLOP/s')
  for kind in ('cifar', 'imagenet') if settings.get('pipelines', True) else ():
    p = report.get('pipelines', {}).get(kind)
    if p is None:
      problems.append(f'missing pipeline {kind}')
      continue
    num(p['images_per_s_per_core'], f'{kind} pipeline per core')
    num(p['images_per_s_all_cores'], f'{kind} pipeline all cores')
    c = report.get('pipeline_vs_step', {}).get(kind)
    if c is None:
      problems.append(f'missing pipeline_vs_step {kind}')
    else:
      num(c['value'], f'{kind} pipeline/step')
  return problems


# ------------------------------------------------------------------------------------------- main
def write_json(report, path):
  """Whole or not at all (rsam/training/paths.py): a run killed mid-write keeps the previous file."""
  from rsam.training import paths  # pylint: disable=g-import-not-at-top
  paths.write_json(path, report)


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--preset', choices=sorted(PRESETS), default='full')
  p.add_argument('--restart', action='store_true',
                 help='instead of the step suite: resume-to-first-step against a cold start (one of each, '
                      'rsam/training/restart_bench.py) and the checksum hashing throughput; writes '
                      'restart.json and restart.md to --out')
  p.add_argument('--restart_args', default='--config configs/tiny.py',
                 help='the train.py arguments of the --restart measurement')
  p.add_argument('--hash_bytes', type=int, default=1 << 30, help='file size of the hashing measurement')
  p.add_argument('--out', default='benchmarks_out',
                 help='folder for benchmark.json and benchmark.md, relative to the repository (default '
                      'benchmarks_out/, ignored by git; the committed report is results/benchmarks: pass '
                      '--out results/benchmarks to replace it)')
  p.add_argument('--models', nargs='+', help='model specs (see PRESETS), overriding the preset')
  p.add_argument('--variants', nargs='+', choices=VARIANTS, help="overriding the preset's")
  p.add_argument('--repeats', type=int)
  p.add_argument('--steps', type=int, help='steps per variant per round')
  p.add_argument('--warmup', type=int)
  p.add_argument('--m', type=int, help='examples per m-sharpness group for sam_grouped')
  p.add_argument('--imagenet_step', help="model spec of the step the ImageNet pipeline feeds ('' = none)")
  p.add_argument('--host_devices', type=int,
                 help='CPU only: number of XLA host devices (sets XLA_FLAGS before JAX starts)')
  p.add_argument('--fast_compile', action='store_true',
                 help="compile at XLA's lowest optimisation level (quick checks only: slower steps)")
  p.add_argument('--peak_tflops', type=float,
                 help='peak TFLOP/s of one device for MFU (default: the bf16 datasheet value by device kind)')
  p.add_argument('--skip_pipelines', action='store_true')
  p.add_argument('--no_pin', action='store_true', help='measure pipelines in process (no child processes)')
  p.add_argument('--render', metavar='JSON',
                 help='only redo the derived ratios and the markdown of an existing benchmark.json')
  p.add_argument('--pipeline_worker', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def restart(args, argv) -> dict:
  """The --restart measurement (rsam/training/restart_bench.py): prints the ratio, writes restart.json/.md."""
  from rsam.training import paths, restart_bench  # pylint: disable=g-import-not-at-top
  out = args.out if os.path.isabs(args.out) or paths.is_remote(args.out) else os.path.join(ROOT, args.out)
  paths.makedirs(out)
  load = os.getloadavg()
  result = restart_bench.measure(shlex.split(args.restart_args))
  print(f"cold start {result['cold']['seconds']:.1f} s, resume {result['resume']['seconds']:.1f} s to the "
        f"first step: ratio {result['ratio']:.2f} (target <= {result['target']})", flush=True)
  hashing = restart_bench.hash_throughput(args.hash_bytes)
  from configs import vit_b16_rsam  # pylint: disable=g-import-not-at-top
  vit = {'config': 'configs/vit_b16_rsam.py', 'bytes': restart_bench.state_bytes(vit_b16_rsam.get_config())}
  print(f"sha256 {hashing['bytes_per_s'] / 1e9:.2f} GB/s; ViT-B/16 state {vit['bytes'] / 1e9:.2f} GB: "
        f"{vit['bytes'] / hashing['bytes_per_s']:.1f} s per save and per restore", flush=True)
  report = {'command': _command(argv), 'date': datetime.datetime.now(datetime.timezone.utc).strftime(
                '%Y-%m-%d %H:%M'), 'git': _git(), 'hardware': _hardware(), 'versions': _versions(),
            'load': [round(x, 2) for x in load], 'restart': result, 'hashing': hashing, 'vit_b16': vit}
  write_json(report, f'{out}/restart.json')
  paths.write_text(f'{out}/restart.md', restart_bench.markdown(report))
  return report


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.pipeline_worker:
    worker_args = json.loads(args.pipeline_worker)
    if worker_args.get('pin_cores'):
      os.sched_setaffinity(0, set(worker_args['pin_cores']))  # before TensorFlow sizes its pools
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    print(json.dumps(pipeline_worker(worker_args)), flush=True)
    return None
  from rsam.training import paths  # pylint: disable=g-import-not-at-top
  if args.restart:
    return restart(args, argv)
  if args.render:
    report = paths.read_json(args.render)
    for r in report['step_times'] + ([report['imagenet_step']] if 'imagenet_step' in report else []):
      derive_ratios(r)
    write_json(report, args.render)
    paths.write_text(paths.path(paths.normalize(args.render)).parent / 'benchmark.md', markdown(report))
    return report
  if args.host_devices:  # read when JAX's backend starts (not when jax is imported): none has started yet
    flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
             if not f.startswith('--xla_force_host_platform_device_count')]
    os.environ['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={args.host_devices}'])
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  preset = dict(PRESETS[args.preset])
  if args.fast_compile:
    preset['fast_compile'] = True
  for key in ('models', 'variants', 'repeats', 'steps', 'warmup', 'm', 'imagenet_step'):
    if getattr(args, key) is not None:
      preset[key] = getattr(args, key)
  if args.skip_pipelines:
    preset['pipelines'] = False
  variants = tuple(v for v in VARIANTS if v in preset['variants'])

  import jax  # pylint: disable=g-import-not-at-top
  from rsam.training import train_step  # pylint: disable=g-import-not-at-top
  out = args.out if os.path.isabs(args.out) or paths.is_remote(args.out) else os.path.join(ROOT, args.out)
  paths.makedirs(out)

  def log(msg):
    print(f'[{time.strftime("%H:%M:%S")}] {msg}', flush=True)

  monitor = MachineMonitor()
  mesh = train_step.make_mesh()
  report = {'preset': args.preset, 'command': _command(argv),
            'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M'),
            'git': _git(), 'hardware': _hardware(), 'versions': _versions(),
            'settings': {**{k: preset[k] for k in ('models', 'repeats', 'steps', 'warmup', 'm',
                                                   'imagenet_step', 'fast_compile', 'pipelines')},
                         'variants': list(variants), 'peak_tflops': args.peak_tflops},
            'method': __doc__.split('What is measured, and how\n-------------------------\n')[1].strip(),
            'step_times': []}

  def progress(partial):  # the JSON so far, rewritten as each measurement lands
    write_json(report | {'step_times': report['step_times'] + [partial], 'partial': True},
               f'{out}/benchmark.json')

  if preset.get('state_memory'):
    log(f"state memory per device of {', '.join(preset['state_memory'])} (shapes only)")
    report['state_memory'] = state_memory(preset['state_memory'])
  for spec in preset['models']:
    model = _parse_model(spec)
    report['step_times'].append(bench_updaters(
        model, variants=variants, repeats=preset['repeats'], steps=preset['steps'],
        warmup=preset['warmup'], m=preset['m'], mesh=mesh, monitor=monitor, log=log,
        fast_compile=preset['fast_compile'], peak_override=args.peak_tflops, progress=progress))
  if preset['pipelines']:
    imagenet_step = None
    if preset['imagenet_step']:
      model = _parse_model(preset['imagenet_step'])
      imagenet_step = bench_updaters(model, variants=('sgd',), repeats=max(2, preset['repeats'] // 3),
                                     steps=1, warmup=1, m=None, mesh=mesh, monitor=monitor, log=log,
                                     fast_compile=preset['fast_compile'])
      report['imagenet_step'] = imagenet_step
    jax.clear_caches()
    report['pipelines'] = bench_pipelines(preset, pin=preset['pin'] and not args.no_pin, log=log)
    report['pipeline_vs_step'] = {'cifar': _compare_pipeline(report['pipelines']['cifar'],
                                                             report['step_times'][0])}
    # Without an ImageNet-resolution step (smoke preset) the first model's step stands in.
    report['pipeline_vs_step']['imagenet'] = _compare_pipeline(
        report['pipelines']['imagenet'], imagenet_step or report['step_times'][0])
  report['machine_load'] = monitor.result()
  write_json(report, f'{out}/benchmark.json')
  paths.write_text(f'{out}/benchmark.md', markdown(report))
  problems = check_report(report)
  log(f"report: {os.path.join(args.out, 'benchmark.md')}" + (f'; PROBLEMS: {problems}' if problems else ''))
  return report


if __name__ == '__main__':
  main()

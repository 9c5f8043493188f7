"""A small mutation-testing harness: break the code on purpose, one change at a time, and check that the
tests relevant to the changed file notice.

Each ``Mutation`` replaces one exact snippet of one file (it must occur exactly once, so the list fails
loudly when the code moves on). ``run`` copies the checkout (the files git tracks plus untracked,
not-ignored ones) into a temporary folder, and for each mutation writes the mutated file THERE, runs
pytest on the mutation's tests with that copy first on the path, and restores the file. The working tree
is never touched. A mutation is

  killed    the tests failed (pytest exit status 1), as they should;
  survived  the tests passed: either a gap in the tests or an equivalent mutation (a change that cannot
            alter behaviour); the list notes the known equivalent ones;
  timeout   the tests ran past the limit (counted as killed by most tools; reported apart here);
  error     pytest could not run the selection (exit status 2-5: a wrong test id, no tests collected).

The command line is ``scripts/mutation_test.py``; the list is ``MUTATIONS`` below. Tests for the harness
itself (and a smoke run in CI) are in tests/test_mutation.py.
"""
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

# The tests that exercise each file (pytest arguments); a mutation may name a narrower selection.
RELEVANT_TESTS = {
    'rsam/training/factory.py': ('tests/test_wiring.py', 'tests/test_updaters.py'),
    'rsam/updaters.py': ('tests/test_updaters.py', 'tests/test_wiring.py', 'tests/test_adoption.py'),
    'rsam/schedules.py': ('tests/test_wiring.py', 'tests/test_updaters.py', 'tests/test_adoption.py'),
    'rsam/noise.py': ('tests/test_updaters.py', 'tests/test_adoption.py'),
    'rsam/tree.py': ('tests/test_updaters.py', 'tests/test_adoption.py'),
    'rsam/msharpness.py': ('tests/test_updaters.py', 'tests/test_adoption.py'),
    'rsam/transforms.py': ('tests/test_adoption.py', 'tests/test_transforms.py'),
    'rsam/leaf_rules.py': ('tests/test_adoption.py', 'tests/test_updaters.py'),
    'rsam/checks.py': ('tests/test_adoption.py',),
    'rsam/__init__.py': ('tests/test_adoption.py',),
    'rsam/training/optim.py': ('tests/test_wiring.py', 'tests/test_configs.py', '-m', 'not slow'),
    'rsam/training/losses.py': ('tests/test_train_step.py',),
    'rsam/training/train_step.py': ('tests/test_train_step.py',),
    'data/mixup.py': ('tests/test_train_step.py', 'tests/test_augment.py', '-k', 'mixup or feeds'),
    'rsam/training/evaluation.py': ('tests/test_train.py',),
    'data/evalsets.py': ('tests/test_evalsets.py',),
    'data/input_pipeline.py': ('tests/test_evalsets.py', 'tests/test_data.py', '-m', 'not slow'),
    'data/sources.py': ('tests/test_evalsets.py', 'tests/test_data.py', '-m', 'not slow'),
}


@dataclasses.dataclass(frozen=True)
class Mutation:
  id: str
  file: str       # relative to the checkout root
  old: str        # an exact snippet, present exactly once in the file
  new: str
  tests: Tuple[str, ...] = ()   # pytest arguments; empty: RELEVANT_TESTS[file]
  note: str = ''  # what the mutation stands for (or why it is equivalent)

  def pytest_args(self) -> Tuple[str, ...]:
    if self.tests:
      return self.tests
    if self.file not in RELEVANT_TESTS:
      raise ValueError(f'{self.id}: no tests named and {self.file} is not in RELEVANT_TESTS')
    return RELEVANT_TESTS[self.file]


@dataclasses.dataclass
class Result:
  mutation: Mutation
  status: str     # killed | survived | timeout | error
  seconds: float
  output: str     # the tail of pytest's output

  def killer(self) -> str:
    """The first failing test named in the output ('?' when none is)."""
    for line in self.output.splitlines():
      if line.startswith(('FAILED ', 'ERROR ')):
        return line.split()[1]
    return '?'


def apply(text: str, mutation: Mutation) -> str:
  """``text`` with the mutation's snippet replaced; ValueError unless it occurs exactly once."""
  count = text.count(mutation.old)
  if count != 1:
    raise ValueError(f'{mutation.id}: the snippet occurs {count} times in {mutation.file} (must be once): '
                     f'{mutation.old!r}')
  return text.replace(mutation.old, mutation.new)


def checkout_files(root: str) -> List[str]:
  """The files of the checkout: tracked plus untracked-but-not-ignored (git), relative paths."""
  out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=root,
                       check=True, capture_output=True).stdout.decode()
  return [p for p in out.split('\0') if p and os.path.isfile(os.path.join(root, p))]


def copy_checkout(root: str, dest: str) -> None:
  """Copies the checkout's files (``checkout_files``) from ``root`` into ``dest``."""
  for rel in checkout_files(root):
    target = os.path.join(dest, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(os.path.join(root, rel), target)


def run_pytest(root: str, args: Sequence[str], timeout: float) -> Tuple[str, str]:
  """Runs pytest in ``root`` with ``root`` first on the path; (status, output tail)."""
  env = dict(os.environ, PYTHONPATH=root, PYTHONDONTWRITEBYTECODE='1')
  cmd = [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', *args]
  try:
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
    return 'timeout', out[-2000:]
  status = {0: 'survived', 1: 'killed'}.get(proc.returncode, 'error')
  return status, (proc.stdout + proc.stderr)[-2000:]


def baseline_selections(mutations: Sequence[Mutation]) -> List[Tuple[str, ...]]:
  """The fewest pytest runs that cover every mutation's selection: one per set of options (-m, -k, ...),
  over the union of its test files; a node id (file::test) is left out when its whole file runs."""
  groups = {}
  for m in mutations:
    args = m.pytest_args()
    paths = [a for a in args if a.startswith('tests/')]
    options = tuple(a for a in args if not a.startswith('tests/'))
    groups.setdefault(options, set()).update(paths)
  runs = []
  for options, paths in sorted(groups.items()):
    kept = sorted(p for p in paths if '::' not in p or p.split('::')[0] not in paths)
    runs.append(tuple(kept) + options)
  return runs


def run(mutations: Iterable[Mutation], root: str, *, timeout: float = 600, baseline: bool = True,
        log: Optional[Callable[[str], None]] = None) -> List[Result]:
  """Runs each mutation in a temporary copy of the checkout at ``root``; the results in order.

  ``baseline``: first run every selection on the unmutated copy and stop (RuntimeError) if one fails --
  a mutation can only be judged against tests that pass on today's code.
  """
  mutations = list(mutations)
  log = log or (lambda s: None)
  results = []
  with tempfile.TemporaryDirectory(prefix='rsam-mutation-') as tmp:
    copy_checkout(root, tmp)
    for m in mutations:  # every snippet must apply before anything runs
      with open(os.path.join(tmp, m.file)) as f:
        apply(f.read(), m)
    if baseline:
      selections = baseline_selections(mutations)
      for selection in selections:
        status, out = run_pytest(tmp, selection, timeout)
        if status != 'survived':
          raise RuntimeError(f'{" ".join(selection)} fails on the unmutated code ({status}); fix that '
                             f'first:\n{out}')
      log(f'baseline: {len(selections)} test selections pass on the unmutated copy')
    for m in mutations:
      path = os.path.join(tmp, m.file)
      with open(path) as f:
        original = f.read()
      start = time.monotonic()
      try:
        with open(path, 'w') as f:
          f.write(apply(original, m))
        status, out = run_pytest(tmp, m.pytest_args(), timeout)
      finally:
        with open(path, 'w') as f:
          f.write(original)
      results.append(Result(m, status, time.monotonic() - start, out))
      killer = f'  by {results[-1].killer()}' if status == 'killed' else ''
      log(f'{status:8s} {results[-1].seconds:6.1f}s  {m.id}{killer}')
  return results


def report(results: Sequence[Result]) -> str:
  """A markdown table of the results, survivors first."""
  order = {'survived': 0, 'error': 1, 'timeout': 2, 'killed': 3}
  lines = ['| status | mutation | file | seconds | caught by | note |', '|---|---|---|---|---|---|']
  for r in sorted(results, key=lambda r: order[r.status]):
    killer = r.killer() if r.status == 'killed' else ''
    lines.append(f'| {r.status} | {r.mutation.id} | {r.mutation.file} | {r.seconds:.0f} | {killer} | '
                 f'{r.mutation.note} |')
  counts = {s: sum(r.status == s for r in results) for s in order}
  lines.append('')
  lines.append(', '.join(f'{n} {s}' for s, n in counts.items() if n))
  return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# The list. Each entry stands for a class of fault (issue: tests that fail when the code is wrong).
M = Mutation
MUTATIONS = (
    # config -> updater wiring (rsam/training/factory.py)
    M('factory-lam-constant', 'rsam/training/factory.py', "lam=cfg.get('lam', 1.0)", 'lam=1.0',
      note="R-SAM's λ never reaches the updater"),
    M('factory-alpha-constant', 'rsam/training/factory.py', "alpha=cfg.get('alpha', 0.0)", 'alpha=0.4',
      note="GSAM's α forced to its default"),
    M('factory-eta-dropped', 'rsam/training/factory.py', "eta=cfg.get('eta', 0.0)", 'eta=0.01',
      note="ASAM's η forced to its default"),
    M('factory-scale-biases-dropped', 'rsam/training/factory.py', "scale_biases=cfg.get('scale_biases', False)",
      'scale_biases=False', note='ASAM scale_biases ignored'),
    M('factory-clean-loss-dropped', 'rsam/training/factory.py', "clean_loss=cfg.get('clean_loss', False)",
      'clean_loss=False', note='clean_loss ignored'),
    M('factory-gamma-growth-dropped', 'rsam/training/factory.py',
      'cosine_increase(cfg.gamma, cfg.gamma_growth,', 'cosine_increase(cfg.gamma, 5.0,',
      note='gamma_growth forced to the R-SAM default'),
    M('factory-warmup-dropped', 'rsam/training/factory.py', 'warmup_steps=cfg.rho_warmup_steps,',
      'warmup_steps=0,', note='rho_warmup_steps ignored'),
    M('factory-gamma-zero-based', 'rsam/training/factory.py', 'max(int(total_steps), 1), one_based=True)',
      'max(int(total_steps), 1))', note="the configs' γ at optax's t = step, not the official loop's step + 1"),
    M('factory-rho-zero-based', 'rsam/training/factory.py', 'warmup_steps=cfg.rho_warmup_steps, one_based=True)',
      'warmup_steps=cfg.rho_warmup_steps)', note="the configs' ρ warm-up branch at t = step"),
    M('factory-rho-min-max-swapped', 'rsam/training/factory.py', 'rho_max=cfg.rho_max, rho_min=cfg.rho_min',
      'rho_max=cfg.rho_min, rho_min=cfg.rho_max', note='lr-tied ρ endpoints swapped'),
    M('factory-lpf-num-samples', 'rsam/training/factory.py', 'num_samples=cfg.num_samples)', 'num_samples=1)',
      note='LPF-SGD num_samples ignored'),
    M('factory-group-mode-dropped', 'rsam/training/factory.py', 'mode=cfg.group_mode)', "mode='auto')",
      note='m-sharpness group_mode ignored'),
    M('factory-accum-dropped', 'rsam/training/factory.py', 'return Plain(accum_steps=accum_steps)', 'return Plain()',
      note='grad_accum_steps ignored by the plain updater'),
    # the updater maths (rsam/updaters.py)
    M('updater-gsam-sign', 'rsam/updaters.py', 'b - alpha * (a - coef * b)', 'b + alpha * (a - coef * b)',
      note='GSAM descends along +g_perp'),
    M('updater-lam-dropped', 'rsam/updaters.py', 'lambda d, g: d + lam * g', 'lambda d, g: d + g',
      note='λ dropped in the ascent'),
    M('updater-no-ascent', 'rsam/updaters.py', '_, g_adv, _, _ = grad_at(T.add_scaled(params, 1.0, e))',
      '_, g_adv, _, _ = grad_at(T.add_scaled(params, 0.0, e))',
      tests=('tests/test_updaters.py::test_bfloat16_model_gets_float32_gradients',),
      note='ascent lost; the bf16 test alone (it used to check only dtype and finiteness)'),
    M('updater-clean-pass-state', 'rsam/updaters.py',
      'return UpdateResult(loss, T.cast_like(grads, params), state, {**metrics, **diagnostics})',
      'return UpdateResult(loss, T.cast_like(grads, params), model_state, {**metrics, **diagnostics})',
      note='BatchNorm state of the first pass thrown away'),
    M('noise-kernel-axis', 'rsam/noise.py', 'axis=tuple(a for a in range(w.ndim) if a != out)',
      'axis=tuple(a for a in range(w.ndim) if a != 0)',
      note='kernel norm over the wrong axes'),
    M('msharpness-local-group-keys', 'rsam/msharpness.py', 'jax.random.fold_in(key, first_group + k)',
      'jax.random.fold_in(key, k)', note='m-sharpness group keys local to a device'),
    # schedules (rsam/schedules.py)
    M('schedule-official-t', 'rsam/schedules.py', 'return step + 1', 'return step',
      note='0-based t in γ and the ρ warm-up'),
    M('schedule-rho-warm-branch', 'rsam/schedules.py', 'warm = rho_max * lr / lr_max', 'warm = rho_max',
      note='ρ warm-up branch not tied to lr'),
    # base optimizer and lr schedule (rsam/training/optim.py)
    M('optim-end-lr-dropped', 'rsam/training/optim.py', "end_lr = float(sched_cfg.get('end_lr', 0.0))",
      'end_lr = 0.0', note='schedule.end_lr ignored'),
    M('optim-nesterov-dropped', 'rsam/training/optim.py', "nesterov=opt_cfg.get('nesterov', False)",
      'nesterov=False', note='optimizer.nesterov ignored'),
    M('optim-b1-dropped', 'rsam/training/optim.py', "b1=opt_cfg.get('b1', 0.9)", 'b1=0.9',
      note='AdamW b1 ignored'),
    M('optim-rmsprop-eps', 'rsam/training/optim.py', "eps=opt_cfg.get('eps', 1e-8),\n                               momentum",
      'eps=1e-8,\n                               momentum', note='RMSProp eps ignored'),
    M('optim-decay-mask', 'rsam/training/optim.py', 'p.ndim > 1 or not kernels_only', 'True',
      note='decay_kernels_only ignored'),
    M('optim-clip-dropped', 'rsam/training/optim.py',
      'parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))', 'pass', note='grad_clip_norm ignored'),
    M('optim-step-factor', 'rsam/training/optim.py', 'int(f * total_steps) - warmup: sched_cfg.step_factor',
      'int(f * total_steps): sched_cfg.step_factor', note="'step' boundaries not shifted by the warm-up"),
    # what the train step feeds the loss (rsam/training/train_step.py, losses.py, data/mixup.py)
    M('step-mixup-targets-dropped', 'rsam/training/train_step.py',
      'images, targets = mixup.mixup(mix_key, images, targets, alpha=config.mixup_alpha)',
      'images, _ = mixup.mixup(mix_key, images, targets, alpha=config.mixup_alpha)',
      note="the step ignores mixup's mixed targets"),
    M('step-mixup-images-dropped', 'rsam/training/train_step.py',
      'images, targets = mixup.mixup(mix_key, images, targets, alpha=config.mixup_alpha)',
      '_, targets = mixup.mixup(mix_key, images, targets, alpha=config.mixup_alpha)',
      note="the step ignores mixup's mixed images"),
    M('step-label-smoothing-dropped', 'rsam/training/train_step.py',
      'config.loss, config.label_smoothing)', 'config.loss, 0.0)', note='label_smoothing ignored'),
    M('step-loss-name-dropped', 'rsam/training/train_step.py', 'losses.make_loss_fn(model, config.loss)',
      "losses.make_loss_fn(model, 'softmax_xent')", note='config.loss ignored'),
    M('build-accum-dropped', 'rsam/training/train_step.py', 'accum_steps=config.grad_accum_steps,',
      'accum_steps=1,', tests=('tests/test_wiring.py', 'tests/test_train_step.py'),
      note='build drops grad_accum_steps'),
    M('build-lr-min-dropped', 'rsam/training/train_step.py', 'lr_max=lr_max, lr_min=lr_min, mesh=mesh',
      'lr_max=lr_max, lr_min=0.0, mesh=mesh', tests=('tests/test_wiring.py', 'tests/test_train_step.py'),
      note='ρ tied to a schedule ending at 0'),
    M('losses-sigmoid-floor', 'rsam/training/losses.py',
      "floor = label_smoothing if loss == 'sigmoid_xent' else label_smoothing / num_classes",
      'floor = label_smoothing / num_classes', note='sigmoid smoothing floor of softmax'),
    M('mixup-labels-not-mixed', 'data/mixup.py', 'return mix(images), mix(labels)', 'return mix(images), labels',
      note="mixup's label mixing"),
    M('step-same-key-every-step', 'rsam/training/train_step.py',
      'jax.random.split(jax.random.fold_in(root, step))', 'jax.random.split(root)',
      note='the same mixup ratio and updater key at every step'),
    M('losses-accuracy-vs-target', 'rsam/training/losses.py', "jnp.argmax(batch['target'], -1)",
      "jnp.argmin(batch['target'], -1)", note='training accuracy against the wrong class'),
    M('mixup-roll-axis', 'data/mixup.py', 'w * x + (1 - w) * jnp.roll(x, 1, axis=0)',
      'w * x + (1 - w) * jnp.roll(x, 1, axis=-1)',
      note='mixes along features instead of examples'),
    # the updaters' other parts (found by the first run having no survivors: untargeted probes)
    M('updater-lpf-shared-noise', 'rsam/updaters.py', 'kernelwise_noise(jax.random.fold_in(noise_key, k), params,',
      'kernelwise_noise(noise_key, params,', note='LPF-SGD chunks share one noise draw'),
    M('updater-cosine-diagnostic', 'rsam/updaters.py', 'cos_ascent_descent=T.cosine(g_first, g_adv, self.eps)',
      'cos_ascent_descent=T.cosine(g_first, g_first, self.eps)', note='diagnostic of the wrong pair'),
    M('updater-clean-loss-key', 'rsam/updaters.py',
      'mean_loss(loss_fn, params, model_state, batch, dropout_key,',
      'mean_loss(loss_fn, params, model_state, batch, noise_key,',
      note="clean_loss's dropout draws differ from the passes' (monitoring only)"),
    M('evaluation-train-mode', 'rsam/training/evaluation.py', "batch['image'], train=False)",
      "batch['image'], train=True)",
      note='evaluation in training mode (dropout, batch statistics)'),
    # reliability, sharding and evaluation cadence (issues #12, #15, #16)
    M('checkpoint-checksums-ignored', 'rsam/training/checkpointing.py',
      "bad = [n for n, h in manifest['files'].items() if got[n] != h]", 'bad = []',
      tests=('tests/test_faults.py', '-k', 'flipped'), note='the checksum manifest is read but never compared'),
    M('checkpoint-tmp-name-invented', 'rsam/training/checkpointing.py', 'if TMP_SUFFIX in name:',
      "if TMP_SUFFIX + '-' in name:", tests=('tests/test_faults.py', '-k', 'save_killed_locally'),
      note="cleanup looks for a name orbax does not write (the old '*.orbax-checkpoint-tmp-*')"),
    M('segments-redone-steps-logged', 'rsam/training/run_folder.py', 'if step > self.skip_to:', 'if True:',
      tests=('tests/test_faults.py', '-k', 'every_segment'), note='steps redone after a kill logged twice'),
    M('skip-limit-ignored', 'rsam/training/loop.py', 'if len(in_a_row) >= limit:',
      'if len(in_a_row) >= 10 * limit:', tests=('tests/test_faults.py', '-k', 'too_many'),
      note="nan_policy='skip' without its limit"),
    M('lease-never-stale', 'rsam/training/lease.py', "  if age > timeout_s:\n",
      "  if age > 1e9 * timeout_s:\n", tests=('tests/test_lease.py', '-k', 'rules'),
      note='a lease whose heartbeat stopped is never taken over'),
    M('sharding-smallest-dimension', 'rsam/training/sharding.py', 'key=lambda d: -shape[d]',
      'key=lambda d: shape[d]', tests=('tests/test_sharding.py', '-k', 'leaf_rule or eighth'),
      note='the fsdp rule splits the smallest divisible dimension'),
    M('eval-interval-ignored', 'rsam/training/evaluation.py', 'if n and step % n == 0', 'if n',
      tests=('tests/test_everyday.py', '-k', 'own_interval'), note='every eval set runs after every step'),
    # evaluation label sources (data/input_pipeline.py, data/evalsets.py, data/sources.py)
    M('eval-real-from-original', 'data/input_pipeline.py', "real = tf.one_hot(example['real_label'], 1000,",
      "real = tf.one_hot(example['original_label'][None], 1000,",
      tests=('tests/test_evalsets.py',), note='ReaL multi-hot from original_label'),
    M('eval-v2-variant', 'data/sources.py', "'imagenet_v2': ('imagenet_v2/matched-frequency', 'test')",
      "'imagenet_v2': ('imagenet_v2/threshold-0.7', 'test')", tests=('tests/test_evalsets.py',),
      note='another ImageNet-V2 variant'),
    M('eval-metadata-total', 'data/input_pipeline.py', '    total = sum(sizes)\n', '    total = max(sizes)\n',
      tests=('tests/test_evalsets.py',), note='metadata branch: total of the slices'),
    M('eval-metadata-batches', 'data/input_pipeline.py', 'num_batches = max(-(-max(sizes) // local_batch), 1)',
      'num_batches = max(-(-min(sizes) // local_batch), 1)', tests=('tests/test_evalsets.py',),
      note='batches from the smallest slice'),
    M('eval-real-unlabelled-counted', 'data/evalsets.py',
      'm = _mask(mask, logits.shape[0]) * jnp.any(real, axis=-1).astype(jnp.float32)',
      'm = _mask(mask, logits.shape[0])', note='ReaL counts images without labels'),
    # issue #14's seed statistics and the larger digits test set
    M('stats-normal-not-t', 'rsam/training/seed_stats.py', 'return stats.t.ppf(0.5 + confidence / 2, n - 1) * sd',
      'return stats.norm.ppf(0.5 + confidence / 2) * sd', tests=('tests/test_seed_stats.py',),
      note='the interval with the normal quantile at any n'),
    M('stats-pooled-unweighted', 'rsam/training/seed_stats.py',
      'return sum(accuracies[k] * counts[k] for k in accuracies) / total',
      'return sum(accuracies.values()) / len(accuracies)', tests=('tests/test_seed_stats.py',),
      note='pooled accuracy ignores the set sizes'),
    M('digits-unused-overlaps-train', 'data/sources.py', "idx = splits['train'][spec.train_subset:]",
      "idx = splits['train'][spec.train_subset - 1:]",
      tests=('tests/test_small_scale_configs.py', '-k', 'unused'), note='train_unused holds a trained image'),
    # issue #26: power, two levels of variance, Holm; the data draws; the study's selection and composition
    M('power-one-tail', 'rsam/training/seed_stats.py', '  return near + far\n', '  return near\n',
      tests=('tests/test_seed_stats.py',), note='the power of a two-sided test counts one tail'),
    M('power-alpha-not-halved', 'rsam/training/seed_stats.py', 'return float(stats.t.ppf(1 - alpha / 2, dof))',
      'return float(stats.t.ppf(1 - alpha, dof))', tests=('tests/test_seed_stats.py',),
      note='one-sided critical value for a two-sided test'),
    M('power-two-level-no-between', 'rsam/training/seed_stats.py',
      'se = math.sqrt((sd_between ** 2 + sd_within ** 2 / per_group) / groups)',
      'se = math.sqrt(sd_within ** 2 / per_group / groups)', tests=('tests/test_seed_stats.py',),
      note='the two-level power ignores the variance between draws'),
    M('two-level-dof-of-all-pairs', 'rsam/training/seed_stats.py', '**(t_test(grand, se, k - 1) if se > 0',
      '**(t_test(grand, se, sum(sizes) - 1) if se > 0', tests=('tests/test_seed_stats.py',),
      note='the test on the draw means with the degrees of freedom of all pairs'),
    M('two-level-tau-unscaled', 'rsam/training/seed_stats.py', 'tau2 = max(0.0, (msb - msw) / n0)',
      'tau2 = max(0.0, msb - msw)', tests=('tests/test_seed_stats.py',), note='τ² not divided by n₀'),
    M('sd-upper-wrong-tail', 'rsam/training/seed_stats.py', 'stats.chi2.ppf(1 - confidence, dof)',
      'stats.chi2.ppf(confidence, dof)', tests=('tests/test_seed_stats.py',),
      note='the lower confidence limit of the sd as the planning sd'),
    M('holm-no-running-max', 'rsam/training/seed_stats.py',
      'running = max(running, min(1.0, (m - rank) * pvalues[i]))', 'running = min(1.0, (m - rank) * pvalues[i])',
      tests=('tests/test_seed_stats.py',), note='Holm adjusted p not monotone'),
    M('holm-is-bonferroni', 'rsam/training/seed_stats.py',
      'running = max(running, min(1.0, (m - rank) * pvalues[i]))', 'running = max(running, min(1.0, m * pvalues[i]))',
      tests=('tests/test_seed_stats.py',), note='every p multiplied by m'),
    M('cells-not-corrected', 'rsam/training/seed_stats.py', "out[k]['p_holm'] = adjusted",
      "out[k]['p_holm'] = out[k]['p']", tests=('tests/test_seed_stats.py',),
      note='the per-cell tests of Fig. 1/2 without the correction over the cells'),
    M('correlation-interval-n', 'rsam/training/seed_stats.py',
      'z = stats.norm.ppf(0.5 + confidence / 2) / math.sqrt(n - 3)',
      'z = stats.norm.ppf(0.5 + confidence / 2) / math.sqrt(n)', tests=('tests/test_seed_stats.py',),
      note="Fisher's interval with n instead of n − 3"),
    M('draw-moves-val', 'data/sources.py', 'rest, test_size=360, stratify=y[rest], random_state=split_seed)',
      'rest, test_size=360, stratify=y[rest], random_state=split_seed if subset_seed is None else subset_seed)',
      tests=('tests/test_small_scale_configs.py', '-k', 'draws'), note='a data draw changes the val split'),
    M('draw-same-subset', 'data/sources.py',
      'rng = np.random.default_rng([split_seed if subset_seed is None else subset_seed, 0])',
      'rng = np.random.default_rng([split_seed, 0])', tests=('tests/test_small_scale_configs.py', '-k', 'draws'),
      note='every draw trains on the same 320 images'),
    M('draw-same-flips', 'data/sources.py',
      'seed=spec.split_seed if spec.subset_seed is None else spec.subset_seed)', 'seed=spec.split_seed)',
      tests=('tests/test_small_scale_configs.py', '-k', 'draws'), note='every draw flips the same positions'),
    M('composition-no-burn-in', 'scripts/run_small_scale.py',
      "rows = [r for r in train_log if r['step'] > burn_in * last]", 'rows = list(train_log)',
      tests=('tests/test_small_scale_configs.py', '-k', 'composition or select or two_level'),
      note='the composition averages the first windows too'),
    M('select-ignores-the-regime', 'scripts/run_small_scale.py',
      "'eligible': comp['noise_grad_ratio'] >= min_ratio if noisy and comp else not noisy", "'eligible': True",
      tests=('tests/test_small_scale_configs.py', '-k', 'select'), note='R-SAM chosen outside the noise regime'),
    # many in-memory epochs in one tf.data pipeline (data/input_pipeline.py, _block)
    M('block-skips-every-epoch', 'data/input_pipeline.py',
      'ds = ds.skip(tf.where(e == first_epoch, tf.constant(skip * local_batch, tf.int64), 0))',
      'ds = ds.skip(skip * local_batch)', tests=('tests/test_data.py', '-k', 'sharing_one_pipeline'),
      note='a resume inside a block skips the start of every epoch of the block'),
    M('block-epoch-key-int64', 'data/input_pipeline.py',
      'key = tf.random.experimental.stateless_fold_in(root, tf.cast(e, tf.int32))',
      'key = tf.random.experimental.stateless_fold_in(root, e)', tests=('tests/test_data.py', '-k', 'sharing_one_pipeline'),
      note="the epoch folded in as int64: other augmentation draws than a per-epoch pipeline's"),
    M('block-short-epoch-unnoticed', 'data/input_pipeline.py',
      'if epochs[0] != expected or epochs[-1] != expected:', 'if False:',
      tests=('tests/test_data.py', '-k', 'short_of_num_train_examples'),
      note='an epoch short of num_train_examples runs on into the next epoch'),
    # gs:// dashboards across kills and preemptions
    M('events-copied-only-every-minute', 'rsam/training/loop.py',
      '        folder.persist(writer)  # the metrics', '        writer.flush()  # the metrics',
      tests=('tests/test_gcs.py', '-k', 'every_file'),
      note="a gs:// run's events reach the bucket only every minute: a kill loses the steps up to its checkpoint"),
    M('events-not-copied-at-sigterm', 'rsam/training/run_folder.py',
      '      self.persist(writer)\n      self.record(step)\n', '      writer.flush()\n      self.record(step)\n',
      tests=('tests/test_gcs.py', '-k', 'every_file'),
      note="a preempted gs:// run's last events stay on the lost machine while its successor skips them"),
    M('events-earlier-process-file-copied', 'rsam/training/writers.py', 'name in self.earlier or ', '',
      tests=('tests/test_everyday.py', '-k', 'gcs_workdirs'),
      note="a killed process's staged events (steps its successor redoes) copied by the successor: twice"),
    M('pod-signal-not-agreed', 'rsam/training/interrupts.py', '    if self._agree is None:\n',
      '    if True:\n', tests=('tests/test_multihost.py', '-k', 'signal_to_one_process'),
      note='a signal to one host of a pod stops that host alone: it waits in its save for the others'),
    M('pod-no-barrier-after-compile', 'rsam/training/loop.py', "        distributed.barrier('train_step_compiled')\n",
      '', tests=('tests/test_multihost.py', '-k', 'signal_to_one_process'),
      note="a host that compiles 40 s late: the others' first collective gives up (gloo: 30 s)"),
    M('segments-logged-when-written', 'rsam/training/run_folder.py', 'if self._copier is not None:',
      'if False:', tests=('tests/test_everyday.py', '-k', 'gcs_workdirs'),
      note="gs:// logged_to counts events still on the machine: a resumed run skips steps the bucket lacks"),
    # issue #25: the run's folder and the storage under real faults (tests/fault_proxy.py)
    M('lease-lost-reply-not-recognised', 'rsam/training/lease.py',
      "if now.get('token') == self.record['token']:  # our own write", 'if False:  # our own write',
      tests=('tests/test_lease.py', '-k', 'reply_was_lost'),
      note='a heartbeat whose reply was lost reads its own write as a takeover: exit 75 for good'),
    M('lease-same-owner-waits', 'rsam/training/lease.py', "if mine and record.get('owner_id') == mine",
      "if False and mine and record.get('owner_id') == mine", tests=('tests/test_lease.py', '-k', 'same_owner'),
      note='a VM recreated under another hostname is refused its own lease for lease_timeout_s'),
    M('lease-deleted-reported-taken-over', 'rsam/training/lease.py', 'if version is None:  # deleted',
      'if False:  # deleted', tests=('tests/test_lease.py', '-k', 'deleted_lease'),
      note='a deleted lease.json reported as "taken over"'),
    M('lease-future-heartbeat-as-age', 'rsam/training/lease.py', '  if age < 0:\n', '  if False:\n',
      tests=('tests/test_lease.py', '-k', 'future'), note='clock skew printed as a negative age'),
    M('lease-force-does-not-wait', 'rsam/training/lease.py', 'if why is None:  # --force_resume on a live run',
      'if False:  # --force_resume on a live run', tests=('tests/test_lease.py', '-k', 'rules or force_resume'),
      note="--force_resume takes a live run's lease at once: it deletes that run's save in progress"),
    M('storage-not-retried', 'rsam/training/paths.py', '        if not _transient(e):\n', '        if True:\n',
      tests=('tests/test_gcs.py', '-k', 'up_to_its_deadline'), note="gs:// requests fail at the first refused connection"),
    M('storage-retried-forever', 'rsam/training/paths.py', '        if attempt >= limit:', '        if False:',
      tests=('tests/test_gcs.py', '-k', 'up_to_its_deadline'), note='an outage past config.storage_retry_s waited out for ever'),
    M('storage-backoff-not-capped-by-deadline', 'rsam/training/paths.py',
      'delay = min(delay * 2, _MAX_DELAY_S, max(_RETRY.deadline_s / 8, 0.25))', 'delay = min(delay * 2, _MAX_DELAY_S)',
      tests=('tests/test_gcs.py', '-k', 'several_tries'),
      note='two tries after a short outage before a 30 s deadline: one lost reply ends the run (exit 69)'),
    M('storage-stop-signal-ignored', 'rsam/training/paths.py',
      'return end if self.stop_at is None else min(end, self.stop_at)', 'return end',
      tests=('tests/test_gcs.py', '-k', 'up_to_its_deadline'),
      note='a SIGTERM during an outage waits the whole deadline: the preemption kills the run unsaved'),
    M('stop-during-outage-is-an-error', 'rsam/training/loop.py',
      'if signals.received is not None and paths.storage_failure(e) is not None:', 'if False:',
      tests=('tests/test_gcs.py', '-k', 'sigterm_during'),
      note='SIGTERM during an outage exits 69 (or 1), not 143 saying what was not saved'),
    M('records-ahead-not-refused', 'rsam/training/run_folder.py',
      'if recorded and (newest is None or recorded > newest):', 'if False:',
      tests=('tests/test_faults.py', '-k', 'records_ahead'),
      note='checkpoints lost under recorded progress: a silent restart from step 0'),
    M('records-saved-to-not-written', 'rsam/training/run_folder.py',
      'ended=ended, saved_to=self.checkpoints.confirmed)', 'ended=ended, saved_to=None)',
      tests=('tests/test_faults.py', '-k', 'records_ahead'),
      note="segments.json no longer says which checkpoint was saved: a killed run's lost checkpoints unnoticed"),
    M('records-results-json-ignored', 'rsam/training/run_folder.py',
      'if isinstance(steps, int) and steps > best:', 'if False:',
      tests=('tests/test_faults.py', '-k', 'each_record_of_progress'),
      note="a finished run's results.json not read as progress: its checkpoints lost, it trains from 0 again"),
    M('records-older-segments-ignored', 'rsam/training/run_folder.py',
      "        saved = segment.get('to_step')\n", '        pass\n',
      tests=('tests/test_faults.py', '-k', 'each_record_of_progress'),
      note="segments.json of an older version (no saved_to) not read: its lost checkpoints unnoticed"),
    M('force-resume-refuses-older-checkpoint', 'rsam/training/run_folder.py',
      'if newest is not None and force:', 'if False:',
      tests=('tests/test_faults.py', '-k', 'each_record_of_progress'),
      note='--force_resume cannot resume from an older checkpoint left under records ahead of it'),
    M('start-over-archives-nothing', 'rsam/training/run_folder.py',
      '      if names:\n        target = self.root / ARCHIVE', '      if False:\n        target = self.root / ARCHIVE',
      tests=('tests/test_faults.py', '-k', 'records_ahead'),
      note='--start_over trains from 0 beside the old records, events and checkpoints (mixed)'),
    M('identity-not-in-checkpoint-checked', 'rsam/training/run_folder.py',
      '      self._check_newest_manifest(steps)\n', '',
      tests=('tests/test_faults.py', '-k', 'without_config_json'),
      note="without config.json another config resumes the run (the restore's own check may still stop it)"),
    M('missing-manifest-beside-others-trusted', 'rsam/training/checkpointing.py',
      'ok = None if not siblings else False', 'ok = None',
      tests=('tests/test_faults.py', '-k', 'damaged_latest and checksum'),
      note='a checkpoint that lost its checksums restores unverified while its siblings have them'),
    M('folder-emptied-unnoticed', 'rsam/training/run_folder.py',
      "if confirmed is None or paths.exists(self.root / 'checkpoints' / str(confirmed)):", 'if True:',
      tests=('tests/test_faults.py', '-k', 'emptied'), note='a run goes on writing into a folder emptied under it'),
    M('skip-from-segments-not-events', 'rsam/training/run_folder.py',
      'self.skip_to = logged_steps(self.workdir) if start_step and write else 0',
      "self.skip_to = max((s.get('logged_to') or 0 for s in self.earlier), default=0) if start_step else 0",
      tests=('tests/test_faults.py', '-k', 'events_and_segments'),
      note='a kill between the events and segments.json duplicates a TensorBoard point'),
    M('sighup-not-handled', 'rsam/training/interrupts.py', ', signal.SIGHUP: 129}', '}',
      tests=('tests/test_faults.py', '-k', 'sighup'), note='a dropped ssh session kills the run unsaved'),
    M('closed-stdout-breaks-the-run', 'rsam/training/progress.py',
      '  if isinstance(sys.stderr, _Unbreakable):\n    return\n', '  return\n',
      tests=('tests/test_faults.py', '-k', 'closed_stdout'), note='a closed pipe stops training (BrokenPipeError)'),
    M('unwritable-compile-cache-used', 'rsam/training/compilation_cache.py',
      'if folder and not paths.is_remote(folder) and not _writable(folder):', 'if False:',
      tests=('tests/test_faults.py', '-k', 'unusable_cache'), note='a read-only compilation cache stops the run'),
    # the wandb run's names: handed down by the application (train.py; configs/tables.py: wandb_naming)
    M('wandb-naming-dropped-by-loop', 'rsam/training/loop.py', '\n'+' ' * 45 + 'naming=wandb_naming))',
      '\n'+' ' * 45 + 'naming=None))',
      tests=('tests/test_train.py', '-k', 'wandb_offline'),
      note="the loop drops the application's names: a table cell's run gets a random wandb name and no group"),
    M('wandb-naming-group-ignored', 'rsam/training/writers.py', "return {'group': wandb_cfg.get('group') or naming.get('group'),",
      "return {'group': wandb_cfg.get('group'),", tests=('tests/test_everyday.py', '-k', 'identity'),
      note="the cell's group not used: wandb's group average no longer spans a cell's seeds"),
    M('wandb-naming-tags-dropped', 'rsam/training/writers.py', "tags = list(naming.get('tags') or ()) + [",
      'tags = [', tests=('tests/test_everyday.py', '-k', 'identity'),
      note='the tables that read the run (or the runlocal tag) missing from its tags'),
    M('wandb-naming-summary-dropped', 'rsam/training/writers.py', "'summary': dict(naming.get('summary') or {})}",
      "'summary': {}}", tests=('tests/test_everyday.py', '-k', 'identity'),
      note="the paper's numbers no longer beside ours in the run's summary"),
    # time and chip-hours per table cell (rsam/training/cost.py; docs/cost.md)
    M('cost-sam-one-pass', 'rsam/training/cost.py', "passes = 1.0 if name in ('plain', 'lpf_sgd') else 2.0",
      'passes = 1.0', tests=('tests/test_cost.py', '-k', 'passes'),
      note='a sharpness-aware step costed as one forward-backward pass: half its hours'),
    M('cost-backward-not-counted', 'rsam/training/cost.py', 'return 3.0 * self.forward_flops',
      'return self.forward_flops', tests=('tests/test_cost.py', '-k', 'arithmetic'),
      note='training FLOPs without the backward pass'),
    M('cost-v3-slice-counts-chips', 'rsam/training/cost.py', "'v3': Chip('TPU v3', 123.0, 2,",
      "'v3': Chip('TPU v3', 123.0, 1,", tests=('tests/test_cost.py', '-k', 'slices'),
      note='v3-256 read as 256 chips (it is 128): hours on the slice halved'),
    M('cost-image-size-ignored', 'rsam/training/cost.py', '  shape = sources.image_shape(config.data)\n',
      '  shape = (224, 224, 3)\n', tests=('tests/test_cost.py', '-k', 'closed_form'),
      note="the config's input size ignored: a 384-px or 32-px model costed at 224 px"),
    # the front of train.py and eval.py (rsam/training/cli.py)
    M('cli-unknown-flag-unchecked', 'rsam/training/cli.py', 'problem = (unknown_flag(argv) or ',
      'problem = (None or ', tests=('tests/test_cli.py', '-k', 'plain_error_line'),
      note="--wrokdir answers '--workdir is required'"),
    M('cli-file-workdir-unchecked', 'rsam/training/cli.py', '  if os.path.isfile(p):\n', '  if False:\n',
      tests=('tests/test_cli.py', '-k', 'plain_error_line'),
      note='a workdir that is a file answers after the imports, as "not writable (File exists)"'),
    M('cli-class-names-kept', 'rsam/training/cli.py', "return _CLASS_PREFIX.sub('', message)", 'return message',
      tests=('tests/test_cli.py', '-k', 'plain_error_line or class_names'),
      note="'rsam.errors.ConfigError: ' in an error line"),
    M('cli-wandb-login-not-checked', 'rsam/training/cli.py', '  if auth is not None:\n    return None\n',
      '  if True:\n    return None\n', tests=('tests/test_cli.py', '-k', 'wandb'),
      note='no wandb login: the run writes its lease, config and checkpoints/ before wandb.init fails'),
    M('cli-tensorflow-lines-shown', 'rsam/training/cli.py', '    os.dup2(held.fileno(), 2)\n', '    pass\n',
      tests=('tests/test_cli.py', '-k', 'held_back'), note="TensorFlow's oneDNN and absl lines at every start"),
    M('paths-emulator-asks-for-credentials', 'rsam/training/paths.py',
      "  os.environ.setdefault('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'emulator')\n", '',
      tests=('tests/test_cli.py', '-k', 'credentials'),
      note="a run against the GCS emulator prints 'Could not find the credentials file ... gcloud auth'"),
    # the library as other people's optax code adopts it (issue #24): rsam/transforms.py and the per-leaf rules
    M('lib-update-dtype-not-kept', 'rsam/updaters.py',
      'return UpdateResult(loss, T.cast_like(grads, params), state, {**metrics, **diagnostics})',
      'return UpdateResult(loss, grads, state, {**metrics, **diagnostics})',
      note='bf16 parameters get float32 updates (the dtype of the optimizer state changes after step 1)'),
    M('lib-float64-as-float32', 'rsam/tree.py', 'return jnp.promote_types(dtype, jnp.float32)',
      'return jnp.dtype(jnp.float32)', note='float64 parameters computed in float32 under x64'),
    M('lib-cast-back-dropped', 'rsam/tree.py',
      'return jax.tree.map(lambda x, p: jnp.asarray(x, jnp.result_type(p)), tree, like)', 'return tree',
      note="the update not cast back to the parameters' dtype"),
    M('lib-chain-before-allowed', 'rsam/transforms.py', "if frame.f_locals.get('new_state'):", 'if False:',
      note='a transform chained before the sharpness-aware one is silently dropped'),
    M('lib-wrappers-allowed', 'rsam/transforms.py', 'elif code in _REFUSED_WRAPPERS:', 'elif False:',
      note='apply_if_finite / MultiSteps around the transform accepted'),
    M('lib-masked-params-allowed', 'rsam/transforms.py', '  if masked:\n', '  if False:\n',
      note='optax.masked around the transform reaches grad_fn with a partial tree'),
    M('lib-noise-without-key', 'rsam/transforms.py', '    elif needs_key:\n', '    elif False:\n',
      note='R-SAM without a key silently uses the fixed key 0'),
    M('lib-step-key-fixed', 'rsam/transforms.py', 'jax.random.fold_in(root_key, state.sam_step)', 'root_key',
      note='the same noise at every step'),
    M('lib-update-key-ignored', 'rsam/transforms.py', '      step_key = _as_key(key)\n',
      '      step_key = jax.random.key(0)\n', note='update(key=...) ignored'),
    M('lib-diagnostics-stale', 'rsam/transforms.py', 'sam_diagnostics={n: diagnostics[n] for n in names})',
      'sam_diagnostics=state.sam_diagnostics)', note='diagnostics never leave their zeros'),
    M('lib-diagnostic-names-collide', 'rsam/transforms.py', "_STATE_NAMES = {'rho': 'rho_t', 'gamma': 'gamma_t'}",
      '_STATE_NAMES = {}', note="ρ_t named 'rho', as inject_hyperparams' ρ"),
    M('lib-aux-not-kept', 'rsam/transforms.py', 'aux=result.model_state if with_aux else None,', 'aux=state.aux,',
      note="the first pass's aux (BatchNorm statistics) never stored"),
    M('lib-extra-args-dropped', 'rsam/transforms.py',
      'inner.update(result.grads, state.inner_state, params, **extra_args)',
      'inner.update(result.grads, state.inner_state, params)', note="the base optimizer's extra arguments dropped"),
    M('lib-state-type-unchecked', 'rsam/transforms.py', '    if not isinstance(state, SharpnessAwareState):\n',
      '    if False:\n', note='a wrong state fails deep inside'),
    M('lib-int-array-key-refused', 'rsam/transforms.py',
      'if jnp.issubdtype(dtype, jnp.integer) and jnp.shape(key) == ():', 'if False:',
      note='an integer array seed (inject_hyperparams stores the key so) refused'),
    M('lib-legacy-key-refused', 'rsam/transforms.py', '      return jax.random.wrap_key_data(key)\n',
      "      raise TypeError('key')\n", note='a jax.random.PRNGKey refused'),
    M('lib-aux-spec-unchecked', 'rsam/transforms.py',
      'if with_aux and _aux_spec(result.model_state) != _aux_spec(state.aux):', 'if False:',
      note='an aux unlike init_aux breaks jit/scan later, far from its cause'),
    M('lib-batch-not-required', 'rsam/transforms.py', 'if batch is None and _splits_batch(updater):', 'if False:',
      note='micro-batches without a batch'),
    M('lib-mask-dropped', 'rsam/transforms.py', 'updater = SharpnessAware(mask=mask,',
      'updater = SharpnessAware(mask=None,', note='the transform drops mask='),
    M('lib-batch-axes-dropped', 'rsam/transforms.py', 'mesh=mesh, batch_axes=batch_axes, mode=group_mode)',
      'mesh=mesh, batch_axes=None, mode=group_mode)', note='the transform drops batch_axes='),
    M('lib-accum-dropped', 'rsam/transforms.py', 'updater = SharpnessAware(mask=mask, accum_steps=accum,',
      'updater = SharpnessAware(mask=mask, accum_steps=1,', note='the transform drops accum_steps='),
    M('lib-negative-allowed', 'rsam/checks.py', '  if not np.all(array >= 0):\n', '  if False:\n',
      note='negative ρ, γ, λ, α accepted'),
    M('lib-infinite-allowed', 'rsam/checks.py', '  if not np.all(np.isfinite(array)):', '  if False:',
      note='an infinite ρ or γ accepted (the parameters become NaN at the first step)'),
    M('lib-masked-refusal-names-masked-base', 'rsam/transforms.py',
      "f\"of the ascent, and {name}(optax.multi_transform({{'train': base, 'frozen': \"",
      "f\"of the ascent, and {name}(optax.masked(base, mask), ...) to mask the base optimizer ({{\"",
      note="the refusal names sam(optax.masked(base, mask)), which applies the other leaves' gradients"),
    M('lib-transforms-no-all', 'rsam/transforms.py',
      "__all__ = ['sam', 'asam', 'rsam', 'gsam', 'rgsam', 'from_updater', 'SharpnessAwareState']\n", '',
      note='from rsam.transforms import * brings os, sys, jax, optax ...'),
    M('lib-type-checkers-miss-a-lazy-name', 'rsam/__init__.py',
      '  from rsam.schedules import cosine_increase, lr_tied_rho\n', '',
      note='a type checker types rsam.lr_tied_rho as Any'),
    M('lib-static-int-unchecked', 'rsam/checks.py', '  if result < minimum:\n', '  if False:\n',
      note='m=0, accum_steps=0 accepted'),
    M('lib-m-not-dividing-accepted', 'rsam/msharpness.py', 'if self.m > local or local % self.m:',
      'if self.m > local:', note='m = 3 on 8 examples per device runs other groups'),
    M('lib-batch-axes-default', 'rsam/msharpness.py', '      return tuple(self.mesh.axis_names)\n',
      '      return (self.mesh.axis_names[0],)\n', note='default batch axes: the first only, not all'),
    M('lib-schedule-one-based-default', 'rsam/schedules.py', '  if one_based:\n', '  if True:\n',
      note='cosine_increase(...)(0) is not its initial value'),
    M('lib-rho-one-based-ignored', 'rsam/schedules.py', 't = official_t(step) if one_based else step',
      't = official_t(step)', note="lr_tied_rho's warm-up branch at step + 1 by default"),
    M('lib-flat-lr-accepted', 'rsam/schedules.py', '  if lr_max == lr_min:\n', '  if False:\n',
      note='lr_tied_rho divides by zero'),
    M('lib-mask-no-noise-ignored', 'rsam/noise.py', 'out.append(_masked(delta, k))', 'out.append(delta)',
      note='masked leaves still get noise'),
    M('lib-mask-ascent-ignored', 'rsam/updaters.py', 'direction = apply_mask(g_first, keep)',
      'direction = g_first', note="masked leaves still perturbed by SAM's ascent"),
    M('lib-asam-no-weight-accepted', 'rsam/updaters.py',
      'if not scale_biases and paths_and_leaves and not any(weights):', 'if False:',
      note='ASAM silently becomes SAM on a tree without weights under its rule'),
    M('lib-asam-rules-ignored', 'rsam/updaters.py',
      't = asam_scale(params, eta=eta, scale_biases=scale_biases, rules=rules)',
      't = asam_scale(params, eta=eta, scale_biases=scale_biases)', note="ASAM ignores the transform's rules"),
    M('rules-noise-axis-ignored', 'rsam/noise.py', 'axis = rules.axis_of(path, w) if jnp.ndim(w) > 1 else -1',
      'axis = -1', note="the noise's kernel axis always Flax's"),
    M('rules-nnx-value-not-skipped', 'rsam/leaf_rules.py',
      'while len(names) > 1 and names[-1] in _WRAPPER_NAMES:', 'while False:',
      note="flax.nnx's .value taken for the parameter's name"),
    M('rules-attribute-names', 'rsam/leaf_rules.py', "for attr in ('key', 'name', 'idx'):",
      "for attr in ('key', 'idx'):", note='attribute paths (equinox, nnx) not read by name'),
    M('rules-pytorch-axis', 'rsam/leaf_rules.py', "output_axis=0, name='PYTORCH'", "output_axis=-1, name='PYTORCH'",
      note='PyTorch/equinox kernels scaled along the input axis'),
    M('rules-haiku-names', 'rsam/leaf_rules.py', "named('w', 'scale', 'embeddings')",
      "named('kernel', 'scale', 'embedding')", note="haiku's weights not recognised"),
    M('rules-pytorch-names', 'rsam/leaf_rules.py', "is_weight=name_contains('weight')",
      "is_weight=named('weight', 'kernel')", note="a PyTorch state dict's dotted names ('fc.weight') not recognised"),
    M('rules-callable-axis-ignored', 'rsam/leaf_rules.py',
      'axis = self.output_axis(path, leaf) if callable(self.output_axis) else self.output_axis',
      'axis = -1 if callable(self.output_axis) else self.output_axis', note='a per-leaf output_axis ignored'),

)

# The harness's own smoke (tests/test_mutation.py, in CI): one mutation the tests must catch and one
# that cannot change behaviour (a comment), which must survive.
SMOKE = (
    M('smoke-schedule-end-lr', 'rsam/training/optim.py', "end_lr = float(sched_cfg.get('end_lr', 0.0))",
      'end_lr = 0.0', tests=('tests/test_wiring.py::test_schedule_from_config',)),
    M('smoke-noop-docstring', 'rsam/training/optim.py', '"""Returns (schedule, lr_max, lr_min)',
      '"""The schedule and its ends: (schedule, lr_max, lr_min)',
      tests=('tests/test_wiring.py::test_schedule_from_config',)),
)

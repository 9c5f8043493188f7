"""tf.data input pipelines: deterministic, resumable training batches and padded eval sets.

Determinism and resumption (`make_train_iterator`)
--------------------------------------------------
Batch t of a run is a pure function of (data config, seed, global batch size, process index and
count, t), so `make_train_iterator(..., start_step=k)` yields bit-for-bit the batches k, k+1, ...
of a run started at 0:
- Epochs are equal-length: each process reads the same number of examples per epoch
  (n // process_count, `drop_remainder` slices), so every epoch has
  steps = (n // process_count) // local_batch steps and ends on a batch boundary. The start
  step becomes (epoch, step in epoch) by arithmetic; earlier epochs are never read.
- Every epoch is built afresh from its number (in-memory data: many epochs share one pipeline
  through `flat_map`, which gives the same batches): the examples of this process's slice, in a fixed
  read order (cifar: cached in memory; imagenet: file order shuffled with a seed of
  (seed, epoch)), numbered with `enumerate`, shuffled with `shuffle(seed=f(seed, epoch))`, cut
  to the epoch length, skipped to the start step, and only THEN decoded and augmented (images
  stay encoded until then through `tfds.decode.SkipDecoding`), so skipping costs a read, not a
  decode.
- Every random choice of the augmentation is stateless: the example's seed is
  `stateless_fold_in(stateless_fold_in(root(seed), epoch), index)`, split into one seed per op.
  Parallel maps run with `deterministic=True`, so the order never depends on thread timing.
The shuffle op takes its seed with TF's global seed (unset by default, then a fixed constant):
do not call `tf.random.set_seed` with different values between a run and its resumption.

Evaluation (`make_eval_sets`)
-----------------------------
Each process reads an even slice of the split (`tfds.even_splits`, sizes differ by at most
one); its last batch is padded to the local batch size with `mask` 0, and every process yields
the same number of batches, `ceil(max slice size / local batch)`, adding fully masked batches
where its slice is shorter. Metric sums of a batch are `EvalSet.metric_fn(logits, batch)`; on
global arrays (inside jit) they are already summed over devices and processes.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np
import tensorflow as tf

from data import augment
from data import evalsets
from data import sources
from data.sources import DataError

try:  # The input pipeline must not take GPU/TPU memory from JAX (a full TF build would).
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # already initialised
  pass

_AUTOTUNE = tf.data.AUTOTUNE
_IMAGENET_SHUFFLE_BUFFER = 50_000


# ---------------------------------------------------------------------------------------------
# Batch sizes and process topology


def _topology(process_index, process_count):
  if process_count is None:
    process_count = jax.process_count()
  if process_index is None:
    process_index = jax.process_index()
  if not 0 <= process_index < process_count:
    raise DataError(f"process_index={process_index} is not in [0, process_count="
                    f"{process_count})")
  return int(process_index), int(process_count)


def _local_batch(global_batch_size, process_count) -> int:
  if not isinstance(global_batch_size, (int, np.integer)) or global_batch_size <= 0:
    raise DataError(f"global_batch_size={global_batch_size!r} must be a positive int")
  if global_batch_size % process_count:
    raise DataError(
        f"global_batch_size={global_batch_size} does not divide by process_count="
        f"{process_count}; use a multiple of {process_count} (e.g. "
        f"{_round_up(global_batch_size, process_count)})")
  return int(global_batch_size) // process_count


def _round_up(x, m):
  return max(m, -(-x // m) * m)


def check_batch(global_batch_size: int, num_devices: int, *,
                process_count: Optional[int] = None) -> int:
  """Checks that the global batch splits evenly over processes and devices (the local batch
  over this process's devices); returns the local (per-process) batch size. One-line DataError
  naming the value and the fix otherwise."""
  _, process_count = _topology(0, process_count if process_count is not None
                               else jax.process_count())
  local = _local_batch(global_batch_size, process_count)
  if num_devices <= 0 or num_devices % process_count:
    raise DataError(f"num_devices={num_devices} must be a positive multiple of process_count="
                    f"{process_count}")
  if global_batch_size % num_devices:
    local_devices = num_devices // process_count
    raise DataError(
        f"global_batch_size={global_batch_size} (local batch {local}) does not divide over "
        f"{num_devices} devices ({local_devices} per process); use a multiple of {num_devices} "
        f"(e.g. {_round_up(global_batch_size, num_devices)})")
  return local


def steps_per_epoch(data_config, global_batch_size: int, *,
                    process_count: Optional[int] = None) -> int:
  """Training steps in one epoch: (num_train_examples // process_count) // local batch (each
  process drops the remainder of its slice, so every batch is full)."""
  _, process_count = _topology(0, process_count if process_count is not None
                               else jax.process_count())
  local = _local_batch(global_batch_size, process_count)
  n = sources.num_train_examples(data_config)
  steps = (n // process_count) // local
  if steps <= 0:
    raise DataError(f"global_batch_size={global_batch_size} is larger than the "
                    f"{n} training examples ({n // process_count} per process); lower it")
  return steps


def to_global_batch(local_batch: Mapping[str, np.ndarray], sharding) -> Dict[str, jax.Array]:
  """Turns this process's numpy batch into global jax arrays split along the batch axis.

  `sharding`: a `jax.sharding.NamedSharding` (normally `NamedSharding(mesh, P('data'))`), or a
  `Mesh` (then `P('data')` is used)."""
  if isinstance(sharding, jax.sharding.Mesh):
    sharding = jax.sharding.NamedSharding(sharding, jax.sharding.PartitionSpec('data'))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      dict(local_batch))


# ---------------------------------------------------------------------------------------------
# Seeds


def _seed_ints(*entropy) -> np.ndarray:
  """Two int64-safe ints derived from non-negative ints (numpy SeedSequence: stable across
  platforms and versions)."""
  entropy = [int(e) % (1 << 63) for e in entropy]
  return np.random.SeedSequence(entropy).generate_state(2, np.uint32).astype(np.int64)


def _epoch_key(seed: int, epoch: int) -> tf.Tensor:
  root = tf.constant(_seed_ints(seed, 0x5EED), tf.int64)
  return tf.random.experimental.stateless_fold_in(root, epoch)


def _epoch_shuffle_seed(seed: int, epoch: int) -> int:
  return int(_seed_ints(seed, epoch, 0x5F1E)[0])


# ---------------------------------------------------------------------------------------------
# Per-example preprocessing (TF, one example)


def _cifar_stats(name):
  if name == 'cifar10':
    return augment.CIFAR10_MEAN, augment.CIFAR10_STD
  return augment.CIFAR100_MEAN, augment.CIFAR100_STD


def _digits_standardize(spec, image):
  mean, std = sources.digits_stats(spec)
  return (tf.cast(image, tf.float32) / 16.0 - mean) / std


def _train_image(spec: sources.DataSpec, image, key):
  """One training image (encoded bytes, or the digits' float array) -> float32 HxWxC."""
  crop_key, flip_key, ra_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
  if spec.name == 'digits':
    if spec.augment == 'basic':  # random shift by up to 1 pixel (zero = background)
      padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]])
      image = tf.image.stateless_random_crop(padded, [8, 8, 1], seed=crop_key)
    return _digits_standardize(spec, image)
  if spec.name in ('cifar10', 'cifar100'):
    image = augment.decode_rgb(image)
    if spec.augment == 'basic':
      image = augment.cifar_train(image, crop_key, pad=4)
    return augment.standardize(image, *_cifar_stats(spec.name))
  # imagenet2012
  if spec.augment == 'inception':  # decodes only the crop window of a JPEG
    image = augment.decode_and_inception_crop(image, crop_key, size=spec.image_size)
    image = augment.random_flip(image, flip_key)
  else:  # as evaluation, rounded to uint8 for RandAugment
    image = _imagenet_eval_crop(spec, augment.decode_rgb(image), out_dtype=tf.uint8)
  if spec.randaugment_layers:
    image = augment.randaugment(image, ra_key, num_layers=spec.randaugment_layers,
                                magnitude=spec.randaugment_magnitude)
  return augment.to_minus_one_one(image)


def _imagenet_eval_crop(spec: sources.DataSpec, image, *, resize: Optional[int] = None,
                        mode: Optional[str] = None, out_dtype=tf.float32):
  """ImageNet evaluation resize + centre crop of image_size, by `mode` (default
  data.eval_resize_mode; see data/sources.py)."""
  resize, mode = resize or spec.eval_resize, mode or spec.eval_resize_mode
  if mode == 'square':
    return augment.resize_square_center_crop(image, resize=resize, crop=spec.image_size,
                                             out_dtype=out_dtype)
  image = augment.resize_center_crop(image, resize=resize, crop=spec.image_size)
  return tf.cast(image, out_dtype)


def _eval_image(spec: sources.DataSpec, image, *, resize: Optional[int] = None,
                mode: Optional[str] = None):
  """One evaluation image -> float32 HxWxC (no randomness)."""
  if spec.name == 'digits':
    return _digits_standardize(spec, image)
  image = augment.decode_rgb(image)
  if spec.name in ('cifar10', 'cifar100'):
    return augment.standardize(image, *_cifar_stats(spec.name))
  return augment.to_minus_one_one(_imagenet_eval_crop(spec, image, resize=resize, mode=mode))


# ---------------------------------------------------------------------------------------------
# Training


def _digits_dataset(images, labels):
  return tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels})


def _select(example):
  return {'image': example['image'], 'label': example['label']}


class _TrainReader:
  """This process's slice of the training split as a dataset of (index, raw example)."""

  def __init__(self, spec: sources.DataSpec, process_index: int, process_count: int):
    self.spec = spec
    self._cached = None
    if spec.name == 'digits':
      images, labels = sources.digits_split(spec, spec.train_split)
      sl = sources.even_slice(len(labels), process_index, process_count, drop_remainder=True)
      self._cached = _digits_dataset(images[sl], labels[sl]).enumerate()
      return
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    sources.check_split(spec, spec.train_split)
    self._split = tfds.split_for_jax_process(
        spec.train_split, process_index=process_index, process_count=process_count,
        drop_remainder=True)
    # Fail now (not at the first batch) when the dataset is missing.
    ds = sources.tfds_read(spec.name, self._split, spec.data_dir, mock=spec.mock_examples)
    if spec.cache:
      self._cached = ds.map(_select).enumerate().cache()

  @property
  def in_memory(self) -> bool:
    """The same examples in the same read order every epoch (then many epochs share a pipeline)."""
    return self._cached is not None

  def examples(self, seed: int, epoch: int) -> tf.data.Dataset:
    """(index, example) of ``epoch``; in memory, of every epoch."""
    if self._cached is not None:
      return self._cached
    file_seed = int(_seed_ints(seed, epoch, 0xF11E)[0])
    return sources.tfds_read(self.spec.name, self._split, self.spec.data_dir,
                             file_shuffle_seed=file_seed, mock=self.spec.mock_examples).map(_select).enumerate()


def make_train_iterator(data_config, *, global_batch_size: int, seed: int, start_step: int = 0,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """Infinite iterator of this process's training batches.

  Yields dicts of numpy arrays: 'image' float32 [B_local, H, W, C], 'label' int32 [B_local],
  B_local = global_batch_size // process_count. The batches from `start_step=k` are
  bit-identical to batches k, k+1, ... of `start_step=0` (see the module docstring).
  process_index / process_count default to jax's. Errors (unknown dataset, missing data,
  batch not dividing) are raised here, not at the first batch.
  """
  spec = sources.resolve(data_config)
  process_index, process_count = _topology(process_index, process_count)
  local_batch = _local_batch(global_batch_size, process_count)
  steps = steps_per_epoch(spec, global_batch_size, process_count=process_count)
  if start_step < 0:
    raise DataError(f"start_step={start_step} must be >= 0")
  reader = _TrainReader(spec, process_index, process_count)
  per_process = sources.num_train_examples(spec) // process_count
  if spec.shuffle_buffer is not None:
    buffer = min(spec.shuffle_buffer, per_process)
  elif spec.name == 'imagenet2012':
    buffer = min(_IMAGENET_SHUFFLE_BUFFER, per_process)
  else:
    buffer = per_process
  start_epoch, skip = divmod(int(start_step), steps)
  return _train_batches(spec, reader, seed=int(seed), local_batch=local_batch, steps=steps,
                        buffer=buffer, start_epoch=start_epoch, skip=skip)


def _train_batches(spec, reader, *, seed, local_batch, steps, buffer, start_epoch, skip):
  """Batches from ``start_epoch``'s step ``skip`` on, one tf.data pipeline per block of epochs.

  A block is ``_EPOCHS_PER_PIPELINE`` epochs when the examples are in memory (digits, cached cifar),
  else one epoch (its file order needs a Python-side seed). Inside a block every epoch is built by
  ``flat_map`` from the epoch number, so the augmentation is traced and the iterator made once per
  block, not once per epoch (the per-epoch cost dominated small-data runs); the batches are those of
  the module docstring either way."""
  epoch = start_epoch
  while True:
    count = _EPOCHS_PER_PIPELINE if reader.in_memory else 1
    ds = _block(spec, reader, seed=seed, local_batch=local_batch, steps=steps, buffer=buffer,
                first_epoch=epoch, count=count, skip=skip)
    made = 0
    for batch in ds.as_numpy_iterator():
      expected = epoch + (skip + made) // steps
      epochs = batch.pop('epoch')
      if epochs[0] != expected or epochs[-1] != expected:  # an epoch came up short and ran into the next
        break
      made += 1
      yield batch
    done = skip + made
    if done != count * steps:
      short = epoch + done // steps
      raise DataError(
          f"{spec.name}: epoch {short} gave {done % steps} of {steps} batches, so this process "
          f"has fewer training examples than num_train_examples says; set "
          f"data.num_train_examples to the real size")
    epoch += count
    skip = 0


# Large enough that an in-memory run (digits, CIFAR: a few hundred epochs) never changes pipeline: retiring a
# pipeline that ran for minutes stalled its thread for tens of seconds under load (16 vmapped seeds on 2
# busy cores), whereas the 1,024 epochs' shuffle seeds take ~10 ms to compute.
_EPOCHS_PER_PIPELINE = 1024


def _block(spec, reader, *, seed, local_batch, steps, buffer, first_epoch, count, skip):
  """Epochs first_epoch .. first_epoch+count-1 as one dataset of batches, each carrying its 'epoch'.
  Epoch e: the examples shuffled with seed _epoch_shuffle_seed(seed, e), cut to ``steps`` batches
  (the first epoch skips ``skip`` of them), each example augmented with the key
  fold_in(_epoch_key(seed, e), its index)."""
  shuffle_seeds = tf.constant([_epoch_shuffle_seed(seed, e) for e in range(first_epoch, first_epoch + count)],
                              tf.int64)
  root = tf.constant(_seed_ints(seed, 0x5EED), tf.int64)
  source = reader.examples(seed, first_epoch)

  def one_epoch(e):
    ds = source.shuffle(buffer, seed=tf.gather(shuffle_seeds, e - first_epoch),
                        reshuffle_each_iteration=False)
    ds = ds.take(steps * local_batch)
    ds = ds.skip(tf.where(e == first_epoch, tf.constant(skip * local_batch, tf.int64), 0))
    return ds.map(lambda index, example: (e, index, example))

  def preprocess(e, index, example):
    # == _epoch_key(seed, e) for the Python int e, which TF folds in as int32
    key = tf.random.experimental.stateless_fold_in(root, tf.cast(e, tf.int32))
    image = _train_image(spec, example['image'], tf.random.experimental.stateless_fold_in(key, index))
    return {'image': image, 'label': tf.cast(example['label'], tf.int32), 'epoch': e}

  ds = tf.data.Dataset.range(first_epoch, first_epoch + count).flat_map(one_epoch)
  ds = ds.map(preprocess, num_parallel_calls=_AUTOTUNE, deterministic=True)
  return ds.batch(local_batch, drop_remainder=True).prefetch(2)


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass
class _Part:
  """One padded stream of an eval set: this process's raw examples and its batch count."""
  dataset: tf.data.Dataset  # preprocessed examples (dicts), this process's slice
  num_batches: int
  num_examples: int  # all processes together


@dataclasses.dataclass
class EvalSet:
  """An evaluation set: this process's padded batches and the protocol's metric.

  iterate() yields dicts of numpy arrays: 'image' float32 [B, H, W, C], 'label' int32 [B],
  'mask' float32 [B] (0 for padding), plus 'real_labels' bool [B, 1000] (imagenet_real) or
  'subset' int32 [B] (imagenet_c: index into `subset_keys`). Every process yields
  `num_batches` batches.
  metric_fn(logits, batch) -> dict of additive sums (jax.numpy; jit-able; on global arrays the
  sums are global). finalize(summed) -> dict with 'accuracy' (plus the ImageNet-C table).
  """
  name: str
  num_examples: int
  num_batches: int
  local_batch_size: int
  metric_fn: Callable[[Any, Mapping[str, Any]], Dict[str, Any]]
  finalize: Callable[[Mapping[str, Any]], Dict[str, Any]]
  info: Dict[str, Any]
  parts: Sequence[_Part] = dataclasses.field(repr=False, default=())

  def iterate(self) -> Iterator[Dict[str, np.ndarray]]:
    for part in self.parts:
      yield from _padded_batches(part, self.local_batch_size)

  def evaluate(self, predict_fn: Callable[[Dict[str, np.ndarray]], Any]) -> Dict[str, Any]:
    """Convenience loop: sums metric_fn(predict_fn(batch), batch) over iterate(), finalizes.
    (In a multi-process run predict_fn must return the logits of the global batch.)"""
    total = None
    for batch in self.iterate():
      sums = jax.device_get(self.metric_fn(predict_fn(batch), batch))
      total = sums if total is None else jax.tree.map(np.add, total, sums)
    return self.finalize(total)


def _padded_batches(part: _Part, batch_size: int):
  spec = part.dataset.element_spec
  count = 0
  for batch in part.dataset.batch(batch_size).prefetch(2).as_numpy_iterator():
    n = len(batch['mask'])
    if n < batch_size:
      batch = {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    count += 1
    yield batch
  if count > part.num_batches:
    raise DataError(f"eval slice gave {count} batches, more than the {part.num_batches} "
                    f"computed from its size; the dataset metadata is stale")
  for _ in range(part.num_batches - count):
    yield {k: np.zeros((batch_size,) + tuple(s.shape), s.dtype.as_numpy_dtype)
           for k, s in spec.items()}


def _count(ds: tf.data.Dataset) -> int:
  return int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def _tfds_part(spec, tfds_name, split, process_index, process_count, local_batch, to_example,
               cache):
  """A padded part over tfds `split` (this process's even slice), examples mapped by
  `to_example` (raw tfds example -> dict without 'mask')."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  slices = tfds.even_splits(split, n=process_count, drop_remainder=False)
  mock = spec.mock_examples
  ds = sources.tfds_read(tfds_name, slices[process_index], spec.data_dir, mock=mock)
  sizes = sources.tfds_slice_sizes(tfds_name, slices, spec.data_dir, mock=mock)
  if sizes is None:  # no metadata (mocked data): count every slice
    sizes = [_count(sources.tfds_read(tfds_name, s, spec.data_dir, mock=mock)) for s in slices]
    total = _count(sources.tfds_read(tfds_name, split, spec.data_dir, mock=mock))
  else:
    total = sum(sizes)
  return _make_part(ds, to_example, sizes, total, local_batch, cache)


def _make_part(raw_ds, to_example, sizes, total, local_batch, cache):
  def with_mask(example):
    out = to_example(example)
    out['mask'] = tf.constant(1.0, tf.float32)
    return out
  if cache:
    raw_ds = raw_ds.cache()
  ds = raw_ds.map(with_mask, num_parallel_calls=_AUTOTUNE, deterministic=True)
  num_batches = max(-(-max(sizes) // local_batch), 1)
  return _Part(dataset=ds, num_batches=num_batches, num_examples=int(total))


def _labelled(spec, resize=None, label_key='label', mode=None):
  def fn(example):
    return {'image': _eval_image(spec, example['image'], resize=resize, mode=mode),
            'label': tf.cast(example[label_key], tf.int32)}
  return fn


def _accuracy_metric(logits, batch):
  return evalsets.accuracy_sums(logits, batch['label'], batch['mask'])


def _eval_set(spec, name, process_index, process_count, local_batch) -> EvalSet:
  plain = dict(metric_fn=_accuracy_metric, finalize=evalsets.finalize_accuracy)

  if name not in sources.IMAGENET_EVAL_SETS:  # a split of the training dataset
    if spec.name == 'digits':
      images, labels = sources.digits_split(spec, name)
      slices = [sources.even_slice(len(labels), i, process_count, drop_remainder=False)
                for i in range(process_count)]
      sl = slices[process_index]
      part = _make_part(_digits_dataset(images[sl], labels[sl]), _labelled(spec),
                        [s.stop - s.start for s in slices], len(labels), local_batch, False)
      info = {'dataset': 'digits', 'split': name}
    else:
      part = _tfds_part(spec, spec.name, name, process_index, process_count, local_batch,
                        _labelled(spec), spec.cache)
      info = {'dataset': spec.name, 'split': name}
    return EvalSet(name=name, num_examples=part.num_examples, num_batches=part.num_batches,
                   local_batch_size=local_batch, info=info, parts=[part], **plain)

  tfds_name, split = sources.IMAGENET_EVAL_SETS[name]
  args = (process_index, process_count, local_batch)
  if name == 'imagenet_real':
    def to_example(example):
      out = _labelled(spec, label_key='original_label')(example)
      real = tf.one_hot(example['real_label'], 1000, on_value=True, off_value=False,
                        dtype=tf.bool)
      out['real_labels'] = tf.reduce_any(real, axis=0)
      return out
    part = _tfds_part(spec, tfds_name, split, *args, to_example, False)
    return EvalSet(
        name=name, num_examples=part.num_examples, num_batches=part.num_batches,
        local_batch_size=local_batch, parts=[part],
        metric_fn=lambda logits, b: evalsets.real_sums(logits, b['real_labels'], b['mask']),
        finalize=evalsets.finalize_accuracy,
        info={'dataset': tfds_name, 'split': split,
              'protocol': 'ReaL: argmax in the ReaL label set; unlabelled images excluded'})
  if name in ('imagenet_v2', 'minival'):
    part = _tfds_part(spec, tfds_name, split, *args, _labelled(spec), False)
    return EvalSet(name=name, num_examples=part.num_examples, num_batches=part.num_batches,
                   local_batch_size=local_batch, parts=[part],
                   info={'dataset': tfds_name, 'split': split}, **plain)
  if name == 'imagenet_r':  # its reference preprocessing: shorter side 256, centre crop 224
    protocol = spec.imagenet_r_protocol
    part = _tfds_part(spec, tfds_name, split, *args, _labelled(spec, mode='shorter_side'), False)
    return EvalSet(
        name=name, num_examples=part.num_examples, num_batches=part.num_batches,
        local_batch_size=local_batch, parts=[part],
        metric_fn=lambda logits, b: evalsets.imagenet_r_sums(logits, b['label'], b['mask'],
                                                             protocol=protocol),
        finalize=evalsets.finalize_accuracy,
        info={'dataset': tfds_name, 'split': split, 'imagenet_r_protocol': protocol})
  # imagenet_c: one padded part per (corruption, severity); images are already 224x224 centre
  # crops, so they are only resized to image_size (a no-op at 224).
  keys = [(c, s) for c in spec.imagenet_c_corruptions for s in spec.imagenet_c_severities]
  parts = []
  for i, (corruption, severity) in enumerate(keys):
    labelled = _labelled(spec, resize=spec.image_size, mode='shorter_side')

    def to_example(example, i=i, labelled=labelled):
      out = labelled(example)
      out['subset'] = tf.constant(i, tf.int32)
      return out
    parts.append(_tfds_part(spec, tfds_name.format(corruption=corruption, severity=severity),
                            split, *args, to_example, False))
  num_subsets = len(keys)
  return EvalSet(
      name=name, num_examples=sum(p.num_examples for p in parts),
      num_batches=sum(p.num_batches for p in parts), local_batch_size=local_batch, parts=parts,
      metric_fn=lambda logits, b: evalsets.subset_accuracy_sums(
          logits, b['label'], b['mask'], b['subset'], num_subsets),
      finalize=functools.partial(evalsets.finalize_subsets, keys=keys),
      info={'dataset': 'imagenet2012_corrupted', 'split': split, 'subset_keys': keys,
            'protocol': 'mean top-1 over corruptions x severities'})


def make_eval_sets(data_config, eval_names: Sequence[str], *, global_batch_size: int,
                   process_index: Optional[int] = None,
                   process_count: Optional[int] = None) -> Dict[str, EvalSet]:
  """name -> EvalSet for each of `eval_names`.

  Names: a split of the training dataset ('test' for cifar, 'validation' for imagenet2012,
  'val' / 'test' / 'train' for digits), or for imagenet2012 also 'minival' (train[99%:], the
  part the default train split 'train[:99%]' leaves out), 'imagenet_real',
  'imagenet_v2' (matched-frequency), 'imagenet_r', 'imagenet_c'. The digits 'train' set is
  the training data as trained on (train_subset and label_noise applied). The ImageNet-R
  protocol is data.imagenet_r_protocol (recorded in `EvalSet.info`); 'imagenet_c' covers
  data.imagenet_c_corruptions x data.imagenet_c_severities (default 15 x 5). Errors (missing
  datasets included) are raised here.
  """
  if isinstance(eval_names, str):
    eval_names = [eval_names]
  spec = sources.validate(data_config, eval_names)
  process_index, process_count = _topology(process_index, process_count)
  local_batch = _local_batch(global_batch_size, process_count)
  return {name: _eval_set(spec, name, process_index, process_count, local_batch)
          for name in eval_names}

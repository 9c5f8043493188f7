"""Where examples come from: the data config, the tfds datasets and the scikit-learn digits.

Everything here yields *raw* examples (`image` still encoded, or the digits' small float arrays,
and an int `label`); decoding and augmentation happen in `input_pipeline.py`.

The data config (an `ml_collections.ConfigDict`, read once by `resolve`):

  name                  required. 'cifar10' | 'cifar100' | 'imagenet2012' | 'digits'.
  data_dir              None. tfds data directory (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
                        Unused by 'digits' (it ships inside scikit-learn).
  num_train_examples    None. Size of the (global) train split used for step counts. None: the
                        prepared dataset's metadata for train_split, else train_split's share of the
                        published size, sliced as tfds slices it (cifar 50,000; imagenet2012
                        'train[:99%]' 1,268,355 of 1,281,167; digits: the train split /
                        train_subset). Mocked tfds data has no metadata and ignores slicing: tests
                        set it. A value smaller than the split also caps each epoch to that many
                        examples.
  image_size            32 (cifar), 224 (imagenet2012), 8 (digits). cifar and digits only
                        accept their native size; imagenet2012 crops / resizes to it.
  eval_resize           None -> round(image_size * 256 / 224) (256 for 224). imagenet2012 only:
                        size of the evaluation resize before the centre crop of image_size.
  eval_resize_mode      'square' (default; the official R-SAM / vit_jax evaluation: resize to
                        eval_resize x eval_resize, aspect ratio NOT kept, bilinear without
                        antialiasing, then the central crop, values not rounded) or
                        'shorter_side' (shorter side to eval_resize, aspect kept, antialiased,
                        rounded to uint8, then the central crop: big_vision's resize_small +
                        central_crop). imagenet2012 only. 'validation', 'minival', 'imagenet_real'
                        and 'imagenet_v2' use it; 'imagenet_r' keeps its reference protocol
                        (shorter side 256 + centre crop 224: hendrycks/imagenet-r eval.py) and
                        'imagenet_c' (already 224 x 224 centre crops) is only resized to image_size.
  augment               'basic' (cifar: pad 4 + random crop + flip; digits: random shift by up
                        to 1 pixel), 'inception' (imagenet2012: inception crop + flip), or
                        'none' (cifar/digits: as evaluation; imagenet2012: resize + centre crop).
                        Default: 'basic' for cifar/digits, 'inception' for imagenet2012.
  randaugment_layers    0 (off). imagenet2012 only: RandAugment N after the crop and flip.
  randaugment_magnitude 10. RandAugment M.
  shuffle_buffer        None -> the whole per-process slice for cifar/digits, 50,000 for
                        imagenet2012.
  cache                 None -> True for cifar (encoded images kept in memory), False for
                        imagenet2012. (digits always live in memory.)
  train_split           'train'; imagenet2012 'train[:99%]' (the official R-SAM / vit_jax / big_vision
                        split: the last 1% is 'minival'). Any tfds split string of the dataset's
                        splits ('train[:50%]', 'train[10:]+train[:5]'; not for digits).
  imagenet_r_protocol   'mask200' (only the 200 ImageNet-R classes compete; the reference) or
                        'full1000' (plain 1000-way argmax).
  imagenet_c_corruptions  the 15 benchmark corruptions (evalsets.IMAGENET_C_CORRUPTIONS).
  imagenet_c_severities   (1, 2, 3, 4, 5).
  mock_examples         0 (real data). N > 0: tfds mock data instead of the prepared dataset
                        (`tfds.testing.mock_data`: N random examples of the dataset's own features
                        per split, so every split and eval set exists), through the same pipeline.
                        `runlocal=1` sets it: a smoke run needs no dataset. num_train_examples
                        defaults to N. Not for digits (they ship with scikit-learn).
  digits only:
  split_seed            0. Seed of the fixed stratified train/val/test split (and the noise).
  train_subset          None. Use only the first N train examples (the train split is stored in
                        class round-robin order, so every prefix is stratified).
  label_noise           0.0. Fraction of the (subset) train labels replaced by a different,
                        uniformly drawn class (exactly round(fraction * N) labels change; the
                        choice is seeded by split_seed and fixed across runs).
  subset_seed           None. Another draw of the training data inside the same split (issue #26's
                        data draws): the train split's seeded class round-robin order, hence which
                        images train_subset takes, and which labels label_noise flips, come from this
                        seed instead of split_seed. val and test stay split_seed's (tuning on val
                        never sees a draw's evaluation images). None: split_seed (the fixed default).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from typing import Any, Optional, Sequence

import numpy as np

from data import evalsets


class DataError(ValueError):
  """A data configuration or dataset problem, explained in one line."""


DATASETS = ('cifar10', 'cifar100', 'imagenet2012', 'digits')

_NUM_CLASSES = {'cifar10': 10, 'cifar100': 100, 'imagenet2012': 1000, 'digits': 10}
_PUBLISHED_SIZES = {'cifar10': {'train': 50_000, 'test': 10_000},
                    'cifar100': {'train': 50_000, 'test': 10_000},
                    'imagenet2012': {'train': 1_281_167, 'validation': 50_000}}
_DEFAULT_TRAIN_SPLIT = {'imagenet2012': 'train[:99%]'}
_SPLITS = {
    'cifar10': ('train', 'test'),
    'cifar100': ('train', 'test'),
    'imagenet2012': ('train', 'validation'),
    'digits': ('train', 'val', 'test'),
}
# Extra evaluation sets (tfds name, split) that ImageNet models are evaluated on. 'minival' is the 1% of
# the train split that the default train_split 'train[:99%]' holds out (for evaluation during training).
IMAGENET_EVAL_SETS = {
    'minival': ('imagenet2012', 'train[99%:]'),
    'imagenet_real': ('imagenet2012_real', 'validation'),
    'imagenet_v2': ('imagenet_v2/matched-frequency', 'test'),
    'imagenet_r': ('imagenet_r', 'test'),
    'imagenet_c': ('imagenet2012_corrupted/{corruption}_{severity}', 'validation'),
}
# ImageNet evaluation resizes (data.eval_resize_mode; the module docstring).
EVAL_RESIZE_MODES = ('square', 'shorter_side')
# Datasets whose preparation needs the ILSVRC2012 tars in <data_dir>/downloads/manual/.
_MANUAL = ('imagenet2012', 'imagenet2012_real', 'imagenet2012_corrupted')

_KNOWN_FIELDS = (
    'name', 'data_dir', 'num_train_examples', 'image_size', 'eval_resize', 'eval_resize_mode', 'augment',
    'randaugment_layers', 'randaugment_magnitude', 'shuffle_buffer', 'cache', 'train_split',
    'imagenet_r_protocol', 'imagenet_c_corruptions', 'imagenet_c_severities', 'split_seed',
    'train_subset', 'label_noise', 'mock_examples', 'subset_seed')


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """The data config with every default filled in and every field checked (see module doc)."""
  name: str
  data_dir: Optional[str]
  num_train_examples: Optional[int]
  image_size: int
  eval_resize: int
  eval_resize_mode: str
  augment: str
  randaugment_layers: int
  randaugment_magnitude: float
  shuffle_buffer: Optional[int]
  cache: bool
  train_split: str
  imagenet_r_protocol: str
  imagenet_c_corruptions: tuple
  imagenet_c_severities: tuple
  split_seed: int
  train_subset: Optional[int]
  label_noise: float
  mock_examples: int = 0
  subset_seed: Optional[int] = None


def _get(config, field, default=None):
  if config is None:
    return default
  if isinstance(config, dict):
    value = config.get(field, default)
  else:
    value = getattr(config, field, default) if field in config else default
  return default if value is None else value


def resolve(data_config) -> DataSpec:
  """Reads and validates the data config once; raises a one-line DataError naming the field."""
  if isinstance(data_config, DataSpec):
    return data_config
  name = _get(data_config, 'name')
  if name not in DATASETS:
    raise DataError(f"data.name={name!r} is not a known dataset; valid names: "
                    f"{', '.join(DATASETS)}")
  keys = list(data_config.keys()) if hasattr(data_config, 'keys') else []
  unknown = [k for k in keys if k not in _KNOWN_FIELDS]
  if unknown:
    logging.warning('data config: ignoring unknown fields %s', unknown)

  native = {'cifar10': 32, 'cifar100': 32, 'digits': 8, 'imagenet2012': 224}[name]
  image_size = int(_get(data_config, 'image_size', native))
  if name != 'imagenet2012' and image_size != native:
    raise DataError(f"data.image_size={image_size} but {name} images are {native}x{native}; "
                    f"remove the field or set it to {native}")
  if image_size <= 0:
    raise DataError(f"data.image_size={image_size} must be positive")
  eval_resize = int(_get(data_config, 'eval_resize', round(image_size * 256 / 224)))
  if eval_resize < image_size:
    raise DataError(f"data.eval_resize={eval_resize} is smaller than data.image_size="
                    f"{image_size}; use at least {image_size}")

  eval_resize_mode = _get(data_config, 'eval_resize_mode', 'square')
  if eval_resize_mode not in EVAL_RESIZE_MODES:
    raise DataError(f"data.eval_resize_mode={eval_resize_mode!r}; use one of "
                    f"{', '.join(EVAL_RESIZE_MODES)}")

  default_aug = 'inception' if name == 'imagenet2012' else 'basic'
  augment = _get(data_config, 'augment', default_aug)
  valid_aug = ('inception', 'none') if name == 'imagenet2012' else ('basic', 'none')
  if augment not in valid_aug:
    raise DataError(f"data.augment={augment!r} is not valid for {name}; use one of "
                    f"{', '.join(valid_aug)}")
  ra_layers = int(_get(data_config, 'randaugment_layers', 0))
  ra_magnitude = float(_get(data_config, 'randaugment_magnitude', 10))
  if ra_layers < 0:
    raise DataError(f"data.randaugment_layers={ra_layers} must be >= 0 (0 turns it off)")
  if ra_layers and name != 'imagenet2012':
    raise DataError(f"data.randaugment_layers={ra_layers} is only supported for imagenet2012, "
                    f"not {name}; set it to 0")

  num_train = _get(data_config, 'num_train_examples')
  if num_train is not None and int(num_train) <= 0:
    raise DataError(f"data.num_train_examples={num_train} must be positive")
  shuffle_buffer = _get(data_config, 'shuffle_buffer')
  if shuffle_buffer is not None and int(shuffle_buffer) <= 0:
    raise DataError(f"data.shuffle_buffer={shuffle_buffer} must be positive")
  cache = bool(_get(data_config, 'cache', name != 'imagenet2012'))

  protocol = _get(data_config, 'imagenet_r_protocol', 'mask200')
  if protocol not in evalsets.IMAGENET_R_PROTOCOLS:
    raise DataError(f"data.imagenet_r_protocol={protocol!r}; use one of "
                    f"{', '.join(evalsets.IMAGENET_R_PROTOCOLS)}")
  corruptions = tuple(_get(data_config, 'imagenet_c_corruptions',
                           evalsets.IMAGENET_C_CORRUPTIONS))
  bad = [c for c in corruptions if c not in evalsets.IMAGENET_C_ALL_CORRUPTIONS]
  if bad or not corruptions:
    raise DataError(f"data.imagenet_c_corruptions has unknown entries {bad}; valid: "
                    f"{', '.join(evalsets.IMAGENET_C_ALL_CORRUPTIONS)}")
  severities = tuple(int(s) for s in _get(data_config, 'imagenet_c_severities',
                                          evalsets.IMAGENET_C_SEVERITIES))
  if not severities or any(s not in evalsets.IMAGENET_C_SEVERITIES for s in severities):
    raise DataError(f"data.imagenet_c_severities={severities}; use values in 1..5")

  train_subset = _get(data_config, 'train_subset')
  label_noise = float(_get(data_config, 'label_noise', 0.0))
  if name != 'digits' and (train_subset is not None or label_noise):
    raise DataError(f"data.train_subset / data.label_noise are only supported for digits, "
                    f"not {name}; remove them")
  if train_subset is not None and int(train_subset) <= 0:
    raise DataError(f"data.train_subset={train_subset} must be a positive int")
  if not 0.0 <= label_noise <= 1.0:
    raise DataError(f"data.label_noise={label_noise} must be a fraction in [0, 1]")
  subset_seed = _get(data_config, 'subset_seed')
  if subset_seed is not None and (name != 'digits' or isinstance(subset_seed, bool) or
                                  not isinstance(subset_seed, (int, np.integer)) or subset_seed < 0):
    raise DataError(f"data.subset_seed={subset_seed!r} must be an int >= 0, for digits only (None: "
                    f"the split_seed draw)")
  mock_examples = _get(data_config, 'mock_examples', 0)
  if not isinstance(mock_examples, (int, np.integer)) or isinstance(mock_examples, bool) or mock_examples < 0:
    raise DataError(f"data.mock_examples={mock_examples!r} must be an int >= 0 (0: the real dataset)")

  return DataSpec(
      name=name,
      data_dir=_get(data_config, 'data_dir'),
      num_train_examples=None if num_train is None else int(num_train),
      image_size=image_size,
      eval_resize=eval_resize,
      eval_resize_mode=eval_resize_mode,
      augment=augment,
      randaugment_layers=ra_layers,
      randaugment_magnitude=ra_magnitude,
      shuffle_buffer=None if shuffle_buffer is None else int(shuffle_buffer),
      cache=cache,
      train_split=_get(data_config, 'train_split', _DEFAULT_TRAIN_SPLIT.get(name, 'train')),
      imagenet_r_protocol=protocol,
      imagenet_c_corruptions=corruptions,
      imagenet_c_severities=severities,
      split_seed=int(_get(data_config, 'split_seed', 0)),
      train_subset=None if train_subset is None else int(train_subset),
      label_noise=label_noise,
      mock_examples=0 if name == 'digits' else int(mock_examples),
      subset_seed=None if subset_seed is None else int(subset_seed),
  )


def num_classes(data_config) -> int:
  """Number of classes of the training dataset (10, 100, 1000, 10)."""
  return _NUM_CLASSES[resolve(data_config).name]


def num_train_examples(data_config) -> int:
  """Global number of training examples: the config value if set, else the prepared tfds
  metadata, else the published size (mocked tfds data has no metadata)."""
  spec = resolve(data_config)
  if spec.num_train_examples is not None:
    return spec.num_train_examples
  if spec.mock_examples:
    return spec.mock_examples
  if spec.name == 'digits':
    return len(digits_split(spec, spec.train_split)[1])
  try:
    builder = tfds_builder(spec.name, spec.data_dir)
    n = builder.info.splits[spec.train_split].num_examples
    if isinstance(n, (int, np.integer)) and n > 0:
      return int(n)
  except Exception:  # pylint: disable=broad-except
    pass  # not prepared / no metadata: fall back to the published size
  return split_size(spec.train_split, _PUBLISHED_SIZES[spec.name])


def _absolute_ranges(split: str, sizes: dict) -> list:
  """[(split name, start, stop)] of a tfds split string over splits of `sizes` examples, as tfds resolves
  it (percent slices round to the closest example)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  infos = {k: tfds.core.SplitInfo(name=k, shard_lengths=[n], num_bytes=0) for k, n in sizes.items()}
  out = []
  for ins in tfds.core.ReadInstruction.from_spec(split).to_absolute(infos):
    out.append((ins.splitname, ins.from_ or 0, sizes[ins.splitname] if ins.to is None else ins.to))
  return out


def split_size(split: str, sizes: dict) -> int:
  """Number of examples of a tfds split string ('train[:99%]') over splits of `sizes` examples."""
  return sum(stop - start for _, start, stop in _absolute_ranges(split, sizes))


def image_shape(data_config) -> tuple:
  """(H, W, C) of the images the pipelines yield: (32, 32, 3) cifar, (image_size,
  image_size, 3) imagenet2012, (8, 8, 1) digits."""
  spec = resolve(data_config)
  return (spec.image_size, spec.image_size, 1 if spec.name == 'digits' else 3)


def eval_names(data_config) -> tuple:
  """The evaluation set names `make_eval_sets` accepts for this dataset."""
  spec = resolve(data_config)
  extra = {'imagenet2012': tuple(IMAGENET_EVAL_SETS), 'digits': (DIGITS_UNUSED,)}.get(spec.name, ())
  return _SPLITS[spec.name] + extra


def validate(data_config, eval_set_names: Sequence[str] = ()) -> DataSpec:
  """Checks the data config and the evaluation set names without touching any data (one-line
  DataError naming the field); returns the resolved DataSpec."""
  spec = resolve(data_config)
  check_split(spec, spec.train_split)
  valid = eval_names(spec)
  if isinstance(eval_set_names, str):
    eval_set_names = [eval_set_names]
  for name in eval_set_names:
    if name not in valid:
      raise DataError(f"eval set {name!r} is not available for {spec.name}; valid: "
                      f"{', '.join(valid)}")
  if 'minival' in eval_set_names:
    held_out = IMAGENET_EVAL_SETS['minival'][1]
    sizes = _PUBLISHED_SIZES[spec.name]
    for base, start, stop in _absolute_ranges(spec.train_split, sizes):
      for base2, start2, stop2 in _absolute_ranges(held_out, sizes):
        if base == base2 and max(start, start2) < min(stop, stop2):
          raise DataError(f"eval set 'minival' ({held_out}) overlaps data.train_split="
                          f"{spec.train_split!r}; train on 'train[:99%]' or drop 'minival'")
  return spec


def check_split(spec: DataSpec, split: str) -> None:
  """A split of the dataset, or for tfds datasets a tfds split string over its splits."""
  valid = _SPLITS[spec.name]
  if split in valid:
    return
  bases = [part.split('[')[0].strip() for part in split.split('+')]
  if spec.name == 'digits' or any(b not in valid for b in bases):
    raise DataError(f"split {split!r} does not exist for {spec.name}; valid: {', '.join(valid)}"
                    + ('' if spec.name == 'digits' else " or a tfds slice of them, e.g. 'train[:99%]'"))
  try:
    split_size(split, {b: 100 for b in bases})
  except ValueError:
    raise DataError(f"split {split!r} is not a tfds split string; write it as e.g. 'train[:99%]' or "
                    f"'train[1000:]'") from None


# ---------------------------------------------------------------------------------------------
# tfds


def default_data_dir(data_dir: Optional[str]) -> str:
  if data_dir:
    return str(data_dir)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return os.environ.get('TFDS_DATA_DIR') or tfds.core.constants.DATA_DIR


def tfds_command() -> str:
  """The ``tfds`` command of the running interpreter's environment (``.venv/bin/tfds`` from the checkout):
  a bare ``tfds`` may be another installation's, or missing from PATH when the venv is not activated."""
  import sys  # pylint: disable=g-import-not-at-top
  script = os.path.join(os.path.dirname(sys.executable), 'tfds')
  if not os.path.exists(script):
    return 'tfds'
  relative = os.path.relpath(script)
  return relative if not relative.startswith('..') else script


def _prepare_hint(tfds_name: str, data_dir: Optional[str]) -> str:
  where = default_data_dir(data_dir)
  base = tfds_name.split('/')[0]
  build = f"`{tfds_command()} build {tfds_name} --data_dir={where}`"
  if base in _MANUAL:
    tars = ('ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar' if base == 'imagenet2012'
            else 'ILSVRC2012_img_val.tar')
    return (f"put the ILSVRC2012 tars ({tars}) in "
            f"{os.path.join(where, 'downloads', 'manual')}/ and run {build}")
  return f"prepare it with {build} (needs network access once)"


def _missing(tfds_name: str, data_dir: Optional[str], err: BaseException) -> DataError:
  return DataError(
      f"dataset {tfds_name!r} is not prepared in data_dir={default_data_dir(data_dir)!r} "
      f"(tfds raised {type(err).__name__}); {_prepare_hint(tfds_name, data_dir)}")


def _tfds_errors():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError,
          tf.errors.NotFoundError, tf.errors.PermissionDeniedError)


@contextlib.contextmanager
def _mocked(mock: int):
  """tfds mock data (``mock`` random examples per split) inside the context, when ``mock`` > 0."""
  if not mock:
    yield
    return
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.testing import mocking  # pylint: disable=g-import-not-at-top
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # the mock's generator warns of a deprecated field, per set
  try:
    with mocking.mock_data(num_examples=int(mock)):
      yield
  finally:
    absl_logging.set_verbosity(verbosity)


def tfds_builder(tfds_name: str, data_dir: Optional[str], *, mock: int = 0):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    with _mocked(mock):
      return tfds.builder(tfds_name, data_dir=data_dir)
  except _tfds_errors() as e:
    raise _missing(tfds_name, data_dir, e) from None


def tfds_read(tfds_name: str, split, data_dir: Optional[str], *, file_shuffle_seed=None, mock: int = 0):
  """Reads `split` (a string or a tfds split object) with images left encoded, in a fixed
  order (or a file order fixed by `file_shuffle_seed`). `mock` > 0: that many random examples of
  the dataset's features instead (data.mock_examples); the dataset built is self-contained."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  read_config = tfds.ReadConfig(
      shuffle_seed=file_shuffle_seed, shuffle_reshuffle_each_iteration=False,
      try_autocache=False, skip_prefetch=True)
  try:
    with _mocked(mock):
      builder = tfds_builder(tfds_name, data_dir)
      ds = builder.as_dataset(
          split=split, shuffle_files=file_shuffle_seed is not None,
          decoders={'image': tfds.decode.SkipDecoding()}, read_config=read_config)
  except _tfds_errors() as e:
    raise _missing(tfds_name, data_dir, e) from None
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def tfds_slice_sizes(tfds_name: str, splits: Sequence[Any], data_dir: Optional[str], *, mock: int = 0):
  """Number of examples of each split (object) from the metadata, or None when unknown (mocked
  data): callers then count."""
  if mock:
    return None
  builder = tfds_builder(tfds_name, data_dir)
  try:
    sizes = [builder.info.splits[s].num_examples for s in splits]
  except Exception:  # pylint: disable=broad-except
    return None
  if all(isinstance(n, (int, np.integer)) and n > 0 for n in sizes):
    return [int(n) for n in sizes]
  return None


# ---------------------------------------------------------------------------------------------
# digits (scikit-learn)

# The fixed split of the 1,797 images, stratified by class with random_state=split_seed:
# test = 20% (360), val = 20% of the total taken from the rest (360), train = the other 1,077.
DIGITS_SIZES = {'train': 1077, 'val': 360, 'test': 360}
# An evaluation set: the train images that data.train_subset leaves out, with their true labels (never
# trained on, never noised). Pooled with 'test' it is a larger test set (issue #14: 360 + 757 images for
# the noisy320 setting), which narrows the seed-to-seed spread that a 360-image test set adds.
DIGITS_UNUSED = 'train_unused'


@functools.lru_cache(maxsize=64)
def _digits_splits(split_seed: int, subset_seed: Optional[int] = None):
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  x = digits.images.astype(np.float32)[..., None]  # [1797, 8, 8, 1], values 0..16
  y = digits.target.astype(np.int32)
  idx = np.arange(len(y))
  rest, test = model_selection.train_test_split(
      idx, test_size=360, stratify=y, random_state=split_seed)
  train, val = model_selection.train_test_split(
      rest, test_size=360, stratify=y[rest], random_state=split_seed)
  # Train split in class round-robin order (each class in a seeded random order), so that any
  # prefix -- `train_subset` -- is stratified and smaller subsets are nested in larger ones. The order's
  # seed is the data draw's (subset_seed), split_seed's by default.
  rng = np.random.default_rng([split_seed if subset_seed is None else subset_seed, 0])
  per_class = [rng.permutation(train[y[train] == c]) for c in range(10)]
  rank = np.concatenate([np.arange(len(p)) for p in per_class])
  cls = np.concatenate([np.full(len(p), c) for c, p in enumerate(per_class)])
  order = np.lexsort((cls, rank))
  train = np.concatenate(per_class)[order]
  splits = {'train': train, 'val': np.sort(val), 'test': np.sort(test)}
  # Standardisation constants from the training split, in the [0, 1] scale.
  mean = float((x[train] / 16.0).mean())
  std = float((x[train] / 16.0).std())
  return x, y, splits, mean, std


def digits_stats(spec: DataSpec):
  """(mean, std) of the digits train split in [0, 1] units, used to standardise all splits."""
  _, _, _, mean, std = _digits_splits(spec.split_seed)
  return mean, std


def digits_split(spec: DataSpec, split: str):
  """(images float32 [N, 8, 8, 1] in 0..16, labels int32 [N]) of a digits split, with
  train_subset and label_noise applied to 'train'; DIGITS_UNUSED: the train images after the first
  train_subset, true labels."""
  x, y, splits, _, _ = _digits_splits(spec.split_seed, spec.subset_seed)
  if split == DIGITS_UNUSED:
    if spec.train_subset is None or spec.train_subset >= len(splits['train']):
      raise DataError(f"eval set {DIGITS_UNUSED!r} holds the train images data.train_subset leaves out, "
                      f"and data.train_subset={spec.train_subset} leaves none; drop it from eval_sets")
    idx = splits['train'][spec.train_subset:]
    return x[idx], y[idx].copy()
  check_split(spec, split)
  idx = splits[split]
  images, labels = x[idx], y[idx].copy()
  if split == 'train':
    if spec.train_subset is not None:
      if spec.train_subset > len(idx):
        raise DataError(f"data.train_subset={spec.train_subset} exceeds the digits train split "
                        f"({len(idx)} examples)")
      images, labels = images[:spec.train_subset], labels[:spec.train_subset]
    if spec.label_noise:
      labels = noisy_labels(labels, spec.label_noise, num_classes=10,
                            seed=spec.split_seed if spec.subset_seed is None else spec.subset_seed)
  return images, labels


def noisy_labels(labels: np.ndarray, fraction: float, *, seed: int, num_classes: int):
  """Replaces exactly round(fraction * N) labels (a seeded random choice) by a different class
  drawn uniformly from the other num_classes - 1."""
  rng = np.random.default_rng([seed, 1])
  n = len(labels)
  flip = rng.permutation(n)[:int(round(fraction * n))]
  out = np.array(labels, copy=True)
  out[flip] = (out[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
  return out


def even_slice(n: int, index: int, count: int, *, drop_remainder: bool) -> slice:
  """The `index`-th of `count` contiguous slices of range(n), as tfds.even_splits makes them
  (sizes differ by at most one, the first n % count slices are the larger; with
  drop_remainder every slice has n // count examples)."""
  if drop_remainder:
    m = n // count
    return slice(index * m, (index + 1) * m)
  m, r = divmod(n, count)
  start = index * m + min(index, r)
  return slice(start, start + m + (1 if index < r else 0))

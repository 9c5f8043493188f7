"""Data: tfds / scikit-learn-digits input pipelines, augmentations and evaluation sets.

The train loop only needs what is exported here:

  make_train_iterator(data_config, *, global_batch_size, seed, start_step=0,
                      process_index=None, process_count=None)   -> iterator of local batches
  make_eval_sets(data_config, eval_names, *, global_batch_size,
                 process_index=None, process_count=None)        -> {name: EvalSet}
  to_global_batch(local_batch, sharding)                         -> global jax arrays
  check_batch(global_batch_size, num_devices, *, process_count=None) -> local batch size
  num_classes(data_config), num_train_examples(data_config), image_shape(data_config),
  steps_per_epoch(data_config, global_batch_size, *, process_count=None)
  validate(data_config, eval_set_names=())  -> checks fields and eval names, touches no data
  eval_names(data_config)                   -> the eval set names valid for the dataset
  DataError (a ValueError with a one-line message)

The data config fields and their defaults are documented in `data/sources.py`; the determinism
and padding rules in `data/input_pipeline.py`; the evaluation protocols in `data/evalsets.py`.

The input pipeline (TensorFlow) is imported on first use of one of its names, so the JAX-only parts
(data.sources, data.mixup: what a train step needs) work where TensorFlow is not installed.
"""
from data.sources import DATASETS
from data.sources import DataError
from data.sources import eval_names
from data.sources import image_shape
from data.sources import num_classes
from data.sources import num_train_examples
from data.sources import resolve as resolve_config
from data.sources import validate

_PIPELINE_NAMES = ('EvalSet', 'check_batch', 'make_eval_sets', 'make_train_iterator', 'steps_per_epoch',
                   'to_global_batch')


def __getattr__(name):
  if name in _PIPELINE_NAMES:
    from data import input_pipeline  # pylint: disable=g-import-not-at-top
    return getattr(input_pipeline, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
    'DATASETS', 'DataError', 'EvalSet', 'check_batch', 'eval_names', 'image_shape',
    'make_eval_sets', 'make_train_iterator', 'num_classes', 'num_train_examples',
    'resolve_config', 'steps_per_epoch', 'to_global_batch', 'validate',
]

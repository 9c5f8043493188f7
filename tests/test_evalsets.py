"""Evaluation protocols (data/evalsets.py) on hand-made logits, and padded eval iterators."""
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

import data
from data import evalsets
from data import sources


def _onehot_logits(preds, num_classes):
  logits = np.zeros([len(preds), num_classes], np.float32)
  logits[np.arange(len(preds)), preds] = 1.0
  return logits


def test_masked_accuracy_ignores_padding():
  logits = _onehot_logits([0, 1, 2, 3, 0, 0], 4)
  labels = np.array([0, 1, 0, 3, 0, 0])
  mask = np.array([1, 1, 1, 1, 0, 0], np.float32)  # the last two rows are padding (and "right")
  sums = evalsets.accuracy_sums(logits, labels, mask)
  assert float(sums['correct']) == 3 and float(sums['count']) == 4
  assert evalsets.finalize_accuracy(sums)['accuracy'] == pytest.approx(0.75)
  no_mask = evalsets.accuracy_sums(logits, labels)
  assert float(no_mask['correct']) == 5 and float(no_mask['count']) == 6
  # Additive over batches and jit-able.
  jitted = jax.jit(evalsets.accuracy_sums)(logits, labels, mask)
  assert float(jitted['correct']) == 3 and float(jitted['count']) == 4


def test_real_multilabel_hits_and_unlabelled_excluded():
  c = 10
  logits = _onehot_logits([3, 5, 2, 7, 1, 4], c)
  real = np.zeros([6, c], bool)
  real[0, [1, 3]] = True  # argmax 3 is one of two ReaL labels: hit
  real[1, [4]] = True     # argmax 5 (say the original label) is not a ReaL label: miss
  real[2, [2, 8, 9]] = True  # hit
  # row 3: no ReaL label -> not counted, whatever the prediction
  real[4, [1]] = True     # would be a hit, but padded
  real[5, [0]] = True     # miss
  mask = np.array([1, 1, 1, 1, 0, 1], np.float32)
  sums = evalsets.real_sums(logits, real, mask)
  assert float(sums['correct']) == 2 and float(sums['count']) == 4
  assert evalsets.finalize_accuracy(sums)['accuracy'] == pytest.approx(0.5)


def test_imagenet_r_mask200_vs_full1000():
  mask = evalsets.imagenet_r_class_mask()
  assert mask.sum() == 200 and not mask[0] and mask[1]  # class 0 (tench) is not in ImageNet-R
  logits = np.zeros([2, 1000], np.float32)
  logits[0, 0], logits[0, 1] = 5.0, 4.0  # a non-R class has the max; label 1 is 2nd
  logits[1, 2] = 3.0                      # R class wins either way
  labels = np.array([1, 2])
  masked = evalsets.finalize_accuracy(evalsets.imagenet_r_sums(logits, labels,
                                                               protocol='mask200'))
  full = evalsets.finalize_accuracy(evalsets.imagenet_r_sums(logits, labels,
                                                             protocol='full1000'))
  assert masked['accuracy'] == 1.0 and full['accuracy'] == 0.5
  with pytest.raises(ValueError):
    evalsets.imagenet_r_sums(logits, labels, protocol='r200')


def test_imagenet_r_classes_match_tfds_label_names():
  names = tfds.builder('imagenet_r').info.features['label'].names  # the 1000 ImageNet wnids
  assert len(names) == 1000 and len(set(evalsets.IMAGENET_R_WNIDS)) == 200
  assert sorted(names.index(w) for w in evalsets.IMAGENET_R_WNIDS) == list(
      evalsets.IMAGENET_R_INDICES)


def test_imagenet_c_aggregation_keeps_table():
  rng = np.random.default_rng(0)
  corruptions = evalsets.IMAGENET_C_CORRUPTIONS
  assert len(corruptions) == 15
  table = {(c, s): float(rng.uniform()) for c in corruptions for s in range(1, 6)}
  out = evalsets.aggregate_imagenet_c(table)
  assert out['accuracy'] == pytest.approx(sum(table.values()) / 75)
  assert out['table']['fog'][3] == table[('fog', 3)]
  assert len(out['table']) == 15 and all(len(v) == 5 for v in out['table'].values())
  assert out['per_corruption']['snow'] == pytest.approx(
      np.mean([table[('snow', s)] for s in range(1, 6)]))
  assert out['per_severity'][5] == pytest.approx(np.mean([table[(c, 5)] for c in corruptions]))

  # From summed per-subset counts: 2 subsets, with padding in the batch.
  keys = [('fog', 1), ('snow', 2)]
  logits = _onehot_logits([0, 1, 1, 0, 1], 3)
  labels = np.array([0, 1, 0, 0, 0])
  subset = np.array([0, 0, 1, 1, 1])
  mask = np.array([1, 1, 1, 1, 0], np.float32)
  sums = evalsets.subset_accuracy_sums(logits, labels, mask, subset, 2)
  np.testing.assert_allclose(sums['correct'], [2, 1])
  np.testing.assert_allclose(sums['count'], [2, 2])
  out = evalsets.finalize_subsets(sums, keys)
  assert out['table'] == {'fog': {1: 1.0}, 'snow': {2: 0.5}}
  assert out['accuracy'] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------
# Padded eval iterators


def test_eval_padding_on_mock_data():
  cfg = ml_collections.ConfigDict({'name': 'cifar10'})
  with tfds.testing.mock_data(num_examples=37):
    sets = [data.make_eval_sets(cfg, ['test'], global_batch_size=32, process_index=i,
                                process_count=2)['test'] for i in range(2)]
    batches = [list(s.iterate()) for s in sets]
  assert sets[0].num_batches == len(batches[0]) == len(batches[1]) == 3
  b = batches[0]
  assert all(x['image'].shape == (16, 32, 32, 3) for x in b)
  assert [x['mask'].sum() for x in b] == [16, 16, 5]
  assert b[-1]['mask'].tolist() == [1] * 5 + [0] * 11  # padding at the end of the last batch
  # The metric ignores the padded rows even if a model "gets them right".
  acc = sets[0].evaluate(lambda batch: _onehot_logits(batch['label'], 10))
  assert acc == {'accuracy': 1.0, 'count': 37.0}


def test_eval_uneven_process_slices_get_masked_batches():
  # 41 examples over 2 processes: slices of 21 and 20; local batch 5 -> 5 batches each, the
  # shorter slice ends with a fully masked batch.
  cfg = ml_collections.ConfigDict({'name': 'digits', 'train_subset': 41})
  sets = [data.make_eval_sets(cfg, ['train'], global_batch_size=10, process_index=i,
                              process_count=2)['train'] for i in range(2)]
  batches = [list(s.iterate()) for s in sets]
  assert [len(b) for b in batches] == [5, 5] and sets[1].num_batches == 5
  assert [x['mask'].sum() for x in batches[0]] == [5, 5, 5, 5, 1]
  assert [x['mask'].sum() for x in batches[1]] == [5, 5, 5, 5, 0]
  assert sets[0].num_examples == 41
  # Unmasked rows of both processes, in order: the 41 examples exactly once.
  labels = np.concatenate([x['label'][x['mask'] > 0] for b in batches for x in b])
  _, expected = sources.digits_split(sources.resolve(cfg), 'train')
  np.testing.assert_array_equal(labels, expected)


def test_imagenet_eval_sets_on_mock_data():
  cfg = ml_collections.ConfigDict({
      'name': 'imagenet2012', 'image_size': 32,
      'imagenet_c_corruptions': ('fog', 'snow'), 'imagenet_c_severities': (2,)})
  with tfds.testing.mock_data(num_examples=5):
    sets = data.make_eval_sets(cfg, ['imagenet_c', 'imagenet_real', 'imagenet_r'],
                               global_batch_size=4)
    c_batches = list(sets['imagenet_c'].iterate())
    real_batch = next(sets['imagenet_real'].iterate())

    def predict(batch):  # right on 'fog', wrong on 'snow'
      good = _onehot_logits(batch['label'], 1000)
      return np.where((batch['subset'] == 0)[:, None], good, np.roll(good, 1, axis=1))
    c_result = sets['imagenet_c'].evaluate(predict)
  assert sets['imagenet_c'].num_batches == len(c_batches) == 4  # 2 parts x ceil(5 / 4)
  assert [int(x['mask'].sum()) for x in c_batches] == [4, 1, 4, 1]
  assert [x['subset'][0] for x in c_batches] == [0, 0, 1, 1]
  assert c_batches[0]['image'].shape == (4, 32, 32, 3)
  assert c_result['table'] == {'fog': {2: 1.0}, 'snow': {2: 0.0}}
  assert c_result['accuracy'] == 0.5
  assert real_batch['real_labels'].shape == (4, 1000) and real_batch['real_labels'].dtype == bool
  assert sets['imagenet_r'].info['imagenet_r_protocol'] == 'mask200'


# ---------------------------------------------------------------------------------------------
# Label sources, in the format tfds really serves. tfds.testing.mock_data makes up examples and
# no split metadata, so those tests take the "count every slice" branch and cannot tell which
# feature a label comes from. Here the real builders (their features, file format and
# dataset_info.json) write a few examples the test chooses: _generate_examples is the only part
# replaced, since the real one reads the ILSVRC2012 tars.

def _prepare(tfds_name, examples, data_dir, config=None, split='validation'):
  """Writes `examples` as `split` of the registered builder `tfds_name` (its features and
  version) into data_dir, as `tfds build` would."""
  base = tfds.builder_cls(tfds_name)

  class Prepared(base, skip_registration=True):
    name = base.name

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples()}

    def _generate_examples(self):
      yield from enumerate(examples)

  Prepared(data_dir=data_dir, config=config).download_and_prepare()


def _image(i):
  return np.full((8, 8, 3), 20 * i, np.uint8)


# ReaL: original labels are unique (they identify a row after tfds' shuffle) and never among the
# example's ReaL labels; lists of one, several and no labels (about 3.5k of the 50k are empty).
REAL = [(100 + i, labels) for i, labels in enumerate(
    [[3], [5, 7], [], [999, 1], [], [42], [0, 1, 2]])]
V2 = {'matched-frequency': [7, 300, 12, 5, 999], 'threshold-0.7': [1, 2, 3, 4, 6, 8]}
IMAGENET_R = [1, 2, 4, 6, 8, 9]
IMAGENET_C = {'fog_2': [10, 11, 12], 'snow_2': [20, 21, 22, 23, 24], 'snow_3': [30, 31]}


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  _prepare('imagenet2012_real',
           [{'image': _image(i), 'original_label': orig, 'real_label': real,
             'file_name': f'ILSVRC2012_val_{i:08d}.JPEG'} for i, (orig, real) in enumerate(REAL)],
           data_dir)
  for variant, labels in V2.items():
    _prepare('imagenet_v2', [{'image': _image(i), 'label': label, 'file_name': f'{variant}/{i}.jpeg'}
                             for i, label in enumerate(labels)], data_dir, config=variant, split='test')
  _prepare('imagenet_r', [{'image': _image(i), 'label': label, 'file_name': f'{i}.jpg'}
                          for i, label in enumerate(IMAGENET_R)], data_dir, split='test')
  for config, labels in IMAGENET_C.items():  # its images are 224x224 centre crops
    _prepare('imagenet2012_corrupted',
             [{'image': np.full((224, 224, 3), i, np.uint8), 'label': label, 'file_name': f'{i}.JPEG'}
              for i, label in enumerate(labels)], data_dir, config=config)
  return data_dir


def _rows(data_dir, name, monkeypatch, process_count=2, global_batch=4):
  """The unmasked rows of every process, the EvalSets; counting a dataset is forbidden: the sizes
  must come from the metadata, as in real runs."""
  from data import input_pipeline

  def no_count(ds):
    raise AssertionError('counted a dataset although its metadata gives the sizes')
  monkeypatch.setattr(input_pipeline, '_count', no_count)
  cfg = ml_collections.ConfigDict({'name': 'imagenet2012', 'image_size': 16, 'data_dir': data_dir})
  sets = [data.make_eval_sets(cfg, [name], global_batch_size=global_batch, process_index=p,
                              process_count=process_count)[name] for p in range(process_count)]
  rows = []
  for s in sets:
    batches = list(s.iterate())
    assert len(batches) == s.num_batches
    for b in batches:
      keep = b['mask'] > 0
      rows += [{k: v[i] for k, v in b.items()} for i in np.flatnonzero(keep)]
  return rows, sets


def test_real_labels_come_from_real_label(imagenet_dir, monkeypatch):
  rows, sets = _rows(imagenet_dir, 'imagenet_real', monkeypatch)
  assert sets[0].num_examples == len(REAL) == len(rows)
  assert sets[0].num_batches == sets[1].num_batches == 2  # slices of 4 and 3, local batch 2
  expected = dict(REAL)
  for row in rows:
    real = expected[int(row['label'])]  # 'label' is original_label
    assert row['real_labels'].shape == (1000,) and row['real_labels'].dtype == bool
    assert sorted(np.flatnonzero(row['real_labels'])) == sorted(real), int(row['label'])
  # Predicting the original label scores 0 (it is never a ReaL label here); predicting the
  # first ReaL label scores 1, over the 5 labelled images only.
  by_original = lambda batch, pick: _onehot_logits(  # noqa: E731
      [pick(int(o)) for o in batch['label']], 1000)
  first_real = lambda o: (expected.get(o) or [0])[0]  # noqa: E731
  assert sets[0].finalize(sets[0].metric_fn(by_original(rows_batch(rows), lambda o: o),
                                            rows_batch(rows))) == {'accuracy': 0.0, 'count': 5.0}
  assert sets[0].finalize(sets[0].metric_fn(by_original(rows_batch(rows), first_real),
                                            rows_batch(rows))) == {'accuracy': 1.0, 'count': 5.0}


def rows_batch(rows):
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_imagenet_v2_reads_matched_frequency(imagenet_dir, monkeypatch):
  rows, sets = _rows(imagenet_dir, 'imagenet_v2', monkeypatch)
  assert sets[0].info == {'dataset': 'imagenet_v2/matched-frequency', 'split': 'test'}
  assert sets[0].num_examples == len(V2['matched-frequency'])
  assert sets[0].num_batches == sets[1].num_batches == 2  # slices of 3 and 2, local batch 2
  assert sorted(int(r['label']) for r in rows) == sorted(V2['matched-frequency'])
  assert all(r['image'].shape == (16, 16, 3) for r in rows)


def test_imagenet_r_and_c_labels_and_sizes(imagenet_dir, monkeypatch):
  rows, sets = _rows(imagenet_dir, 'imagenet_r', monkeypatch)
  assert sets[0].num_examples == len(IMAGENET_R) and sets[0].info['dataset'] == 'imagenet_r'
  assert sorted(int(r['label']) for r in rows) == IMAGENET_R
  from data import input_pipeline
  monkeypatch.setattr(input_pipeline, '_count', lambda ds: pytest.fail('counted a dataset'))
  cfg = ml_collections.ConfigDict({'name': 'imagenet2012', 'image_size': 16, 'data_dir': imagenet_dir,
                                   'imagenet_c_corruptions': ('fog', 'snow'),
                                   'imagenet_c_severities': (2,)})
  c_sets = [data.make_eval_sets(cfg, ['imagenet_c'], global_batch_size=4, process_index=p,
                                process_count=2)['imagenet_c'] for p in range(2)]
  assert c_sets[0].info['subset_keys'] == [('fog', 2), ('snow', 2)]
  assert c_sets[0].num_examples == 3 + 5       # snow_3 exists but is not asked for
  assert c_sets[0].num_batches == 1 + 2        # slices of 2/1 and 3/2 examples, local batch 2
  got = {}
  for s in c_sets:
    for b in s.iterate():
      for label, subset in zip(b['label'][b['mask'] > 0], b['subset'][b['mask'] > 0]):
        got.setdefault(int(subset), []).append(int(label))
  assert {k: sorted(v) for k, v in got.items()} == {0: IMAGENET_C['fog_2'], 1: IMAGENET_C['snow_2']}

"""Input pipelines (data/): shapes, value ranges, determinism and resumption, process slices,
the digits dataset, and the one-line errors. tfds datasets are mocked (nothing is downloaded);
mocked tfds data ignores split slicing and makes images of 5-49 px, so the ImageNet split and the
evaluation preprocessing are checked on a small imagenet2012 that tfds itself prepares on disk
(`prepared_imagenet`: tfds's own Imagenet2012 builder with a generator of synthetic images)."""
import collections

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import data
from data import augment
from data import sources
from configs import vit_b16_rsam


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      assert x[k].dtype == y[k].dtype
      np.testing.assert_array_equal(x[k], y[k])


# ---------------------------------------------------------------------------------------------
# CIFAR and ImageNet on mocked tfds data


@pytest.mark.parametrize('name,num_classes,stats', [
    ('cifar10', 10, (augment.CIFAR10_MEAN, augment.CIFAR10_STD)),
    ('cifar100', 100, (augment.CIFAR100_MEAN, augment.CIFAR100_STD)),
])
def test_cifar_train_and_eval(name, num_classes, stats):
  mean, std = (np.array(s, np.float32) for s in stats)
  lo, hi = (0 - mean) / std, (1 - mean) / std
  with tfds.testing.mock_data(num_examples=40):
    cfg = _cfg(name=name, num_train_examples=40)
    assert data.num_classes(cfg) == num_classes
    batches = _take(data.make_train_iterator(cfg, global_batch_size=16, seed=0), 3)
    evalset = data.make_eval_sets(cfg, ['test'], global_batch_size=16)['test']
    eval_batches = list(evalset.iterate())
    plain = _take(data.make_train_iterator(_cfg(name=name, num_train_examples=40, augment='none'),
                                           global_batch_size=16, seed=0), 1)[0]
  for b in batches:
    assert b['image'].shape == (16, 32, 32, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (16,) and b['label'].dtype == np.int32
    assert ((0 <= b['label']) & (b['label'] < num_classes)).all()
    # Standardised per channel: inside [(0 - mean) / std, (1 - mean) / std], not [0, 1] / 255.
    assert (b['image'] >= lo - 1e-5).all() and (b['image'] <= hi + 1e-5).all()
    assert b['image'].min() < -1.0
  # Basic augmentation pads with zeros: some padded (value 0 -> (0 - mean) / std) borders.
  assert np.isclose(np.concatenate([b['image'] for b in batches]), lo, atol=1e-5).all(-1).any()
  assert evalset.num_batches == 3 and evalset.num_examples == 40
  for b in eval_batches + [plain]:
    # Evaluation / augment='none': exactly standardised uint8 pixels, no crop or padding.
    real = b['mask'] > 0 if 'mask' in b else slice(None)
    pixels = (b['image'][real] * std + mean) * 255
    np.testing.assert_allclose(pixels, np.round(pixels), atol=2e-3)
    assert b['image'].shape[1:] == (32, 32, 3)
  assert [b['mask'].sum() for b in eval_batches] == [16, 16, 8]
  assert not eval_batches[-1]['image'][8:].any()  # padded rows are zeros


def test_imagenet_train_and_eval_shapes_and_range():
  with tfds.testing.mock_data(num_examples=24):  # mocked images are 5-49 px, random sizes
    cfg = _cfg(name='imagenet2012', num_train_examples=24, image_size=32)
    batches = _take(data.make_train_iterator(cfg, global_batch_size=8, seed=0), 4)
    evalset = data.make_eval_sets(cfg, ['validation'], global_batch_size=8)['validation']
    eval_batches = list(evalset.iterate())
    # The default size is 224, whatever the (tiny) stored image size.
    big = _take(data.make_train_iterator(_cfg(name='imagenet2012', num_train_examples=24),
                                         global_batch_size=8, seed=0), 1)[0]
  assert data.num_classes(cfg) == 1000
  assert big['image'].shape == (8, 224, 224, 3)
  for b in batches + eval_batches:
    assert b['image'].shape == (8, 32, 32, 3) and b['image'].dtype == np.float32
    assert b['label'].dtype == np.int32 and ((0 <= b['label']) & (b['label'] < 1000)).all()
    assert b['image'].min() >= -1.0 and b['image'].max() <= 1.0
  assert np.concatenate([b['image'] for b in batches]).min() < -0.5
  assert len(eval_batches) == 3 and sum(b['mask'].sum() for b in eval_batches) == 24


def test_randaugment_on_off_changes_output_and_is_deterministic():
  def first(**kw):
    with tfds.testing.mock_data(num_examples=16):
      cfg = _cfg(name='imagenet2012', num_train_examples=16, image_size=32, **kw)
      return _take(data.make_train_iterator(cfg, global_batch_size=8, seed=3), 1)[0]
  off, on, on_again = first(), first(randaugment_layers=2, randaugment_magnitude=9), first(
      randaugment_layers=2, randaugment_magnitude=9)
  np.testing.assert_array_equal(off['label'], on['label'])  # same examples, same order
  assert not np.array_equal(off['image'], on['image'])
  _assert_same_batches([on], [on_again])


# ---------------------------------------------------------------------------------------------
# ImageNet as tfds prepares it: the official split and evaluation preprocessing

IMAGENET_TRAIN_FAKE = 300          # train[:99%] = 297 examples, train[99%:] = 3
EVAL_SIZES = [(375, 500), (500, 333), (256, 256)]  # (H, W): ImageNet's 500x375 and 333x500 shapes


def _image(rng, h, w):
  """A smooth colour gradient with texture: resizing methods give visibly different pixels."""
  yy, xx = np.mgrid[0:h, 0:w]
  base = np.stack([255 * yy / h, 255 * xx / w, 127 + 100 * np.sin(xx / 7.0 + yy / 11.0)], -1)
  return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


class _SmallImagenet(tfds.builder_cls('imagenet2012'), skip_registration=True):
  """tfds's Imagenet2012 builder (same name, version and features) fed synthetic examples: tfds writes
  the dataset files and metadata, so split slicing and sizes behave as on the real dataset."""
  name = 'imagenet2012'
  MANUAL_DOWNLOAD_INSTRUCTIONS = None

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples([(8, 10)] * IMAGENET_TRAIN_FAKE, 0),
            'validation': self._generate_examples(EVAL_SIZES, 1000)}

  def _generate_examples(self, sizes, offset):  # pylint: disable=arguments-differ
    rng = np.random.default_rng(offset)
    for i, (h, w) in enumerate(sizes):
      # The label is the example's position in the split: what an epoch saw is read off its labels.
      yield i, {'file_name': f'{offset + i}.JPEG', 'image': _image(rng, h, w), 'label': i}


@pytest.fixture(scope='module')
def prepared_imagenet(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  _SmallImagenet(data_dir=data_dir).download_and_prepare()
  return data_dir


def _official_eval(encoded):
  """R-SAM vit_jax/input_pipeline.py, mode 'test' (imagenet2012 preset: resize 256, crop 224)."""
  im = tfds.builder('imagenet2012').info.features['image'].decode_example(encoded)
  im = tf.image.resize(im, [256, 256])
  im = tf.image.central_crop(im, 224 / 256)
  return ((im - 127.5) / 127.5).numpy()


def _vit_data(**kw):
  cfg = vit_b16_rsam.get_config().data
  cfg.update(kw)
  return cfg


def _raw_images(name, split, data_dir=None):
  ds = tfds.builder(name, data_dir=data_dir).as_dataset(
      split=split, decoders={'image': tfds.decode.SkipDecoding()}, shuffle_files=False)
  return [x['image'] for x in ds]


def test_imagenet_eval_is_the_official_resize_and_central_crop(prepared_imagenet):
  """ViT configs evaluate as the official code: tf.image.resize to 256 x 256 (aspect ratio not kept),
  central_crop(224 / 256); checked on 500x375, 333x500 and 256x256 JPEGs tfds encoded."""
  cfg = _vit_data(data_dir=prepared_imagenet)
  evalset = data.make_eval_sets(cfg, ['validation'], global_batch_size=8)['validation']
  batch = next(evalset.iterate())
  raw = _raw_images('imagenet2012', 'validation', prepared_imagenet)  # the pipeline's read order
  shapes = [tuple(tf.io.extract_jpeg_shape(r).numpy()[:2]) for r in raw]
  assert sorted(shapes) == sorted(EVAL_SIZES) and batch['mask'].sum() == len(raw)
  for i, encoded in enumerate(raw):
    np.testing.assert_allclose(batch['image'][i], _official_eval(encoded), atol=1e-5, err_msg=str(i))
  # The other choice, kept as data.eval_resize_mode='shorter_side', is another image for non-square ones.
  shorter = data.make_eval_sets(_vit_data(data_dir=prepared_imagenet, eval_resize_mode='shorter_side'),
                                ['validation'], global_batch_size=8)['validation']
  other = next(shorter.iterate())['image']
  for i, (h, w) in enumerate(shapes):
    gap = np.abs(other[i] - batch['image'][i]).mean()
    assert gap > 0.05 if h != w else gap < 0.02, (h, w, gap)  # a square image: nearly the same pixels


def _labels(name, split, data_dir):
  ds = tfds.builder(name, data_dir=data_dir).as_dataset(
      split=split, decoders={'image': tfds.decode.SkipDecoding()}, shuffle_files=False)
  return [int(x['label']) for x in ds]


def test_imagenet_trains_on_train_99_percent_and_minival_is_the_rest(prepared_imagenet):
  """The ViT configs train on the official train[:99%]; 'minival' is train[99%:], evaluated like the
  validation set; step counts use the 99% (tfds ends a percent slice at the closest example)."""
  cfg = _vit_data(data_dir=prepared_imagenet, image_size=32, shuffle_buffer=64)
  assert cfg.train_split == 'train[:99%]'
  n_train = round(0.99 * IMAGENET_TRAIN_FAKE)
  assert data.num_train_examples(cfg) == n_train == 297          # from the prepared metadata
  held_out = _labels('imagenet2012', 'train[99%:]', prepared_imagenet)
  assert len(held_out) == IMAGENET_TRAIN_FAKE - n_train == 3
  batches = _take(data.make_train_iterator(cfg, global_batch_size=8, seed=0), n_train // 8)
  seen = np.concatenate([b['label'] for b in batches])
  assert len(set(seen)) == len(seen) == n_train // 8 * 8          # one epoch, no repeats
  assert not set(seen) & set(held_out)
  assert set(seen) <= set(_labels('imagenet2012', 'train[:99%]', prepared_imagenet))
  minival = data.make_eval_sets(cfg, ['minival'], global_batch_size=8)['minival']
  assert minival.num_examples == 3 and minival.info['split'] == 'train[99%:]'
  batch = next(minival.iterate())
  assert sorted(batch['label'][batch['mask'] > 0]) == sorted(held_out)
  cfg224 = _vit_data(data_dir=prepared_imagenet)
  image = next(data.make_eval_sets(cfg224, ['minival'], global_batch_size=8)['minival'].iterate())['image']
  raw = _raw_images('imagenet2012', 'train[99%:]', prepared_imagenet)
  np.testing.assert_allclose(image[0], _official_eval(raw[0]), atol=1e-5)  # evaluation preprocessing


def test_split_strings_are_checked_and_minival_must_be_held_out():
  # Without metadata the size is the published 1,281,167 sliced as tfds slices: 1,268,355.
  assert data.num_train_examples(_vit_data()) == round(0.99 * 1_281_167) == 1_268_355
  assert data.num_train_examples(_cfg(name='imagenet2012', train_split='train[:10%]')) == 128_117
  assert 'minival' in data.eval_names(_cfg(name='imagenet2012'))
  with pytest.raises(data.DataError) as excinfo:
    data.validate(_cfg(name='imagenet2012', train_split='train'), ['validation', 'minival'])
  assert 'minival' in _one_line(excinfo) and "train[:99%]" in _one_line(excinfo)
  for bad in ('train[:99%', 'tran[:99%]'):
    with pytest.raises(data.DataError) as excinfo:
      data.validate(_cfg(name='imagenet2012', train_split=bad))
    assert bad in _one_line(excinfo)
  with pytest.raises(data.DataError):
    data.validate(_cfg(name='digits', train_split='train[:50%]'))


def test_real_and_v2_follow_imagenet_and_r_keeps_its_protocol():
  with tfds.testing.mock_data(num_examples=3):
    sets = data.make_eval_sets(_vit_data(), ['imagenet_real', 'imagenet_v2', 'imagenet_r'],
                               global_batch_size=8)
    batches = {name: next(s.iterate()) for name, s in sets.items()}
    raw = {'imagenet_real': _raw_images('imagenet2012_real', 'validation'),
           'imagenet_v2': _raw_images('imagenet_v2/matched-frequency', 'test'),
           'imagenet_r': _raw_images('imagenet_r', 'test')}
  for name in ('imagenet_real', 'imagenet_v2'):
    for i, encoded in enumerate(raw[name]):
      np.testing.assert_allclose(batches[name]['image'][i], _official_eval(encoded), atol=1e-5,
                                 err_msg=f'{name} {i}')
  # ImageNet-R keeps its reference protocol (shorter side 256, centre crop 224): not the square resize.
  shapes = [tuple(tf.io.extract_jpeg_shape(r).numpy()[:2]) for r in raw['imagenet_r']]
  differs = [np.abs(batches['imagenet_r']['image'][i] - _official_eval(r)).max() > 0.05
             for i, r in enumerate(raw['imagenet_r'])]
  assert all(d for d, (h, w) in zip(differs, shapes) if h != w) and any(h != w for h, w in shapes)


# ---------------------------------------------------------------------------------------------
# Determinism and resumption


def test_resume_cifar_bit_identical():
  with tfds.testing.mock_data(num_examples=48):
    cfg = _cfg(name='cifar10', num_train_examples=48)  # 3 steps per epoch at batch 16
    assert data.steps_per_epoch(cfg, 16, process_count=1) == 3
    fresh = _take(data.make_train_iterator(cfg, global_batch_size=16, seed=7), 8)
    again = _take(data.make_train_iterator(cfg, global_batch_size=16, seed=7), 8)
    resumed = _take(data.make_train_iterator(cfg, global_batch_size=16, seed=7, start_step=4), 4)
  _assert_same_batches(fresh, again)
  _assert_same_batches(fresh[4:], resumed)  # starts inside epoch 1, crosses into epoch 2
  # Every epoch is reshuffled and re-augmented.
  assert not np.array_equal(fresh[0]['image'], fresh[3]['image'])


def test_resume_digits_bit_identical_and_seeds_differ():
  cfg = _cfg(name='digits')
  steps = data.steps_per_epoch(cfg, 256, process_count=1)
  assert steps == 1077 // 256 == 4
  fresh = _take(data.make_train_iterator(cfg, global_batch_size=256, seed=0), 7)
  resumed = _take(data.make_train_iterator(cfg, global_batch_size=256, seed=0, start_step=5), 2)
  _assert_same_batches(fresh[5:], resumed)
  other = _take(data.make_train_iterator(cfg, global_batch_size=256, seed=1), 1)[0]
  assert not np.array_equal(fresh[0]['label'], other['label'])  # different order
  # Each epoch visits examples in a new order.
  assert not np.array_equal(fresh[0]['label'], fresh[steps]['label'])


def _per_epoch_reference(cfg, *, global_batch_size, seed, epochs):
  """The module docstring's batches built literally, one tf.data pipeline per epoch (one process)."""
  from data import input_pipeline as ip
  spec = sources.resolve(cfg)
  images, labels = sources.digits_split(spec, spec.train_split)
  steps = len(labels) // global_batch_size
  out = []
  for epoch in range(epochs):
    key = ip._epoch_key(seed, epoch)
    ds = tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels}).enumerate()
    ds = ds.shuffle(len(labels), seed=ip._epoch_shuffle_seed(seed, epoch), reshuffle_each_iteration=False)
    ds = ds.take(steps * global_batch_size).map(lambda i, ex, key=key: {
        'image': ip._train_image(spec, ex['image'], tf.random.experimental.stateless_fold_in(key, i)),
        'label': tf.cast(ex['label'], tf.int32)})
    out += list(ds.batch(global_batch_size, drop_remainder=True).as_numpy_iterator())
  return out


def test_epochs_sharing_one_pipeline_give_the_per_epoch_pipelines_batches(monkeypatch):
  """In-memory data runs many epochs through one tf.data pipeline (data/input_pipeline.py, _block);
  the batches must be the module docstring's, across block boundaries and from a resume inside a
  block."""
  from data import input_pipeline
  cfg = _cfg(name='digits', train_subset=320, label_noise=0.3)  # 5 steps per epoch at batch 64
  reference = _per_epoch_reference(cfg, global_batch_size=64, seed=3, epochs=8)

  def batches(epochs_per_pipeline, start_step, n):
    monkeypatch.setattr(input_pipeline, '_EPOCHS_PER_PIPELINE', epochs_per_pipeline)
    return _take(data.make_train_iterator(cfg, global_batch_size=64, seed=3, start_step=start_step), n)

  _assert_same_batches(reference, batches(3, 0, 40))          # blocks end at steps 15, 30
  _assert_same_batches(reference[17:], batches(3, 17, 23))    # resume inside the second block
  _assert_same_batches(reference, batches(64, 0, 40))
  _assert_same_batches(reference, batches(1, 0, 40))


def test_an_epoch_short_of_num_train_examples_is_a_one_line_error():
  with tfds.testing.mock_data(num_examples=48):
    cfg = _cfg(name='cifar10', num_train_examples=64)  # says 4 steps per epoch at batch 16; there are 3
    it = data.make_train_iterator(cfg, global_batch_size=16, seed=0)
    with pytest.raises(sources.DataError, match=r'epoch 0 gave 3 of 4 batches.*num_train_examples'):
      _take(it, 4)


def _example_keys(batches):
  return collections.Counter(
      (np.round(img, 3).tobytes(), int(lab))
      for b in batches for img, lab in zip(b['image'], b['label']))


def test_process_slices_disjoint_and_cover_the_epoch():
  cfg = _cfg(name='digits', augment='none')
  # 1077 train examples, 2 processes: 538 each (one dropped), local batch 269, 2 steps/epoch.
  per_process = [
      _take(data.make_train_iterator(cfg, global_batch_size=538, seed=0, process_index=i,
                                     process_count=2), 2)
      for i in range(2)]
  for batches in per_process:
    assert all(b['image'].shape == (269, 8, 8, 1) for b in batches)
  keys = [_example_keys(b) for b in per_process]
  assert sum(keys[0].values()) == sum(keys[1].values()) == 538
  spec = sources.resolve(cfg)
  images, labels = sources.digits_split(spec, 'train')
  mean, std = sources.digits_stats(spec)
  expected = _example_keys([{'image': ((images[:1076] / 16.0 - mean) / std).astype(np.float32),
                             'label': labels[:1076]}])
  # As multisets: together the two slices are the epoch, each example exactly once.
  assert keys[0] + keys[1] == expected


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_splits_sizes_and_stratification():
  spec = sources.resolve(_cfg(name='digits'))
  sizes = {s: len(sources.digits_split(spec, s)[1]) for s in ('train', 'val', 'test')}
  assert sizes == {'train': 1077, 'val': 360, 'test': 360} == sources.DIGITS_SIZES
  assert data.num_train_examples(_cfg(name='digits')) == 1077
  _, y, splits, _, _ = sources._digits_splits(0)  # pylint: disable=protected-access
  all_idx = np.concatenate(list(splits.values()))
  assert len(set(all_idx.tolist())) == len(all_idx) == 1797  # disjoint and complete
  total = np.bincount(y, minlength=10)
  for name, idx in splits.items():
    frac = len(idx) / 1797
    counts = np.bincount(y[idx], minlength=10)
    assert np.all(np.abs(counts - total * frac) <= 1.0), (name, counts)
  # The split is fixed: the same again, different with another split_seed.
  again = sources._digits_splits(0)[2]  # pylint: disable=protected-access
  assert all(np.array_equal(splits[k], again[k]) for k in splits)
  assert not np.array_equal(splits['test'], sources._digits_splits(1)[2]['test'])  # pylint: disable=protected-access


def test_digits_train_subset_and_label_noise():
  spec_full = sources.resolve(_cfg(name='digits'))
  full_x, full_y = sources.digits_split(spec_full, 'train')
  cfg = _cfg(name='digits', train_subset=100)
  x, y = sources.digits_split(sources.resolve(cfg), 'train')
  assert len(y) == 100 and data.num_train_examples(cfg) == 100
  assert np.array_equal(np.bincount(y, minlength=10), np.full(10, 10))  # stratified
  np.testing.assert_array_equal(x, full_x[:100])  # the first N
  np.testing.assert_array_equal(y, full_y[:100])

  noisy_cfg = _cfg(name='digits', train_subset=200, label_noise=0.3)
  _, noisy = sources.digits_split(sources.resolve(noisy_cfg), 'train')
  clean = full_y[:200]
  changed = noisy != clean
  assert changed.sum() == 60  # exactly the fraction, and each changed label is another class
  assert ((0 <= noisy) & (noisy < 10)).all()
  _, noisy_again = sources.digits_split(sources.resolve(noisy_cfg), 'train')
  np.testing.assert_array_equal(noisy, noisy_again)
  # The pipeline serves the noisy labels: measured over one epoch of the iterator.
  batches = _take(data.make_train_iterator(_cfg(name='digits', train_subset=200, label_noise=0.3,
                                                augment='none'),
                                           global_batch_size=200, seed=0), 1)
  assert sorted(batches[0]['label'].tolist()) == sorted(noisy.tolist())
  # val / test stay clean.
  _, val_noisy = sources.digits_split(sources.resolve(noisy_cfg), 'val')
  np.testing.assert_array_equal(val_noisy, sources.digits_split(spec_full, 'val')[1])


def test_digits_shift_augmentation():
  plain = _take(data.make_train_iterator(_cfg(name='digits', augment='none'),
                                         global_batch_size=64, seed=0), 1)[0]
  shifted = _take(data.make_train_iterator(_cfg(name='digits'), global_batch_size=64, seed=0),
                  1)[0]
  assert plain['image'].shape == shifted['image'].shape == (64, 8, 8, 1)
  np.testing.assert_array_equal(plain['label'], shifted['label'])
  assert abs(float(plain['image'].mean())) < 0.2 and abs(float(plain['image'].std()) - 1) < 0.2
  # Each augmented image is its plain image moved by at most one pixel (the background value
  # fills in), and the shift is drawn per example.
  mean, std = sources.digits_stats(sources.resolve(_cfg(name='digits')))
  background = np.float32((0.0 - mean) / std)
  padded = np.pad(plain['image'], [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=background)
  shifts = []
  for i in range(64):
    found = [(dy, dx) for dy in range(3) for dx in range(3)
             if np.allclose(padded[i, dy:dy + 8, dx:dx + 8], shifted['image'][i], atol=1e-5)]
    assert found, i
    shifts.append(found[0])
  assert len(set(shifts)) >= 4


# ---------------------------------------------------------------------------------------------
# Errors


def _one_line(excinfo):
  msg = str(excinfo.value)
  assert '\n' not in msg, msg
  return msg


@pytest.mark.parametrize('name,hint', [
    ('cifar10', 'tfds build cifar10'),
    ('imagenet2012', 'downloads/manual'),
])
def test_missing_dataset_is_one_line_error(tmp_path, name, hint):
  cfg = _cfg(name=name, data_dir=str(tmp_path))
  with pytest.raises(data.DataError) as excinfo:
    data.make_train_iterator(cfg, global_batch_size=8, seed=0)
  msg = _one_line(excinfo)
  assert name in msg and str(tmp_path) in msg and hint in msg


def test_missing_eval_dataset_is_one_line_error(tmp_path):
  cfg = _cfg(name='imagenet2012', data_dir=str(tmp_path))
  with pytest.raises(data.DataError) as excinfo:
    data.make_eval_sets(cfg, ['imagenet_real'], global_batch_size=8)
  msg = _one_line(excinfo)
  assert 'imagenet2012_real' in msg and str(tmp_path) in msg and 'downloads/manual' in msg


def test_unknown_names_are_one_line_errors():
  with pytest.raises(data.DataError) as excinfo:
    data.make_train_iterator(_cfg(name='cifar1O'), global_batch_size=8, seed=0)
  msg = _one_line(excinfo)
  assert all(n in msg for n in ('cifar10', 'cifar100', 'imagenet2012', 'digits'))
  with pytest.raises(data.DataError) as excinfo:
    data.make_eval_sets(_cfg(name='digits'), ['imagenet_r'], global_batch_size=8)
  assert 'val' in _one_line(excinfo)
  with pytest.raises(data.DataError) as excinfo:  # checked without touching any data
    data.validate(_cfg(name='cifar10', data_dir='/nonexistent'), ['test', 'imagenet_c'])
  assert 'imagenet_c' in _one_line(excinfo)
  assert data.validate(_cfg(name='imagenet2012'), ['validation', 'imagenet_c']).name == (
      'imagenet2012')
  assert data.image_shape(_cfg(name='digits')) == (8, 8, 1)
  assert data.image_shape(_cfg(name='cifar100')) == (32, 32, 3)
  assert data.image_shape(_cfg(name='imagenet2012', image_size=64)) == (64, 64, 3)
  with pytest.raises(data.DataError) as excinfo:
    data.make_train_iterator(_cfg(name='digits', augment='inception'), global_batch_size=8,
                             seed=0)
  assert 'data.augment' in _one_line(excinfo)


def test_batch_divisibility_errors():
  with pytest.raises(data.DataError) as excinfo:
    data.make_train_iterator(_cfg(name='digits'), global_batch_size=30, seed=0,
                             process_index=0, process_count=4)
  msg = _one_line(excinfo)
  assert '30' in msg and 'process_count=4' in msg and '32' in msg
  with pytest.raises(data.DataError) as excinfo:
    data.check_batch(30, 8, process_count=1)
  msg = _one_line(excinfo)
  assert '30' in msg and '8' in msg and '32' in msg
  with pytest.raises(data.DataError):
    data.check_batch(36, 8, process_count=2)  # 18 per process over 4 local devices
  assert data.check_batch(32, 8, process_count=2) == 16
  with pytest.raises(data.DataError) as excinfo:  # batch larger than the dataset
    data.make_train_iterator(_cfg(name='digits', train_subset=10), global_batch_size=16, seed=0)
  _one_line(excinfo)


def test_to_global_batch():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  local = {'image': np.arange(16 * 2, dtype=np.float32).reshape(16, 2),
           'label': np.arange(16, dtype=np.int32)}
  out = data.to_global_batch(local, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('data')))
  assert out['image'].shape == (16, 2) and out['label'].shape == (16,)
  assert len(out['label'].sharding.device_set) == len(jax.devices())
  np.testing.assert_array_equal(np.asarray(out['image']), local['image'])
  np.testing.assert_array_equal(np.asarray(data.to_global_batch(local, mesh)['label']),
                                local['label'])

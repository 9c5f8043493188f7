"""Tests for data/augment.py: each op is checked against what it must do, not only that it runs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from data import augment as A
from data.mixup import mixup

RNG = np.random.RandomState(0)


def _rand_image(h, w, c=3, lo=0, hi=256, seed=0):
  return np.random.RandomState(seed).randint(lo, hi, (h, w, c)).astype(np.uint8)


def _map_seeds(fn, n, offset=0):
  """Runs fn(seed) for seeds [i, 7], i < n, inside a tf.data map; returns a list of numpy."""
  ds = tf.data.Dataset.range(offset, offset + n).map(lambda i: fn(tf.stack([i, tf.constant(7, tf.int64)])))
  return [np.asarray(x) for x in ds.as_numpy_iterator()]


# ------------------------------------------------------------------------------ cifar_train


def test_cifar_train_is_a_padded_shift_possibly_flipped():
  x = _rand_image(32, 32, lo=1)  # no zeros: padded pixels are recognisable
  padded = np.pad(x, [(4, 4), (4, 4), (0, 0)])
  candidates = {}
  for dy in range(9):
    for dx in range(9):
      window = padded[dy:dy + 32, dx:dx + 32]
      candidates[(dy - 4, dx - 4, False)] = window
      candidates[(dy - 4, dx - 4, True)] = window[:, ::-1]
  outs = _map_seeds(lambda s: A.cifar_train(tf.constant(x), s), 200)
  seen = set()
  for out in outs:
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    match = [k for k, v in candidates.items() if np.array_equal(out, v)]
    assert match, "output is not a shift of the zero-padded image (flipped or not)"
    seen.add(match[0])
  flips = {k[2] for k in seen}
  shifts = {k[:2] for k in seen}
  assert flips == {False, True}
  assert len(shifts) >= 30
  dys = [s[0] for s in shifts]
  dxs = [s[1] for s in shifts]
  assert min(dys) == -4 and max(dys) == 4 and min(dxs) == -4 and max(dxs) == 4


def test_cifar_train_deterministic_by_seed():
  x = tf.constant(_rand_image(32, 32))
  a = A.cifar_train(x, tf.constant([3, 4], tf.int32)).numpy()
  b = A.cifar_train(x, tf.constant([3, 4], tf.int64)).numpy()
  c = A.cifar_train(x, [3, 4]).numpy()
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, c)
  # Same seeds inside a tf.data map (graph mode) give the eager result too.
  np.testing.assert_array_equal(_map_seeds(lambda s: A.cifar_train(x, s), 1, offset=3)[0],
                                A.cifar_train(x, [3, 7]).numpy())
  outs = [A.cifar_train(x, [i, 0]).numpy() for i in range(10)]
  assert len({o.tobytes() for o in outs}) >= 5


# ------------------------------------------------------------------------------ standardize


@pytest.mark.parametrize("mean,std", [(A.CIFAR10_MEAN, A.CIFAR10_STD),
                                      (A.CIFAR100_MEAN, A.CIFAR100_STD)])
def test_standardize_per_channel(mean, std):
  z = RNG.randn(64, 64, 3)
  z = (z - z.mean((0, 1))) / z.std((0, 1))
  x = (np.array(mean) + np.array(std) * z) * 255.0  # per channel: mean*255, std*255
  out = A.standardize(tf.constant(x, tf.float32), mean, std).numpy()
  assert out.dtype == np.float32 and out.shape == x.shape
  np.testing.assert_allclose(out.mean((0, 1)), 0.0, atol=1e-4)
  np.testing.assert_allclose(out.std((0, 1)), 1.0, atol=1e-4)
  np.testing.assert_allclose(out, z, atol=1e-4)
  # uint8 input works too.
  u = A.standardize(tf.constant(_rand_image(4, 4)), mean, std)
  assert u.dtype == tf.float32


def test_cifar_constants_are_the_usual_values():
  np.testing.assert_allclose(A.CIFAR10_MEAN, (0.4914, 0.4822, 0.4465), atol=1e-4)
  np.testing.assert_allclose(A.CIFAR10_STD, (0.2470, 0.2435, 0.2616), atol=1e-4)
  np.testing.assert_allclose(A.CIFAR100_MEAN, (0.5071, 0.4865, 0.4409), atol=1e-4)
  np.testing.assert_allclose(A.CIFAR100_STD, (0.2673, 0.2564, 0.2762), atol=1e-4)


def test_to_minus_one_one_and_random_flip():
  x = np.array([[[0], [255]], [[127], [128]]], np.uint8)
  out = A.to_minus_one_one(tf.constant(x)).numpy()
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[..., 0], [[-1, 1], [127 / 127.5 - 1, 128 / 127.5 - 1]], atol=1e-6)
  img = _rand_image(5, 6)
  outs = _map_seeds(lambda s: A.random_flip(tf.constant(img), s), 40)
  flipped = [np.array_equal(o, img[:, ::-1]) for o in outs]
  assert all(f or np.array_equal(o, img) for f, o in zip(flipped, outs))
  assert 5 < sum(flipped) < 35


# ------------------------------------------------------------------------------ inception crop


def _coord_image(h, w):
  """float/uint8 image with channel 0 = x coordinate, channel 1 = y coordinate."""
  ys, xs = np.mgrid[0:h, 0:w]
  return np.stack([xs, ys, np.zeros_like(xs)], -1)


def _recover_box(out, size):
  """Infers (x0, y0, w, h) of the crop from a bilinear resize of a coordinate image.

  With half-pixel centres, output pixel i samples input x0 + (i + 0.5) * w / size - 0.5,
  exactly (no clamping) in the middle of the output.
  """
  i1, i2 = size // 4, 3 * size // 4
  row, col = out[size // 2, :, 0], out[:, size // 2, 1]
  w = (row[i2] - row[i1]) * size / (i2 - i1)
  h = (col[i2] - col[i1]) * size / (i2 - i1)
  x0 = row[i1] - ((i1 + 0.5) * w / size - 0.5)
  y0 = col[i1] - ((i1 + 0.5) * h / size - 0.5)
  return x0, y0, w, h


def test_inception_crop_area_and_aspect():
  img = tf.constant(_coord_image(256, 256).astype(np.uint8))
  size = 64
  outs = _map_seeds(lambda s: A.inception_crop(img, s, size=size, out_dtype=tf.float32), 300)
  areas, aspects = [], []
  for out in outs:
    assert out.shape == (size, size, 3) and out.dtype == np.float32
    x0, y0, w, h = _recover_box(out, size)
    assert x0 > -0.05 and y0 > -0.05 and x0 + w < 256.05 and y0 + h < 256.05
    assert abs(x0 - round(x0)) < 0.05 and abs(w - round(w)) < 0.05  # integer pixel boxes
    areas.append(w * h / 256**2)
    aspects.append(w / h)
  areas, aspects = np.array(areas), np.array(aspects)
  assert areas.min() >= 0.05 - 0.005 and areas.max() <= 1.0 + 1e-6
  # Spans roughly 5%..100% (boxes near 100% are rare: they must also fit the aspect range).
  assert areas.min() < 0.1 and areas.max() > 0.8
  assert 0.3 < np.median(areas) < 0.75
  assert aspects.min() >= 0.75 - 0.03 and aspects.max() <= 4 / 3 + 0.03
  assert aspects.min() < 0.85 and aspects.max() > 1.2


def test_inception_crop_dtype_and_determinism():
  img = tf.constant(_rand_image(50, 70))
  a = A.inception_crop(img, [1, 2], size=32)
  assert a.shape == (32, 32, 3) and a.dtype == tf.uint8
  np.testing.assert_array_equal(a.numpy(), A.inception_crop(img, [1, 2], size=32).numpy())
  outs = {A.inception_crop(img, [i, 2], size=32).numpy().tobytes() for i in range(10)}
  assert len(outs) >= 8


def _photo_like(h, w, seed):
  """Smooth colour fields plus noise: a JPEG with real chroma detail (not flat blocks)."""
  rng = np.random.RandomState(seed)
  coarse = rng.uniform(0, 255, size=(h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
  smooth = tf.image.resize(coarse[None], (h, w), method="bicubic")[0].numpy()
  return np.clip(smooth + rng.normal(0, 12, size=smooth.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("h,w,quality", [(375, 500, 90), (333, 250, 75), (97, 131, 95)])
def test_decode_and_inception_crop_is_decode_then_crop(h, w, quality):
  """Decoding only the window gives the pixels of decoding the whole JPEG and cropping it: exactly
  without chroma subsampling (4:4:4) and for a PNG; with 4:2:0 only the window's 1-pixel border can
  differ (its chroma is upsampled without the neighbours outside the window), a few levels, so after
  the resize few pixels differ, by little."""
  img = _photo_like(h, w, seed=h)
  for chroma in (False, True):
    jpeg = tf.io.encode_jpeg(img, quality=quality, chroma_downsampling=chroma)
    decoded = tf.io.decode_jpeg(jpeg, channels=3)
    for seed in range(25):
      got = A.decode_and_inception_crop(jpeg, [seed, 7], size=64).numpy().astype(int)
      want = A.inception_crop(decoded, [seed, 7], size=64).numpy().astype(int)
      if not chroma:
        np.testing.assert_array_equal(got, want)
      else:
        diff = np.abs(got - want)
        assert np.mean(diff > 0) < 0.05 and diff.mean() < 0.1, (seed, np.mean(diff > 0), diff.max())
  png = tf.io.encode_png(img)
  got = A.decode_and_inception_crop(png, [3, 7], size=64)
  np.testing.assert_array_equal(got.numpy(), A.inception_crop(img, [3, 7], size=64).numpy())
  assert got.shape == (64, 64, 3) and got.dtype == tf.uint8


def test_decode_and_inception_crop_of_a_grayscale_jpeg_is_rgb():
  gray = tf.io.encode_jpeg(_photo_like(60, 80, seed=1)[..., :1])
  out = A.decode_and_inception_crop(gray, [1, 2], size=32)
  assert out.shape == (32, 32, 3)
  np.testing.assert_array_equal(
      out.numpy(), A.inception_crop(tf.io.decode_jpeg(gray, channels=3), [1, 2], size=32).numpy())


# ------------------------------------------------------------------------------ resize + centre crop


@pytest.mark.parametrize("h,w", [(240, 320), (300, 200)])
def test_resize_center_crop_takes_the_centre(h, w):
  img = tf.constant(_coord_image(h, w).astype(np.float32))
  out = A.resize_center_crop(img, resize=256, crop=224).numpy()
  assert out.shape == (224, 224, 3) and out.dtype == np.float32
  scale = 256 / min(h, w)
  nh, nw = round(h * scale), round(w * scale)
  top, left = (nh - 224) // 2, (nw - 224) // 2
  j = np.arange(224)
  # Output pixel j samples the resized image at (offset + j); map back with half-pixel centres.
  exp_x = (left + j + 0.5) * (w / nw) - 0.5
  exp_y = (top + j + 0.5) * (h / nh) - 0.5
  np.testing.assert_allclose(out[112, :, 0], exp_x, atol=0.05)
  np.testing.assert_allclose(out[:, 112, 1], exp_y, atol=0.05)
  # Centre of the crop = centre of the image.
  assert abs(out[111:113, 111:113, 0].mean() - (w - 1) / 2) < 1.0
  assert abs(out[111:113, 111:113, 1].mean() - (h - 1) / 2) < 1.0
  u = A.resize_center_crop(tf.constant(_rand_image(h, w)))
  assert u.shape == (224, 224, 3) and u.dtype == tf.uint8


# ------------------------------------------------------------------------------ RandAugment

MAG_OPS = ("Rotate", "Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness",
           "ShearX", "ShearY", "TranslateX", "TranslateY", "SolarizeAdd", "Identity")
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _ra(x, seed, **kw):
  return A.randaugment(tf.constant(x), seed, **kw).numpy()


@pytest.mark.parametrize("shape", [(20, 28, 3), (32, 32, 3), (224, 224, 3)])
def test_randaugment_shape_dtype(shape):
  x = _rand_image(*shape)
  for i in range(4 if shape[0] < 100 else 1):
    out = A.randaugment(tf.constant(x), [i, 1], num_layers=2, magnitude=9)
    assert out.dtype == tf.uint8 and tuple(out.shape) == shape
  with pytest.raises(ValueError):
    A.randaugment(tf.constant(x, tf.float32), [0, 1], num_layers=2, magnitude=9)
  with pytest.raises(ValueError):
    A.randaugment(tf.constant(x), [0, 1], num_layers=2, magnitude=9, ops=("Nope",))


def test_randaugment_identity_cases():
  x = _rand_image(17, 23)
  for i in range(5):
    np.testing.assert_array_equal(_ra(x, [i, 0], num_layers=0, magnitude=10), x)
  # "increasing": every magnitude-dependent op is the identity at M=0.
  outs = _map_seeds(lambda s: A.randaugment(tf.constant(x), s, num_layers=3, magnitude=0,
                                            ops=MAG_OPS, mapping="increasing"), 40)
  for out in outs:
    np.testing.assert_array_equal(out, x)
  # "original" (TF reference table) at M=0: geometric ops and SolarizeAdd are identities ...
  for i in range(20):
    np.testing.assert_array_equal(
        _ra(x, [i, 0], num_layers=2, magnitude=0, ops=GEOMETRIC + ("SolarizeAdd",)), x)
  # ... but Posterize keeps 0 bits, Solarize inverts everything, enhance factor is 0.1.
  np.testing.assert_array_equal(_ra(x, [0, 0], num_layers=1, magnitude=0, ops=("Posterize",)), 0)
  np.testing.assert_array_equal(_ra(x, [0, 0], num_layers=1, magnitude=0, ops=("Solarize",)),
                                255 - x)
  np.testing.assert_allclose(_ra(x, [0, 0], num_layers=1, magnitude=0, ops=("Brightness",)),
                             np.round(0.1 * x), atol=1)


def _mean_change(x, magnitude, ops, mapping, n=40):
  outs = _map_seeds(lambda s: A.randaugment(tf.constant(x), s, num_layers=1, magnitude=magnitude,
                                            ops=ops, mapping=mapping), n)
  return np.mean([np.abs(o.astype(float) - x).mean() for o in outs])


def test_randaugment_stronger_with_magnitude():
  # A smooth image, so that a larger displacement also means a larger pixel change.
  ys, xs = np.mgrid[0:32, 0:32]
  x = np.stack([xs * 7, ys * 7, (xs + ys) * 3 + 20], -1).astype(np.uint8)
  inc = [_mean_change(x, m, A.RANDAUGMENT_OPS, "increasing") for m in (1, 5, 10)]
  assert inc[0] < inc[1] < inc[2], inc
  geo = [_mean_change(x, m, GEOMETRIC, "original") for m in (1, 5, 10, 15)]
  assert geo[0] < geo[1] < geo[2] < geo[3], geo


def test_randaugment_invert_posterize_solarize():
  x = _rand_image(16, 16)
  np.testing.assert_array_equal(_ra(x, [1, 2], num_layers=1, magnitude=7, ops=("Invert",)),
                                255 - x)
  # Two layers of Invert: back to the input.
  np.testing.assert_array_equal(_ra(x, [1, 2], num_layers=2, magnitude=7, ops=("Invert",)), x)
  # Posterize: original M=5 -> floor(4 * 0.5) = 2 bits; increasing M=5 -> 8 - 2 = 6 bits.
  np.testing.assert_array_equal(_ra(x, [0, 0], num_layers=1, magnitude=5, ops=("Posterize",)),
                                x & 0b11000000)
  np.testing.assert_array_equal(_ra(x, [0, 0], num_layers=1, magnitude=5, ops=("Posterize",),
                                    mapping="increasing"), x & 0b11111100)
  # Solarize: original M=3 -> threshold floor(0.3 * 256) = 76; increasing -> 256 - 76 = 180.
  for mapping, thr in (("original", 76), ("increasing", 180)):
    out = _ra(x, [0, 0], num_layers=1, magnitude=3, ops=("Solarize",), mapping=mapping)
    np.testing.assert_array_equal(out, np.where(x < thr, x, 255 - x))
  # SolarizeAdd M=10: add 110 to values < 128, saturating at 255.
  out = _ra(x, [0, 0], num_layers=1, magnitude=10, ops=("SolarizeAdd",))
  np.testing.assert_array_equal(out, np.where(x < 128, np.minimum(x.astype(int) + 110, 255), x))


def _shift(x, dy, dx, fill=128):
  out = np.full_like(x, fill)
  h, w = x.shape[:2]
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
      x[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
  return out


def test_randaugment_translate_shifts_by_expected_pixels():
  x = _rand_image(20, 32)
  signs = set()
  for i in range(12):
    # TranslateX at M=5 on width 32: round(100/224 * 32 * 0.5) = 7 px, either direction.
    out = _ra(x, [i, 3], num_layers=1, magnitude=5, ops=("TranslateX",))
    if np.array_equal(out, _shift(x, 0, 7)):
      signs.add(1)
    else:
      np.testing.assert_array_equal(out, _shift(x, 0, -7))
      signs.add(-1)
    # TranslateY at M=10 on height 20: round(100/224 * 20) = 9 px.
    out = _ra(x, [i, 3], num_layers=1, magnitude=10, ops=("TranslateY",))
    assert np.array_equal(out, _shift(x, 9, 0)) or np.array_equal(out, _shift(x, -9, 0))
  assert signs == {1, -1}


def _numpy_warp(x, inv_map, fill=128):
  """Nearest-neighbour warp: output (x, y) <- input inv_map(x, y), rounding half away from 0."""
  h, w = x.shape[:2]
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
  sx, sy = inv_map(xs, ys)
  sx, sy = np.sign(sx) * np.floor(np.abs(sx) + 0.5), np.sign(sy) * np.floor(np.abs(sy) + 0.5)
  inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
  out = np.full_like(x, fill)
  out[inside] = x[sy[inside].astype(int), sx[inside].astype(int)]
  return out


def test_randaugment_rotate_and_shear():
  x = _rand_image(21, 21)
  np.testing.assert_array_equal(_ra(x, [0, 0], num_layers=1, magnitude=0, ops=("Rotate",)), x)
  c = 10.0
  for i in range(4):
    out = _ra(x, [i, 0], num_layers=1, magnitude=10, ops=("Rotate",))  # +-30 degrees
    assert out[10, 10].tolist() == x[10, 10].tolist()  # the centre stays put
    best = 1.0
    for deg in (30.0, -30.0):
      t = np.deg2rad(deg)
      ref = _numpy_warp(x, lambda u, v: (np.cos(t) * (u - c) - np.sin(t) * (v - c) + c,
                                         np.sin(t) * (u - c) + np.cos(t) * (v - c) + c))
      best = min(best, np.mean(np.any(out != ref, -1)))
    assert best < 0.02
    out = _ra(x, [i, 0], num_layers=1, magnitude=10, ops=("ShearX",))  # +-0.3
    best = min(np.mean(np.any(out != _numpy_warp(x, lambda u, v, s=s: (u + s * v, v)), -1))
               for s in (0.3, -0.3))
    assert best < 0.02
  # Positive angles rotate counter-clockwise, like np.rot90.
  np.testing.assert_array_equal(A._rotate(tf.constant(x), 90.0).numpy(), np.rot90(x))


def test_randaugment_colour_ops_match_pil():
  Image = pytest.importorskip("PIL.Image")
  ImageOps = pytest.importorskip("PIL.ImageOps")
  ImageEnhance = pytest.importorskip("PIL.ImageEnhance")
  x = (_rand_image(23, 19, hi=180) + np.array([30, 10, 50], np.uint8)).astype(np.uint8)
  im = Image.fromarray(x)
  np.testing.assert_array_equal(_ra(x, [0, 0], num_layers=1, magnitude=3, ops=("Equalize",)),
                                np.asarray(ImageOps.equalize(im)))
  ac = _ra(x, [0, 0], num_layers=1, magnitude=3, ops=("AutoContrast",))
  np.testing.assert_array_equal(ac, np.asarray(ImageOps.autocontrast(im)))
  assert (ac.min((0, 1)) == 0).all() and (ac.max((0, 1)) == 255).all()
  enhancers = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
               "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}
  for name, enh in enhancers.items():
    # original M=7 -> factor 0.1 + 1.8 * 0.7 = 1.36.
    out = _ra(x, [0, 0], num_layers=1, magnitude=7, ops=(name,)).astype(int)
    assert np.abs(out - np.asarray(enh(im).enhance(1.36), int)).max() <= 2, name
    # increasing M=7 -> factor 1 +- 0.63.
    out = _ra(x, [0, 0], num_layers=1, magnitude=7, ops=(name,), mapping="increasing").astype(int)
    err = min(np.abs(out - np.asarray(enh(im).enhance(f), int)).max() for f in (0.37, 1.63))
    assert err <= 2, name


def test_randaugment_determinism_and_dataset_map():
  x = _rand_image(24, 24)
  kw = dict(num_layers=2, magnitude=9)
  a = _ra(x, tf.constant([5, 6], tf.int64), **kw)
  np.testing.assert_array_equal(a, _ra(x, tf.constant([5, 6], tf.int64), **kw))
  np.testing.assert_array_equal(a, _ra(x, tf.constant([5, 6], tf.int32), **kw))
  eager = [_ra(x, [i, 7], **kw) for i in range(16)]
  assert len({e.tobytes() for e in eager}) >= 12
  # Per-element seeds inside tf.data.Dataset.map: reproducible and equal to the eager results.
  images = np.stack([x] * 16)
  seeds = np.stack([np.arange(16), np.full(16, 7)], 1).astype(np.int64)
  ds = tf.data.Dataset.from_tensor_slices((images, seeds)).map(
      lambda im, s: A.randaugment(im, s, **kw), num_parallel_calls=2, deterministic=True)
  run1, run2 = list(ds.as_numpy_iterator()), list(ds.as_numpy_iterator())
  for e, r1, r2 in zip(eager, run1, run2):
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(r1, e)


def test_randaugment_op_choice_is_uniform():
  x = _rand_image(8, 8)
  outs = _map_seeds(lambda s: A.randaugment(tf.constant(x), s, num_layers=1, magnitude=5,
                                            ops=("Invert", "Identity", "Posterize")), 300)
  inverted = np.mean([np.array_equal(o, 255 - x) for o in outs])
  same = np.mean([np.array_equal(o, x) for o in outs])
  poster = np.mean([np.array_equal(o, x & 0b11000000) for o in outs])
  assert inverted + same + poster == 1.0
  for frac in (inverted, same, poster):
    assert 0.23 < frac < 0.43


# ------------------------------------------------------------------------------ mixup


def _batch(b=8, k=8):
  images = jax.random.normal(jax.random.PRNGKey(1), (b, 4, 4, 3))
  labels = jax.nn.one_hot(jnp.arange(b) % k, k)  # neighbours have different classes
  return images, labels


def test_mixup_same_ratio_for_images_and_labels():
  images, labels = _batch()
  mi, ml = mixup(jax.random.PRNGKey(0), images, labels, alpha=0.4)
  ml = np.asarray(ml)
  a = ml[0, 0]
  assert 0.0 < a < 1.0
  # Row i mixes class i (weight a) with class i-1 (weight 1-a).
  np.testing.assert_allclose(np.diag(ml), a, rtol=1e-6)
  np.testing.assert_allclose(ml[np.arange(8), np.arange(8) - 1], 1 - a, rtol=1e-5)
  np.testing.assert_allclose(ml.sum(1), 1.0, rtol=1e-6)
  expected = a * np.asarray(images) + (1 - a) * np.roll(np.asarray(images), 1, axis=0)
  np.testing.assert_allclose(np.asarray(mi), expected, rtol=1e-5, atol=1e-6)


def test_mixup_alpha_zero_and_keys():
  images, labels = _batch()
  mi, ml = mixup(jax.random.PRNGKey(0), images, labels, alpha=0.0)
  np.testing.assert_array_equal(mi, images)
  np.testing.assert_array_equal(ml, labels)
  ratios = [float(mixup(jax.random.PRNGKey(i), images, labels, alpha=0.2)[1][0, 0])
            for i in range(10)]
  assert len(set(ratios)) == 10
  _, ml = mixup(jax.random.PRNGKey(3), images, labels, alpha=0.2, dominant_first=True)
  assert ml[0, 0] >= 0.5


def test_mixup_jit_and_beta_distribution():
  images, labels = _batch()
  f = jax.jit(mixup, static_argnames=("alpha",))
  key = jax.random.PRNGKey(5)
  for got, want in zip(f(key, images, labels, alpha=0.5), mixup(key, images, labels, alpha=0.5)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  ratio = jax.vmap(lambda k: mixup(k, images, labels, alpha=1.0)[1][0, 0])(keys)
  assert abs(float(ratio.mean()) - 0.5) < 0.02 and abs(float(ratio.var()) - 1 / 12) < 0.006
  ratio = jax.vmap(lambda k: mixup(k, images, labels, alpha=0.2)[1][0, 0])(keys)
  assert float(ratio.var()) > 0.15  # Beta(0.2, 0.2) piles up near 0 and 1

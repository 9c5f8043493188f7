"""Image augmentations for the rsam input pipelines (TF, per image); mixup, on device, is data/mixup.py.

Every TF function works on a single HWC image and can be used inside `tf.data.Dataset.map`.
All randomness is stateless: a function takes `seed`, an int32/int64 tensor of shape [2] (or a
pair of Python ints; it is cast to int64, so [a, b] gives the same stream in either dtype), and
the same image with the same seed always gives the same output (so an input pipeline can be
replayed or resumed from any step). Sub-seeds come from `tf.random.experimental.stateless_split`.

Recipes (see ../shared/reference/datasets.md):
- CIFAR "basic": 4-pixel zero padding, random crop back to 32x32, horizontal flip, per-channel
  standardisation (He et al. 2016; the SAM / RSAM CIFAR setup).
- Inception crop (Szegedy et al. 2015, as in big_vision `inception_crop`): area 5-100%, aspect
  3/4-4/3, bilinear resize; evaluation resizes the shorter side to 256 and centre-crops 224.
- RandAugment (Cubuk et al. 2019, https://arxiv.org/abs/1909.13719): the op list and level table
  of the TF reference implementation (tensorflow/tpu efficientnet `autoaugment.py`, forked in
  big_vision `pp/autoaugment.py`), re-written here with stateless seeds and
  `tf.raw_ops.ImageProjectiveTransformV3` in place of tensorflow-addons.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import tensorflow as tf

# Per-channel mean / std of the training split in [0, 1] units (population std over all pixels),
# the values used by the SAM code base and most CIFAR recipes.
CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)
CIFAR100_MEAN = (0.50707516, 0.48654887, 0.44091784)
CIFAR100_STD = (0.26733429, 0.25643846, 0.27615047)


# --------------------------------------------------------------------------------------------
# Seeds


def _as_seed(seed) -> tf.Tensor:
  """Returns `seed` as an int64 tensor of shape [2] (the form stateless ops take).

  Always int64: `stateless_split` gives different streams for the same int32 and int64 seed
  values, so canonicalising makes [a, b] mean the same thing whatever its dtype.
  """
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  seed.shape.assert_is_compatible_with([2])
  return seed


def _split(seed, num: int) -> list[tf.Tensor]:
  """Splits a stateless seed into `num` independent seeds."""
  return tf.unstack(tf.random.experimental.stateless_split(_as_seed(seed), num=num), num=num)


# --------------------------------------------------------------------------------------------
# Simple ops


def _cast_like(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """Casts a float image to `dtype`, rounding and clipping to [0, 255] for integer dtypes."""
  if dtype.is_integer:
    image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
  return tf.cast(image, dtype)


def cifar_train(image, seed, *, pad: int = 4) -> tf.Tensor:
  """CIFAR "basic" train augmentation: zero-pad `pad` pixels per side, random crop back to the
  input size, random horizontal flip (p=0.5). Keeps shape and dtype (uint8 in, uint8 out)."""
  image = tf.convert_to_tensor(image)
  crop_seed, flip_seed = _split(seed, 2)
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  out = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
  out = tf.image.stateless_random_flip_left_right(out, seed=flip_seed)
  out.set_shape(image.shape)
  return out


def standardize(image, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """Per-channel standardisation: float32 `(image / 255 - mean) / std` (mean, std in [0, 1])."""
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def to_minus_one_one(image) -> tf.Tensor:
  """Maps uint8 [0, 255] to float32 [-1, 1] (the big_vision `value_range(-1, 1)` convention)."""
  return tf.cast(image, tf.float32) / 127.5 - 1.0


def random_flip(image, seed) -> tf.Tensor:
  """Random horizontal (left-right) flip with probability 0.5."""
  return tf.image.stateless_random_flip_left_right(image, seed=_as_seed(seed))


def decode_rgb(encoded) -> tf.Tensor:
  """An encoded image (JPEG, PNG, GIF or BMP; grayscale or colour) as uint8 HxWx3."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def inception_box(image_shape, seed, *, area_range=(0.05, 1.0), aspect_ratio_range=(3 / 4, 4 / 3)):
  """(begin, size) of an Inception crop box of an image of shape `image_shape` [H, W, C], for `tf.slice`.

  Covers `area_range` of the image with width/height in `aspect_ratio_range`, sampled by
  `tf.image.stateless_sample_distorted_bounding_box` (min_object_covered=0; the whole image when no
  box fits in 100 attempts). It depends on the shape and the seed only, so a box can be drawn before
  the image is decoded (decode_and_inception_crop).
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, tf.zeros([1, 0, 4], tf.float32), seed=_as_seed(seed),
      min_object_covered=0.0, aspect_ratio_range=aspect_ratio_range, area_range=area_range,
      max_attempts=100, use_image_if_no_bounding_boxes=True)
  return begin, size


def _resize_crop(crop, size, out_dtype, antialias):
  out = tf.image.resize(crop, [size, size], method="bilinear", antialias=antialias)
  return _cast_like(out, tf.as_dtype(out_dtype))


def inception_crop(image, seed, *, size: int = 224, area_range=(0.05, 1.0),
                   aspect_ratio_range=(3 / 4, 4 / 3), out_dtype=tf.uint8,
                   antialias: bool = False) -> tf.Tensor:
  """Inception-style random-resized crop (big_vision `inception_crop`): the box of `inception_box`,
  resized bilinearly to `size` x `size`. Returns `out_dtype`: uint8 (rounded; default) or float32 in
  [0, 255]. No flip: see random_flip.
  """
  image = tf.convert_to_tensor(image)
  begin, crop_size = inception_box(tf.shape(image), seed, area_range=area_range,
                                   aspect_ratio_range=aspect_ratio_range)
  crop = tf.slice(image, begin, crop_size)
  crop.set_shape([None, None, image.shape[-1]])
  return _resize_crop(crop, size, out_dtype, antialias)


def decode_and_inception_crop(encoded, seed, *, size: int = 224, area_range=(0.05, 1.0),
                              aspect_ratio_range=(3 / 4, 4 / 3), out_dtype=tf.uint8,
                              antialias: bool = False) -> tf.Tensor:
  """`inception_crop` of the RGB image encoded in `encoded` (same box), decoding only the box.

  For a JPEG the box is drawn from the header's shape and `tf.image.decode_and_crop_jpeg` decodes just
  that window, about half the image on average (as big_vision and the TF reference pipelines do). The
  pixels are those of the whole decoded image except, for chroma-subsampled (4:2:0) JPEGs, on the
  window's 1-pixel border, where the colour is upsampled without the neighbours outside the window (a
  few levels). Any other format is decoded whole and cropped.
  """
  def jpeg():
    shape = tf.concat([tf.image.extract_jpeg_shape(encoded)[:2], [3]], axis=0)
    begin, crop_size = inception_box(shape, seed, area_range=area_range,
                                     aspect_ratio_range=aspect_ratio_range)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    return _resize_crop(crop, size, out_dtype, antialias)

  def other():
    return inception_crop(decode_rgb(encoded), seed, size=size, area_range=area_range,
                          aspect_ratio_range=aspect_ratio_range, out_dtype=out_dtype,
                          antialias=antialias)

  out = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  out.set_shape([size, size, 3])
  return out


def resize_center_crop(image, *, resize: int = 256, crop: int = 224,
                       antialias: bool = True) -> tf.Tensor:
  """ImageNet evaluation: resize the shorter side to `resize` (bilinear, aspect kept, sides
  rounded to the nearest pixel), then take the central `crop` x `crop` window (offsets rounded
  down). Keeps the input dtype (integer images are rounded)."""
  image = tf.convert_to_tensor(image)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize / tf.reduce_min(hw)
  new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), resize)
  out = tf.image.resize(image, new_hw, method="bilinear", antialias=antialias)
  top, left = (new_hw[0] - crop) // 2, (new_hw[1] - crop) // 2
  out = tf.slice(out, [top, left, 0], [crop, crop, -1])
  out.set_shape([crop, crop, image.shape[-1]])
  return _cast_like(out, image.dtype)


def resize_square_center_crop(image, *, resize: int = 256, crop: int = 224,
                              out_dtype=tf.float32) -> tf.Tensor:
  """ImageNet evaluation of the official R-SAM / vit_jax code (`input_pipeline.py`): resize to
  `resize` x `resize` with `tf.image.resize` (bilinear, no antialiasing: its defaults; the aspect ratio
  is NOT kept), then the central `crop` x `crop` window at offset (resize - crop) // 2, the window
  `tf.image.central_crop(image, crop / resize)` takes when resize - crop is even (256 -> 224). Float32
  output is not rounded, as the official pipeline feeds it to the model; an integer `out_dtype` rounds."""
  out = tf.image.resize(tf.convert_to_tensor(image), [resize, resize], method="bilinear",
                        antialias=False)
  top = (resize - crop) // 2
  out = out[top:top + crop, top:top + crop]
  return _cast_like(out, tf.as_dtype(out_dtype))


# --------------------------------------------------------------------------------------------
# RandAugment ops: uint8 HxWxC in, uint8 HxWxC out (colour ops want C == 3).


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ImageEnhance: `degenerate + factor * (image - degenerate)`, clipped, as uint8.
  factor 1 gives `image`, 0 gives `degenerate`, > 1 extrapolates."""
  d = tf.cast(degenerate, tf.float32)
  out = d + tf.cast(factor, tf.float32) * (tf.cast(image, tf.float32) - d)
  return _cast_like(out, tf.uint8)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """PIL "L" conversion (ITU-R 601-2 luma), float32 HxWx1; channel mean when C != 3."""
  x = tf.cast(image, tf.float32)
  if image.shape[-1] == 3:
    return tf.round(tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), -1, keepdims=True))
  return tf.round(tf.reduce_mean(x, -1, keepdims=True))


def _autocontrast(image):
  """Per channel, stretch [min, max] linearly to [0, 255] (PIL ImageOps.autocontrast, cutoff 0);
  constant channels are left alone."""
  x = tf.cast(image, tf.float32)
  lo = tf.reduce_min(x, axis=[0, 1])
  hi = tf.reduce_max(x, axis=[0, 1])
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  out = tf.clip_by_value(tf.floor((x - lo) * scale), 0.0, 255.0)
  return tf.cast(tf.where(hi > lo, out, x), tf.uint8)


def _equalize(image):
  """Per-channel histogram equalisation with PIL's ImageOps.equalize lookup table."""
  c = tf.shape(image)[-1]
  x = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, c]))  # [C, N]
  hist = tf.math.bincount(x, minlength=256, maxlength=256, axis=-1)  # [C, 256]
  # PIL: step = (number of pixels - count of the last non-empty bin) // 255.
  last = tf.gather(hist, tf.reduce_max(x, axis=1), batch_dims=1)
  step = (tf.shape(x)[1] - last) // 255  # [C]
  safe = tf.maximum(step, 1)[:, None]
  lut = (tf.cumsum(hist, axis=1) + safe // 2) // safe
  lut = tf.clip_by_value(tf.concat([tf.zeros_like(lut[:, :1]), lut[:, :-1]], 1), 0, 255)
  out = tf.where(step[:, None] > 0, tf.gather(lut, x, batch_dims=1), x)
  return tf.reshape(tf.cast(tf.transpose(out), tf.uint8), tf.shape(image))


def _invert(image):
  """255 - x."""
  return 255 - image


def _posterize(image, bits):
  """Keep the `bits` most significant bits of each value (0 <= bits <= 8)."""
  shift = 8 - tf.cast(bits, tf.int32)
  x = tf.cast(image, tf.int32)
  return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(x, shift), shift), tf.uint8)


def _solarize(image, threshold):
  """Invert the values >= threshold (threshold 0 inverts all, >= 256 none)."""
  x = tf.cast(image, tf.int32)
  return tf.cast(tf.where(x < tf.cast(threshold, tf.int32), x, 255 - x), tf.uint8)


def _solarize_add(image, addition, threshold=128):
  """Add `addition` (clipped to [0, 255]) to the values below `threshold`."""
  x = tf.cast(image, tf.int32)
  added = tf.clip_by_value(x + tf.cast(addition, tf.int32), 0, 255)
  return tf.cast(tf.where(x < threshold, added, x), tf.uint8)


def _color(image, factor):
  """PIL ImageEnhance.Color: blend with the greyscale image."""
  gray = tf.broadcast_to(_grayscale(image), tf.shape(image))
  return _blend(gray, image, factor)


def _contrast(image, factor):
  """PIL ImageEnhance.Contrast: blend with a constant image at the mean grey level.
  (The TF reference uses pixel-count / 256 as the "mean", a known bug; this uses the mean.)"""
  mean = tf.floor(tf.reduce_mean(_grayscale(image)) + 0.5)
  return _blend(tf.fill(tf.shape(image), mean), image, factor)


def _brightness(image, factor):
  """PIL ImageEnhance.Brightness: blend with black."""
  return _blend(tf.zeros_like(image), image, factor)


def _sharpness(image, factor):
  """PIL ImageEnhance.Sharpness: blend with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]]/13),
  whose border pixels are the original ones."""
  x = tf.cast(image, tf.float32)
  c = image.shape[-1] if image.shape[-1] is not None else tf.shape(image)[-1]
  k = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
  kernel = tf.tile(k[:, :, None, None], [1, 1, c, 1])
  smooth = tf.round(tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "SAME")[0])
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  ys, xs = tf.range(h)[:, None, None], tf.range(w)[None, :, None]
  interior = (ys > 0) & (ys < h - 1) & (xs > 0) & (xs < w - 1)
  return _blend(tf.where(interior, smooth, x), image, factor)


def _project(image, transform, fill_value):
  """Apply the projective map `transform` (8 numbers [a0, a1, a2, b0, b1, b2, c0, c1], mapping
  an OUTPUT pixel (x, y) to the INPUT point ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k),
  k = c0 x + c1 y + 1) with nearest-neighbour sampling; outside pixels get `fill_value`."""
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None],
      transforms=tf.reshape(tf.cast(tf.stack(transform), tf.float32), [1, 8]),
      output_shape=tf.shape(image)[:2],
      fill_value=tf.cast(fill_value, tf.float32),
      interpolation="NEAREST", fill_mode="CONSTANT")
  return out[0]


def _rotate(image, degrees, fill_value=128):
  """Rotate about the image centre by `degrees` (positive = counter-clockwise on screen)."""
  t = degrees * (math.pi / 180.0)
  cos, sin = tf.cos(t), tf.sin(t)
  h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  # Counter-clockwise on screen (y down) maps p to R (p - c) + c with R = [[cos, sin],
  # [-sin, cos]]; an output pixel therefore samples the input at R^-1 (q - c) + c.
  return _project(image, [cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0], fill_value)


def _shear_x(image, shear, fill_value=128):
  """PIL shear along x about the top-left corner: output (x, y) <- input (x + shear * y, y)."""
  return _project(image, [1.0, shear, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], fill_value)


def _shear_y(image, shear, fill_value=128):
  """PIL shear along y about the top-left corner: output (x, y) <- input (x, y + shear * x)."""
  return _project(image, [1.0, 0.0, 0.0, shear, 1.0, 0.0, 0.0, 0.0], fill_value)


def _translate(image, dx, dy, fill_value=128):
  """Move the content by (dx, dy) pixels (positive = right / down)."""
  return _project(image, [1.0, 0.0, -dx, 0.0, 1.0, -dy, 0.0, 0.0], fill_value)


# Default RandAugment op list: the TF reference / big_vision list without Cutout. The paper's
# own list is this one with "Identity" instead of "Invert" and "SolarizeAdd".
RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
                   "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
                   "TranslateX", "TranslateY", "SolarizeAdd")
_ALL_OPS = RANDAUGMENT_OPS + ("Identity",)
_MAX_LEVEL = 10.0


def _make_op(name: str, mapping: str, translate_frac: float, fill_value):
  """Returns fn(image, r, negate) applying op `name` at relative level r = magnitude / 10;
  `negate` (bool tensor) is the random sign of the signed ops."""
  increasing = mapping == "increasing"

  def signed(v, negate):
    return tf.where(negate, -v, v)

  def enhance(op):
    def fn(image, r, negate):
      if increasing:
        factor = tf.maximum(1.0 + signed(0.9 * r, negate), 0.0)
      else:
        factor = 0.1 + 1.8 * r
      return op(image, factor)
    return fn

  def posterize(image, r, negate):
    del negate
    if increasing:
      bits = tf.clip_by_value(8.0 - tf.floor(4.0 * r), 1.0, 8.0)
    else:
      bits = tf.clip_by_value(tf.floor(4.0 * r), 0.0, 8.0)
    return _posterize(image, bits)

  def solarize(image, r, negate):
    del negate
    if increasing:
      threshold = tf.maximum(256.0 - tf.floor(256.0 * r), 0.0)
    else:
      threshold = tf.minimum(tf.floor(256.0 * r), 256.0)
    return _solarize(image, threshold)

  def translate(axis):
    def fn(image, r, negate):
      size = tf.cast(tf.shape(image)[1 - axis], tf.float32)
      pixels = signed(tf.round(translate_frac * size * r), negate)
      dx, dy = (pixels, 0.0) if axis == 0 else (0.0, pixels)
      return _translate(image, dx, dy, fill_value)
    return fn

  ops = {
      "Identity": lambda image, r, negate: image,
      "AutoContrast": lambda image, r, negate: _autocontrast(image),
      "Equalize": lambda image, r, negate: _equalize(image),
      "Invert": lambda image, r, negate: _invert(image),
      "Rotate": lambda image, r, negate: _rotate(image, signed(30.0 * r, negate), fill_value),
      "Posterize": posterize,
      "Solarize": solarize,
      "SolarizeAdd": lambda image, r, negate: _solarize_add(image, tf.floor(110.0 * r)),
      "Color": enhance(_color),
      "Contrast": enhance(_contrast),
      "Brightness": enhance(_brightness),
      "Sharpness": enhance(_sharpness),
      "ShearX": lambda image, r, negate: _shear_x(image, signed(0.3 * r, negate), fill_value),
      "ShearY": lambda image, r, negate: _shear_y(image, signed(0.3 * r, negate), fill_value),
      "TranslateX": translate(0),
      "TranslateY": translate(1),
  }
  return ops[name]


def randaugment(image, seed, *, num_layers: int, magnitude: float,
                ops: Sequence[str] = RANDAUGMENT_OPS, mapping: str = "original",
                translate_frac: float = 100 / 224, fill_value: int = 128) -> tf.Tensor:
  """RandAugment(N=num_layers, M=magnitude) on one uint8 HxWxC image (Cubuk et al. 2019).

  Each of the `num_layers` layers picks one op of `ops` uniformly at random (stateless) and
  always applies it at level M (as in the TF reference, no per-op probability). Signed ops
  (Rotate, ShearX/Y, TranslateX/Y, and the enhance ops under "increasing") flip their sign
  with p=0.5. Geometric ops sample nearest-neighbour via ImageProjectiveTransformV3 and fill
  with `fill_value` (grey 128).

  Magnitude mapping, with r = M / 10 (the "usual" scale, max level 10; M > 10 continues the
  same lines, as big_vision configs such as randaug(2, 15) and timm's increasing ops do):
    Rotate       +-30 r degrees            ShearX/Y    +-0.3 r
    TranslateX/Y +-round(translate_frac * width/height * r) pixels; translate_frac = 100/224
                 reproduces the reference's 100 px at 224 px and scales with the image size
    SolarizeAdd  add floor(110 r) to values < 128
    mapping="original" (TF reference / big_vision level table):
      Posterize bits floor(4 r) (clipped to [0, 8]; M=0 gives a black image),
      Solarize threshold floor(256 r) (M=0 inverts everything, M >= 10 is a no-op),
      Color/Contrast/Brightness/Sharpness factor 0.1 + 1.8 r (1.0 = identity at M=5).
    mapping="increasing" (timm-style: every op is the identity at M=0, stronger with M):
      Posterize bits 8 - floor(4 r) (clipped to [1, 8]), Solarize threshold 256 - floor(256 r),
      enhance factor 1 +- 0.9 r (clipped at 0).
  AutoContrast, Equalize, Invert and Identity ignore M.

  Args:
    image: uint8 HxWxC (C == 3 for the colour ops), any H, W.
    seed: int32/int64 [2] stateless seed.
    num_layers: N, the number of ops applied in sequence (0: image returned unchanged).
    magnitude: M (Python number or scalar tensor).
    ops: op names to pick from (any of RANDAUGMENT_OPS and "Identity").
    mapping: "original" or "increasing", see above.
  Returns:
    uint8 image of the same shape.
  """
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise ValueError(f"randaugment wants a uint8 image, got {image.dtype}")
  if mapping not in ("original", "increasing"):
    raise ValueError(f"unknown RandAugment mapping {mapping!r}")
  unknown = [name for name in ops if name not in _ALL_OPS]
  if unknown or not ops:
    raise ValueError(f"unknown RandAugment ops {unknown} (known: {_ALL_OPS})")
  fns = [_make_op(name, mapping, translate_frac, fill_value) for name in ops]
  r = tf.cast(magnitude, tf.float32) / _MAX_LEVEL
  if num_layers <= 0:
    return image
  for layer_seed in _split(seed, num_layers):
    op_seed, sign_seed = _split(layer_seed, 2)
    index = tf.random.stateless_uniform([], op_seed, minval=0, maxval=len(fns), dtype=tf.int32)
    negate = tf.random.stateless_uniform([], sign_seed) < 0.5
    out = tf.switch_case(index, [functools.partial(fn, image, r, negate) for fn in fns])
    out.set_shape(image.shape)
    image = out
  return image

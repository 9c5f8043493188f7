r"""README main job: a small ResNet trained with R-SAM on real handwritten digits, in a few minutes on CPU.

    python train.py --config configs/quickstart.py --workdir /tmp/rsam_quickstart

Data: scikit-learn's 8x8 digits (1,797 images, ships inside the package, no download), the fixed
stratified train/val/test split of data/sources.py. R-SAM's ρ, λ, γ for small CNNs are not published:
ρ = 0.05 constant (SAM's CIFAR-10 value), λ = 2 and γ0 = 5e-4 growing 5x (the official ViT values).
The val split is evaluated every 50 steps, so TensorBoard and wandb draw a curve (about 1 s each on CPU);
test only at the end.
"""
from configs.common import get_base_config


def get_config():
  c = get_base_config('rsam')
  c.data.name = 'digits'
  c.model.name = 'resnet_tiny'
  c.updater.rho_schedule = 'constant'
  c.updater.rho = 0.05
  c.optimizer.lr = 0.05
  c.batch_size = 64
  c.num_epochs = 30.0
  c.eval_sets = ('val', 'test')
  c.eval_intervals = {'val': 50}  # a curve on the dashboards; test stays untouched until the end
  c.eval_batch_size = 256
  c.log_every_steps = 50
  c.checkpoint_every_steps = 200
  return c

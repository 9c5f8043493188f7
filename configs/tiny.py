r"""A seconds-long run for tests and smoke checks: digits, the tiny ResNet, a few steps.

    python train.py --config configs/tiny.py:updater=rsam --workdir /tmp/rsam_tiny

The argument picks the updater (any name in rsam.training.factory.NAMES); ρ is constant so every updater runs here.
"""
from configs.common import get_base_config

def get_config(updater: str = 'rsam'):
  c = get_base_config(updater or 'rsam')
  c.data.name = 'digits'
  c.model.name = 'resnet_tiny'
  if 'rho_schedule' in c.updater:
    c.updater.rho_schedule = 'constant'
  c.optimizer.lr = 0.05
  c.batch_size = 32
  c.total_steps = 12
  c.eval_sets = ('test',)
  c.eval_batch_size = 64
  c.log_every_steps = 4
  c.checkpoint_every_steps = 4
  return c

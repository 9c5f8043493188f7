"""Defaults shared by every config; family and headline files override only what differs.

Every field is documented where it is read: data fields in data/sources.py, optimizer and schedule in
rsam/training/optim.py, updater fields in rsam/training/factory.py, the rest in rsam/training/config_check.py.
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_base_config(updater: str = 'sam') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Fields that default to None are typed placeholders so the command line can set them
  # (ml_collections cannot infer the type of a plain None), e.g. --config.data.data_dir=gs://...
  c.data = ml_collections.ConfigDict({'name': 'cifar10', 'data_dir': placeholder(str),
                                      'num_train_examples': placeholder(int)})
  c.model = ml_collections.ConfigDict({'name': 'resnet18', 'overrides': {}})
  from rsam.training import factory  # imports JAX: only once a config argument is known to be sound
  c.updater = factory.updater_config(updater)
  c.optimizer = ml_collections.ConfigDict({
      'name': 'momentum', 'lr': 0.1, 'momentum': 0.9, 'nesterov': False, 'weight_decay': 5e-4,
      'decay_kernels_only': False, 'grad_clip_norm': placeholder(float), 'b1': 0.9, 'b2': 0.999, 'eps': 1e-8})
  c.schedule = ml_collections.ConfigDict({'name': 'cosine', 'warmup_steps': 0, 'end_lr': 0.0})
  c.loss = 'softmax_xent'
  c.label_smoothing = 0.0
  c.mixup_alpha = 0.0
  c.batch_size = 128                 # global, over all devices and hosts
  c.grad_accum_steps = 1
  # Device mesh (rsam/training/sharding.py): the batch is split over both axes; the state is split along
  # 'fsdp' (leaves of at least shard_min_bytes, on their largest dimension fsdp divides) and replicated
  # along 'data'. -1: the devices the other axis leaves. The default replicates the state, as the paper.
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1})
  c.shard_min_bytes = 2**20
  c.num_epochs = 200.0
  c.total_steps = placeholder(int)              # overrides num_epochs when set
  c.compute_dtype = 'float32'        # 'bfloat16': activations in bf16, parameters and ascent in float32
  c.eval_sets = ('test',)
  c.eval_batch_size = 512
  c.eval_every_steps = 0             # 0: evaluate at the end only
  # Per eval set: every how many steps it runs (0: at the end only); overrides eval_every_steps for that
  # set. A set named here but not in eval_sets runs at its interval and at the end (a curve, e.g. 'minival').
  c.eval_intervals = ml_collections.ConfigDict()
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  # JAX's persistent compilation cache (rsam/training/compilation_cache.py): '' = $JAX_COMPILATION_CACHE_DIR
  # or <cache dir>/jax_compilation_cache on this machine (RSAM_CACHE_DIR / XDG_CACHE_HOME); 'off'; a folder.
  c.compilation_cache_dir = ''
  # A jax.profiler trace of training steps first_step..last_step (1-based; 0 = none) for TensorBoard's
  # profile plugin, in <workdir>/plugins/profile/ (rsam/training/progress.py).
  c.profile = ml_collections.ConfigDict({'first_step': 0, 'last_step': 0})
  c.nan_policy = 'stop'              # 'stop': one-line error naming the step; 'skip': drop that update
  c.max_consecutive_skipped_steps = 10  # nan_policy='skip': more non-finite steps in a row stop the run
  # The workdir's lease (rsam/training/lease.py): another run's lease whose heartbeat is older than this is
  # taken over (at once if its process on this host is gone, or with --force_resume).
  c.lease_timeout_s = 300.0
  # How long a gs:// request is retried through an outage before the run stops with exit code 69
  # (rsam/training/paths.py); bookkeeping: may change on a resume.
  c.storage_retry_s = 900.0
  c.wandb = ml_collections.ConfigDict({
      'enabled': False, 'mode': placeholder(str), 'project': 'rsam', 'entity': placeholder(str),
      'cell': placeholder(str),  # '<home>/<name>' of configs/tables.py: group, name, tags, paper numbers
      'group': placeholder(str), 'name': placeholder(str), 'job_type': placeholder(str),
      'tags': ()})  # rsam/training/writers.py: identity
  # Multi-host start (rsam/training/distributed.py): enabled None = automatic (a Cloud TPU VM pod joins by
  # itself, anything else runs as one process); True with the other fields for other clusters; False: never.
  c.distributed = ml_collections.ConfigDict({
      'enabled': placeholder(bool), 'coordinator_address': placeholder(str),
      'num_processes': placeholder(int), 'process_id': placeholder(int)})
  return c

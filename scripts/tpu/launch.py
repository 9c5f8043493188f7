r"""Runs one train.py command on a Cloud TPU VM (a pod slice or one host) until it finishes, through preemptions.

    .venv/bin/python scripts/tpu/launch.py --name rsam-b16 --zone ZONE --accelerator_type v3-256 --spot \
        --workdir gs://BUCKET/rsam/vit_b16_rsam --data_dir gs://BUCKET/tfds --detach -- --config configs/vit_b16_rsam.py
    .venv/bin/python scripts/tpu/launch.py status --name rsam-b16    # where the run is, how it last ended
    .venv/bin/python scripts/tpu/launch.py stop --name rsam-b16      # saves the step and stops; --delete_tpu
    .venv/bin/python scripts/tpu/launch.py --dry_run ...             # prints every command instead

What it does, step by step, and every option: scripts/tpu/pod.py (the tested module) and docs/tpu.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from scripts.tpu import pod  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  sys.exit(pod.main(sys.argv[1:]))

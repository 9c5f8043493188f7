r"""Runs one train.py command on a Cloud TPU VM pod slice until it finishes, through preemptions.

    python scripts/tpu/launch.py --name rsam-pod --zone europe-west4-a --accelerator_type v3-256 --spot \
        --workdir gs://BUCKET/rsam/vit_b16_rsam --data_dir gs://BUCKET/tfds -- --config configs/vit_b16_rsam.py
    python scripts/tpu/launch.py --dry_run ...     # prints every gcloud command instead

What it does, step by step, and every option: scripts/tpu/pod.py (the tested module) and the README's
"Running on a Cloud TPU pod".
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from scripts.tpu import pod  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  sys.exit(pod.main(sys.argv[1:]))

r"""Time and chip-hours of every table cell (configs/tables.py), from model FLOPs: the page docs/cost.md.

    python scripts/estimate_cost.py --out docs/cost.md              # the page (a minute or two on CPU)
    python scripts/estimate_cost.py --tables 3 --mfu 0.4            # Table 3 only, another MFU, to stdout
    python scripts/estimate_cost.py --price v6e=2.7 --price v3=2.0  # adds a cost column per priced chip

The method and its assumptions are in rsam/training/cost.py and are written into the page. The MFU is, by
default, the one implied by a published wall time of a ViT on a TPU v3-8 (``--mfu`` sets another); the same
MFU is assumed for every model and chip generation.
"""
import argparse
import datetime
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# The run the default MFU is derived from: big_vision's ViT-S/16 on ImageNet-1k (train[:99%], 224 px,
# batch 1024) for 90 epochs takes "6-7h ... on a TPU-v3-8" (the docstring of its config); the hours
# include its evaluations and input pipeline. Its model is ours (configs/vit_s16_adamw.py's) but for a
# pooled head instead of the class token (196 tokens, not 197: 0.5% fewer FLOPs, ignored).
REFERENCE = dict(what="big_vision's ViT-S/16 on ImageNet-1k (train[:99%], 224 px, batch 1024), 90 epochs, "
                      'on a TPU v3-8',
                 source='github.com/google-research/big_vision, big_vision/configs/vit_s16_i1k.py, its '
                        'docstring: "This should take 6-7h to finish 90ep on a TPU-v3-8"',
                 config='configs/vit_s16_adamw.py', epochs=90, batch=1024, slice='v3-8', hours=(6.0, 7.0))
# Hours are given on these slices (any accelerator type rsam.training.cost.parse_slice reads), per dataset.
SLICES = {'cifar10': ('v3-8', 'v6e-8'), 'cifar100': ('v3-8', 'v6e-8'), 'imagenet2012': ('v3-256', 'v6e-256')}
CHIP_HOURS = ('v3', 'v5litepod', 'v6e')  # the chip-hours columns


def load(config_string: str):
  """get_config(arg) of 'configs/x.py[:arg]'."""
  import importlib  # pylint: disable=g-import-not-at-top
  path, _, arg = config_string.partition(':')
  module = importlib.import_module(path[:-len('.py')].replace('/', '.'))
  return module.get_config(arg) if arg else module.get_config()


def reference_mfu():
  """{'mfu': at the middle of the reference's hours, 'range': (at its longest, at its shortest), ...}."""
  from data import sources  # pylint: disable=g-import-not-at-top
  from rsam.training import cost  # pylint: disable=g-import-not-at-top
  config = load(REFERENCE['config'])
  images = REFERENCE['epochs'] * sources.num_train_examples(config.data)
  steps = math.floor(images / REFERENCE['batch'])
  with config.unlocked():
    config.batch_size = REFERENCE['batch']
  run = cost.estimate(config, mfu=1.0, steps=steps)
  lo, hi = REFERENCE['hours']
  mfu = {h: cost.implied_mfu(run.training_flops, h, REFERENCE['slice']) for h in (lo, (lo + hi) / 2, hi)}
  return {**REFERENCE, 'mfu': mfu[(lo + hi) / 2], 'range': (mfu[hi], mfu[lo]), 'steps': steps,
          'forward_gflops': run.forward_flops / 1e9, 'training_eflops': run.training_flops / 1e18}


def estimates(table_names, mfu):
  """[(table, run, estimate)] for every run the tables read, each run once (in its home table's order)."""
  from configs import tables  # pylint: disable=g-import-not-at-top
  from rsam.training import cost  # pylint: disable=g-import-not-at-top
  flops_of, out, seen = {}, [], set()
  for table in table_names:
    for run in tables.runs_of(table):
      if (run.home, run.name) in seen:
        continue
      seen.add((run.home, run.name))
      config = run.load()
      key = (config.model.name, str(config.model.get('overrides', {})), config.data.name,
             config.data.get('image_size'))
      if key not in flops_of:
        flops_of[key] = cost.config_forward_flops(config)
      out.append((table, run, config, cost.estimate(config, mfu=mfu, forward_flops=flops_of[key])))
  return out


def markdown(rows, mfu, ref, prices, command) -> str:
  from configs import tables  # pylint: disable=g-import-not-at-top
  from rsam.training import cost  # pylint: disable=g-import-not-at-top
  chips = ', '.join(f'{c.name} {c.peak_tflops:g} TFLOP/s ({c.source})' for c in cost.CHIPS.values())
  lines = [
      '# Time and chip-hours per table cell (estimates)',
      '',
      f'Generated on {datetime.date.today().isoformat()} by the command below, from the configs of '
      '`configs/tables.py` at this commit; nothing here was measured on an accelerator.',
      '',
      '```',
      command,
      '```',
      '',
      '**How.** Training FLOPs = 3 · F · B · S · P: F is XLA\'s FLOP count of one image\'s forward pass '
      '(`rsam/training/cost.py`, from the model definitions; a multiply-add is 2 FLOPs), 3 · F the forward '
      'and backward pass, B the global batch, S the steps, P the forward-backward passes per step (2 for '
      'SAM, ASAM, R-SAM, GSAM and R-GSAM; 1 for the AdamW/SGD baselines and LPF-SGD). Chip-hours = training '
      'FLOPs / (chip peak × MFU); hours on a slice = chip-hours / its chips. Chip peaks (dense bf16, per '
      f'chip): {chips}.',
      '',
      f'**The MFU, an assumption: {mfu:.0%}.** '
      + (f'It is the MFU implied by a published wall time: {ref["what"]} takes 6–7 h ({ref["source"]}); '
         f'our count for that run is F = {ref["forward_gflops"]:.2f} GFLOP, {ref["steps"]:,} steps, '
         f'{ref["training_eflops"]:.2f} EFLOP, so 6.5 h on 4 chips × 123 TFLOP/s is {ref["mfu"]:.0%} '
         f'({ref["range"][0]:.0%} at 7 h, {ref["range"][1]:.0%} at 6 h), evaluation and input included. '
         if ref else 'It was given with `--mfu`. ')
      + 'The same MFU is assumed for every model, slice and chip generation. That is optimistic for the '
        'CIFAR ResNets (small 32 × 32 convolutions at batch 128 keep a TPU far below its peak) and for '
        'ViT-B/16 R-SAM at 16 images per device in m-sharpness groups of 16, so read those hours as lower '
        'bounds; `scripts/benchmark.py --preset gpu` measures the MFU of a ViT-B/16 step on one chip. '
        'Evaluation, compilation, input stalls and restarts after preemption are not counted.',
      '',
      '**Prices.** No current price per chip-hour could be found in an authoritative source when this page '
      'was written (2026-12-07: the stored copies of cloud.google.com/tpu/pricing we could search predate '
      'v5e and showed no per-chip prices; third-party summaries disagree with each other), so this page gives '
      'chip-hours only. Multiply them by the on-demand or spot price per chip-hour of your region and '
      'generation on cloud.google.com/tpu/pricing, or pass `--price v6e=<USD per chip-hour>` to add a '
      'column.',
      '',
  ]
  flops = sum(e.training_flops for _, _, _, e in rows)
  lines += [f'**In all** ({len(rows)} runs, one seed each): {flops / 1e18:,.0f} EFLOP, '
            + ', '.join(f'{cost.significant(sum(e.chip_hours(k) for _, _, _, e in rows))} {cost.CHIPS[k].name} '
                        f'chip-hours' for k in CHIP_HOURS) + '.', '']
  for table in dict.fromkeys(t for t, _, _, _ in rows):
    group = [(run, config, e) for t, run, config, e in rows if t == table]
    slices = SLICES[group[0][1].data.name]
    head = (['cell', 'steps', 'batch', 'P', 'F (GFLOP)', 'EFLOP'] + [f'{cost.CHIPS[k].name} chip-h' for k in CHIP_HOURS]
            + [f'h on {s}' for s in slices] + [f'USD ({k})' for k in prices])
    lines += [f'## {tables.label(table)}', '',
              '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    total = {'flops': 0.0, **{k: 0.0 for k in CHIP_HOURS}, **{s: 0.0 for s in slices},
             **{f'usd_{k}': 0.0 for k in prices}}
    for run, config, e in group:
      cells = [f'`{run.home}/{run.name}`', f'{e.steps:,}', f'{e.batch:,}', f'{e.passes:g}',
               f'{e.forward_flops / 1e9:.3g}', f'{e.training_flops / 1e18:.3g}']
      cells += [cost.significant(e.chip_hours(k)) for k in CHIP_HOURS]
      cells += [cost.format_hours(e.hours(s)) for s in slices]
      cells += [f'{e.cost(k, p):,.0f}' for k, p in prices.items()]
      lines.append('| ' + ' | '.join(cells) + ' |')
      total['flops'] += e.training_flops
      for k in CHIP_HOURS:
        total[k] += e.chip_hours(k)
      for s in slices:
        total[s] += e.hours(s)
      for k, p in prices.items():
        total[f'usd_{k}'] += e.cost(k, p)
    cells = [f'**all {len(group)} runs, one seed**', '', '', '', '', f'{total["flops"] / 1e18:.3g}']
    cells += [cost.significant(total[k]) for k in CHIP_HOURS] + [cost.format_hours(total[s]) for s in slices]
    cells += [f'{total[f"usd_{k}"]:,.0f}' for k in prices]
    lines += ['| ' + ' | '.join(cells) + ' |', '']
  lines += ['Runs shared between tables (the Table 4 and Fig. 3 points that are Table 3 runs, the ρ multiple 1 '
            'of `cifar_rho`) are listed once, under the first table that reads them. Several seeds per cell '
            'multiply every number by the number of seeds.', '']
  return '\n'.join(lines)


def main(argv=None):
  from configs import tables  # pylint: disable=g-import-not-at-top
  from rsam.training import cost  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--tables', nargs='+', choices=tables.TABLES, default=list(tables.TABLES),
                 help='the tables and figures to estimate (default: all)')
  p.add_argument('--mfu', type=float, help='model FLOPs utilisation to assume, in (0, 1] (default: the one '
                 'implied by the reference run; see the page)')
  p.add_argument('--price', action='append', default=[], metavar='CHIP=USD',
                 help=f"USD per chip-hour of a chip ({', '.join(cost.CHIPS)}), e.g. v6e=2.7: adds a cost column")
  p.add_argument('--out', help='write the page here (e.g. docs/cost.md) instead of printing it')
  args = p.parse_args(argv)
  prices = {}
  for item in args.price:
    chip, _, usd = item.partition('=')
    try:
      prices[chip] = float(usd)
    except ValueError:
      p.error(f'--price {item}: give CHIP=USD per chip-hour, e.g. v6e=2.7')
    if chip not in cost.CHIPS:
      p.error(f"--price {item}: unknown chip {chip!r}; choose one of: {', '.join(cost.CHIPS)}")
  if args.mfu is not None and not 0 < args.mfu <= 1:
    p.error(f'--mfu {args.mfu}: give a fraction in (0, 1], e.g. 0.3')
  ref = None if args.mfu is not None else reference_mfu()
  mfu = args.mfu if args.mfu is not None else ref['mfu']
  command = 'python scripts/estimate_cost.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
  page = markdown(estimates(args.tables, mfu), mfu, ref, prices, '.venv/bin/' + command.strip())
  if args.out:
    with open(args.out if os.path.isabs(args.out) else os.path.join(ROOT, args.out), 'w') as f:
      f.write(page)
    print(f'written: {args.out}')
  else:
    print(page)


if __name__ == '__main__':
  main()

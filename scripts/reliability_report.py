r"""Runs the fault-injection suite and writes results/reliability.md from that run.

    python scripts/reliability_report.py                  # new random kill points
    RSAM_FAULTS_SEED=123 python scripts/reliability_report.py
    python scripts/reliability_report.py --long           # gs:// outages of minutes, not CI's seconds

The suite: every test marked ``faults`` in tests/test_faults.py, tests/test_lease.py and tests/test_gcs.py
(the gs:// ones behind tests/fault_proxy.py). ``--long`` sets RSAM_FAULTS_LONG: the outage within the
deadline lasts 150 s (config.storage_retry_s=300) and the one past it 400 s (deadline 120 s).

The tables come from the facts the tests record (RSAM_FAULTS_REPORT) and from pytest's outcome of each
test (a JUnit XML file); the wall time and the CPU time of pytest and its subprocesses are measured here.
"""
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'results', 'reliability.md')
TESTS = ('tests/test_faults.py', 'tests/test_lease.py', 'tests/test_gcs.py')
# Two workers, one test file each at a time (as the README's test command): each file's facts come from
# the one worker that ran it (tests/test_faults.py: RSAM_FAULTS_REPORT, tests/test_gcs.py: its .gcs.json).
PYTEST_ARGS = ('-m', 'faults', '-q', '-n', '2', '--dist', 'loadfile', *TESTS)
COMMAND = f'python -m pytest {" ".join(PYTEST_ARGS)}'


def run_suite(tmp, long=False):
  report, junit = os.path.join(tmp, 'report.json'), os.path.join(tmp, 'junit.xml')
  env = dict(os.environ, RSAM_FAULTS_REPORT=report)
  if long:
    env['RSAM_FAULTS_LONG'] = '1'
  start = time.time()
  proc = subprocess.run([sys.executable, '-m', 'pytest', *PYTEST_ARGS,
                         f'--junitxml={junit}', '-p', 'no:cacheprovider'], cwd=ROOT, env=env)
  wall = time.time() - start
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  facts = {}
  if os.path.exists(report):  # absent when pytest stopped before the fault suite's teardown
    with open(report) as f:
      facts = json.load(f)
  if os.path.exists(report + '.gcs.json'):
    with open(report + '.gcs.json') as f:
      facts.update(json.load(f))
  outcomes = {}
  for case in ET.parse(junit).getroot().iter('testcase'):
    name = case.get('name')
    skipped = case.find('skipped')
    if case.find('failure') is not None or case.find('error') is not None:
      outcomes[name] = 'FAILED'
    elif skipped is not None:
      xfail = 'xfail' in skipped.get('type', '') + skipped.get('message', '')
      outcomes[name] = 'xfail (expected)' if xfail else 'skipped'
    else:
      outcomes[name] = 'passed'
  return facts, outcomes, {'wall_s': wall, 'cpu_s': usage.ru_utime + usage.ru_stime, 'rc': proc.returncode}


def outcome(outcomes, prefix):
  found = [v for k, v in outcomes.items() if k.startswith(prefix)]
  if not found:
    return 'not run'
  bad = [v for v in found if v not in ('passed', 'xfail (expected)')]
  if bad:
    return f'**{len(bad)}/{len(found)} FAILED**'
  return found[0] if len(found) == 1 else f'{len(found)}/{len(found)} passed'


def scrub(text):
  """No path of this machine in the repository: temporary folders become <tmp>, the checkout <repo>."""
  text = re.sub(r'/[^\s`\'"]*?/pytest-of-[^/\s]+/pytest-\d+(/popen-gw\d+)?', '<tmp>', str(text))
  return text.replace(ROOT, '<repo>').replace(tempfile.gettempdir(), '<tmp>')


def cell(text):
  return scrub(text).replace('|', '\\|').replace('\n', ' ')


def render(facts, outcomes, timing):
  rows = []
  chain = facts.get('kill_chain', {})
  events = chain.get('events', [])
  kills = [e for e in events if e.get('signal') == 'SIGKILL']
  sigterm = next((e for e in events if e.get('signal') == 'SIGTERM'), {})
  if kills:
    where = ', '.join(f"after the step-{e.get('signal_after_step')} line (started at {e['started_at_step']})"
                      for e in kills)
    restarts = [e['started_at_step'] for e in events[4:]]  # the starts after each kill
    tmp = sum(e.get('tmp_dirs_at_start', 0) for e in events)
    rows.append(('`kill -9` of `train.py` (checkpoint every step, keep 3)', f'{len(kills)}× — {where}',
                 f'restarts resumed from steps {restarts}; {tmp} interrupted save(s) found at restart and '
                 f'removed; final state bit-identical to the uninterrupted run '
                 f"({chain.get('state_leaves_bit_identical', '?')} leaves, `assert_array_equal`), same eval",
                 outcome(outcomes, 'test_kill_9')))
  if sigterm:
    info = chain.get('sigterm', {})
    rows.append(('SIGTERM (preemption)', f"1× — after the step-{sigterm.get('signal_after_step')} line",
                 f"exit {sigterm.get('rc')}; stderr `{info.get('message', '?')}`; checkpoint of that step "
                 f"on disk; the next start resumed from step {info.get('resumed_from', '?')}",
                 outcome(outcomes, 'test_sigterm')))
  for name, what in (('SIGINT', 'SIGINT (Ctrl-C)'), ('SIGHUP', 'SIGHUP (the ssh session dropped)')):
    info = chain.get(name.lower())
    if info:
      event = next((e for e in events if e.get('signal') == name), {})
      rows.append((what, f"1× — after the step-{event.get('signal_after_step')} line",
                   f"exit {event.get('rc')}; stderr `{info['message']}`; the next start resumed from step "
                   f"{info['resumed_from']}", outcome(outcomes, f'test_{name.lower()}')))
  if 'closed_stdout' in facts:
    rows.append(('stdout closed after the first step line (`| tee` over a dropped ssh session)', '1× (a real '
                 'pipe whose reader closed it)', facts['closed_stdout'] + '; no traceback',
                 outcome(outcomes, 'test_a_closed_stdout')))
  for during, message in facts.get('signal_after_last_step', {}).items():
    rows.append((f'SIGTERM during the {during} (after the last step)', '1× (a real signal to the process)',
                 f'the checkpoint of step 12 completes (bit-identical to the reference), then `{message}`, exit '
                 f'143, no results.json; the same command again evaluates it and ends with the reference eval',
                 outcome(outcomes, 'test_sigterm_after_the_last_step')))
  if 'segments' in facts:
    seg = facts['segments']
    rows.append(('Crash after logging step 6 (last checkpoint 4), then the same command', '1×',
                 f"results.json segments: " + '; '.join(f"{s['from_step']}→{s['to_step']} ({s['ended']})"
                                                        for s in seg['segments'])
                 + f"; train/loss written {seg['train_loss_writes_per_step']}× per step (redone steps 5–6 not "
                 'logged again); the kill chain\'s results.json lists its 6 processes',
                 outcome(outcomes, 'test_resumed_run_records')))
  for what, message in facts.get('write_failures', {}).items():
    rows.append((what.capitalize(), '1× in-process run', f'exit code 74, one line: `{message}`; that checkpoint '
                 'restores bit-identical to the reference; no traceback on stderr',
                 outcome(outcomes, 'test_disk_full' if 'disk' in what else 'test_read_only')))
  if 'records_ahead' in facts:
    rows.append(('checkpoints/ deleted under a run whose segments.json says step 12 was saved', '2 starts, '
                 'then `--start_over`', f"refused twice, nothing written: `{facts['records_ahead']}`; "
                 '`--start_over` archived the old records and trained from 0: each logged step once, '
                 'the reference eval', outcome(outcomes, 'test_records_ahead')))
  rows.append(('checkpoints/ deleted from the bucket under a finished gs:// run (step 24), then the same '
               'command', '1× through `train.py`', 'exit 2, one `error:` line naming step 24 and '
               '`gs://…/checkpoints`; nothing written to the bucket (not even the lease)',
               outcome(outcomes, 'test_checkpoints_gone_from_the_bucket')))
  if 'identity_without_config_json' in facts:
    rows.append(('config.json deleted, resumed with another lr and rho', '1× in-process',
                 f"refused from the checkpoint's manifest, config.json not rewritten: "
                 f"`{facts['identity_without_config_json']}`", outcome(outcomes, 'test_a_checkpoint_refuses')))
  if 'emptied' in facts:
    rows.append(('Every file of the workdir deleted during the run (after checkpoint 4)', '1× in-process',
                 f"stopped at the next save, no checkpoint written: `{facts['emptied']}`",
                 outcome(outcomes, 'test_a_folder_emptied')))
  if 'events_before_segments' in facts:
    rows.append(('Crash after the events of a checkpoint step reached the workdir, before segments.json',
                 '1× in-process', 'the resumed run read the events: train/loss written '
                 f"{facts['events_before_segments']['train_loss_writes_per_step']}× per step",
                 outcome(outcomes, 'test_a_crash_between')))
  if 'cache_folders' in facts:
    rows.append(('RSAM_CACHE_DIR under a regular file; a read-only compilation cache', '1× each',
                 '; '.join(f'{k}: `{v}`' for k, v in facts['cache_folders'].items()),
                 outcome(outcomes, 'test_an_unusable_cache')))
  if 'outages' in facts:
    o = facts['outages']
    lines = o['lines']
    first = ' / '.join(lines['first'][:1] + [l for l in lines['first'] if l.startswith('SIGTERM')])
    rows.append(('gs:// through the fault proxy: 5% 503s, 5% resets, the replies of 30% of the lease writes lost, '
                 f"a {o['within'][0]} s outage (config.storage_retry_s={o['within'][1]}), then SIGTERM 3 s "
                 'into an outage', f"faults injected: {o['faults']}",
                 f"exit {o['rc'][0]}: `{first}`", outcome(outcomes, 'test_faults_within') + ' / '
                 + outcome(outcomes, 'test_sigterm_during')))
    rows.append((f"gs:// outage of {o['past'][0]} s past config.storage_retry_s={o['past'][1]}", '1×',
                 f"exit {o['rc'][1]}: `{' / '.join(l for l in lines['second'] if l.startswith('error'))}`",
                 outcome(outcomes, 'test_an_outage_past')))
    rows.append(('The same command after the outages', '1×', f"exit {o['rc'][2]}; final state bit-identical to "
                 'the uninterrupted reference, each logged step once in the bucket\'s TensorBoard events, no '
                 'probe object left', outcome(outcomes, 'test_after_the_outages')))
  rows.append(('One gs:// request through an outage (10 s within a 30 s deadline; 60 s past a 4 s one; a stop '
               'signal 1 s into a 60 s one)', '3 processes, each behind its own proxy',
               'within: written after the outage, one `waiting for` line and one `reachable again`; past: '
               'StorageUnreachable after 4-8 s; signal: gave up within the 15 s grace',
               outcome(outcomes, 'test_a_request_waits')))
  rows.append(('A full local disk under a gs:// run\'s staging folder (a real 64 KB tmpfs, TensorFlow\'s '
               'writer)', '1×', 'the line names this machine\'s disk and RSAM_CACHE_DIR, not the bucket',
               outcome(outcomes, 'test_a_full_local_staging')))
  rows.append(('The lease: a heartbeat whose reply was lost (3× through the proxy); the same RSAM_LEASE_OWNER on '
               'another host; lease.json deleted; a heartbeat 120 s in the future', '1× each',
               'kept (its own write recognised); taken over at once (another owner still refused); written '
               'again with a warning, not "taken over"; live, "the clocks differ", no negative age',
               ' / '.join(outcome(outcomes, t) for t in ('test_a_heartbeat_whose', 'test_same_owner',
                                                          'test_a_deleted_lease', 'test_a_heartbeat_from'))))
  rows.append(('`--force_resume` against a live `train.py`', 'two real processes',
               'the new run asked and waited; the live one stopped at its next heartbeat (exit 75, one line) '
               'after its save completed; the new run resumed from that checkpoint, deleted nothing',
               outcome(outcomes, 'test_force_resume_waits')))
  rows.append(('Two runs on one workdir (lease), locally and on the GCS emulator', 'two holder processes racing '
               '(same start instant), then `train.py` against the held gs:// lease',
               'exactly one takes the lease; the other and `train.py` are refused with one line naming the '
               'owner (exit 75), nothing else written; after SIGKILL of the holder the next run takes over at '
               'once (its pid is gone); stale heartbeat / --force_resume rules in-process',
               outcome(outcomes, 'test_two_processes') + ' / ' + outcome(outcomes, 'test_lease_rules')))
  damage = facts.get('damage', {})
  if damage:
    rows.append(('Newest checkpoint damaged (restore through `Checkpointer.restore_latest`)',
                 f'{len(damage)} kinds: ' + ', '.join(damage),
                 'falls back to step 11 (bit-identical to the reference), prints e.g. `'
                 + next(iter(damage.values())).split(' in ')[0] + ' … is damaged (…); moved it to '
                 '12.damaged; resuming from step 11`; sha256 of every file of checkpoints 1–11 unchanged; '
                 'the damaged one renamed, its files unchanged',
                 outcome(outcomes, 'test_damaged_latest')))
  if 'damage_full_restart' in facts:
    rows.append(('Two newest damaged, full restart',
                 '1×', facts['damage_full_restart'],
                 outcome(outcomes, 'test_resume_after_damaged')))
  for where, key in (('locally', 'interrupted_save_local'), ('on gs:// (emulator)', 'interrupted_save_gcs')):
    if key in facts:
      fact = facts[key]
      rows.append((f'A checkpoint save SIGKILLed while orbax writes it, {where}', '1× (a real save of 48 MB)',
                   f"the kill left {', '.join(f'`{n}`' for n in fact['left_by_the_kill'])}; the trainer's "
                   f"start removed it and printed one line; finished checkpoints {fact['finished_kept']} "
                   f"kept byte for byte and the newest restores",
                   outcome(outcomes, 'test_a_save_killed_' + ('locally' if key.endswith('local') else 'on_gcs'))))
  if 'no_intact' in facts:
    cli = facts.get('cli', {}).get('all checkpoints damaged', {})
    noise = ' (orbax printed a traceback at interpreter exit, after the error line)' \
        if cli.get('traceback_at_exit') else ''
    rows.append(('Every checkpoint damaged (12 of 12 truncated)',
                 '2 starts in-process + 1 through `train.py`',
                 f"one line naming the directory, the same on the second start (no silent restart from "
                 f"scratch), nothing renamed (hashes); CLI exit 2: "
                 f"`{cli.get('error_line', '?')[:160]}…`{noise}",
                 outcome(outcomes, 'test_no_intact') + ' / ' + outcome(outcomes, 'test_command_line')))
  flips = facts.get('flipped_byte')
  if isinstance(flips, dict):
    outcomes_ = flips['outcomes']
    counts = {o: outcomes_.count(o) for o in dict.fromkeys(outcomes_)}
    rows.append(('One byte flipped inside checkpoint 12\'s largest array file', f'{len(outcomes_)}× (5 places)',
                 ', '.join(f'{n}× {o}' for o, n in counts.items())
                 + ' (the sha256 manifest written with each save; detected = 12 set aside, fell back to 11, '
                 'bit-identical): `' + (flips['message'] or ['?'])[0][:200] + '…`',
                 outcome(outcomes, 'test_flipped_bytes')))
  if 'abstract_restore' in facts:
    rows.append(('Resume: the initial state computed only to be overwritten', '1× in-process',
                 facts['abstract_restore'] + '; with every checkpoint damaged, `train.py` compiles nothing',
                 outcome(outcomes, 'test_resume_restores_into_abstract')))
  if 'nan_stop' in facts:
    rows.append(("NaN loss, `nan_policy='stop'`",
                 '1× — NaN pixel in the batch of step 6 (a checkpoint step)',
                 f"stops: `{facts['nan_stop']}`; newest checkpoint is step 4, bit-identical to the "
                 f"reference's",
                 outcome(outcomes, 'test_nan_with_policy_stop')))
  if 'nan_skip_limit' in facts:
    rows.append(("NaN at every step from 3 on, `nan_policy='skip'`, `max_consecutive_skipped_steps=3`",
                 '1× (what lr = 1e6 does)', f"stops: `{facts['nan_skip_limit']}`; checkpoint 2 intact",
                 outcome(outcomes, 'test_nan_skip_stops')))
  if 'config_json_shape' in facts:
    rows.append(('config.json that parses but is not a config', f"{len(facts['config_json_shape'])} kinds: "
                 + ', '.join(f'`{k}`' for k in facts['config_json_shape']),
                 f"one line, e.g. `{next(iter(facts['config_json_shape'].values()))}`; --force_resume rewrites it",
                 outcome(outcomes, 'test_config_json_of_the_wrong_shape')))
  if 'nan_skip' in facts:
    rows.append(("Inf and NaN, `nan_policy='skip'`", '2× — +Inf pixel at step 3, NaN pixel at step 7',
                 f"run completes, `results.json` skipped_steps={facts['nan_skip']['skipped_steps']}, a "
                 f"warning line per skipped step, parameters finite",
                 outcome(outcomes, 'test_nan_and_inf')))
  bad = facts.get('bad_configs', {})
  if bad:
    rows.append(('Bad configuration, in-process', f'{len(bad)} kinds (listed below)',
                 'one-line ConfigError/DataError naming the field and the fix; `jax.jit` calls, the data '
                 'iterators and the dataset readers replaced by failures, none reached; workdir not created; '
                 f"slowest {1000 * max(v.get('seconds', 0) for v in bad.values()):.1f} ms",
                 outcome(outcomes, 'test_bad_config') + ', ' + outcome(outcomes, 'test_unwritable')))
  cli = {k: v for k, v in facts.get('cli', {}).items() if k != 'all checkpoints damaged'}
  damaged_compiles = facts.get('cli', {}).get('all checkpoints damaged', {}).get('compilations')
  if cli:
    rows.append(('Bad configuration / other run\'s workdir, through `train.py`', f'{len(cli)} kinds: '
                 + ', '.join(cli),
                 'exit 2, exactly one `error:` line on stderr naming the field, no traceback; '
                 '`JAX_LOG_COMPILES=1` shows 0 compilations (the damaged-checkpoint run, which does '
                 f"compile, shows {damaged_compiles}"
                 '); CPU per process ' + ', '.join(f"{v.get('cpu_s', '?')} s" for v in cli.values()),
                 outcome(outcomes, 'test_command_line')))
  if 'identity' in facts:
    rows.append(('Resume into a workdir of a different config', '1× in-process + 1× CLI',
                 f"refused: `{facts['identity']['refused'][:150]}…`; bookkeeping fields may change; with "
                 f"`force_resume`: {facts['identity']['forced']}",
                 outcome(outcomes, 'test_resume_into')))
  if 'late_failure' in facts:
    lf = facts['late_failure']
    rows.append(('A start that failed after writing config.json, before any checkpoint; a half-written '
                 'config.json', '1× each',
                 f"{lf['first_error']} → corrected config {lf['corrected_config']}; "
                 f"half-written: `{lf['half_written_config_json']}`",
                 outcome(outcomes, 'test_start_that_failed')))
  if 'same_seed' in facts:
    s = facts['same_seed']
    rows.append(('Same seed twice', '1 extra run',
                 f"{s['train_scalars_compared']} logged train scalars equal, eval equal, "
                 f"{s['state_leaves_bit_identical']} state leaves bit-identical",
                 outcome(outcomes, 'test_same_seed')))
  dev = facts.get('devices')
  if dev:
    drift = dev['max_abs_param_diff_by_step']
    control = dev['control_8_devices_init_times_1_plus_1e-7_step_12']
    rows.append(('1 vs 8 CPU devices, same m=4', '1 run on a 1-device mesh (+1 control run)',
                 f"not bit-identical (summation order of the group means): max |Δparam| after step 1 "
                 f"{drift['1']:.1e}, then "
                 + ', '.join(f'step {k}: {v:.1e}' for k, v in drift.items() if k != '1')
                 + f"; control (8 devices, init × (1+1e-7)) drifts {control:.1e}"
                 f" by step 12: this config amplifies any rounding difference",
                 outcome(outcomes, 'test_one_and_eight')))

  lines = [
      '# Reliability: fault-injection results',
      '',
      f"Produced by `python scripts/reliability_report.py{' --long' if timing.get('long') else ''}`, which ran "
      f"`{COMMAND}` on "
      f"{datetime.date.today().isoformat()} ({platform.machine()}, {os.cpu_count()} CPU cores shared with "
      f"other jobs, 8 fake CPU devices). Kill points seed: `RSAM_FAULTS_SEED={facts.get('seed')}`. "
      f"Suite: wall {timing['wall_s']:.0f} s, CPU {timing['cpu_s']:.0f} s (pytest and its subprocesses; the "
      f"machine's load average was {timing.get('load', '?')} at the start, so the wall time is what the "
      f"other jobs left); pytest exit code {timing['rc']}.",
      '',
      'Setup: configs/tiny.py (R-SAM, constant rho) with m-sharpness m=4 (12 steps on the offline digits, '
      'batch 32, 8 fake CPU devices); the '
      'uninterrupted reference run checkpoints every step. See the docstring of tests/test_faults.py for how '
      'each fault is injected.',
      '',
      '| Fault injected | How many times | What held | Test |',
      '|---|---|---|---|',
  ]
  lines += [f'| {" | ".join(cell(c) for c in row)} |' for row in rows]
  if bad:
    lines += ['', '## Bad configurations (in-process): the error each one gives', '',
              '| Kind | Error (one line) |', '|---|---|']
    lines += [f'| {cell(k)} | `{cell(v["error"])}` |' for k, v in bad.items()]
  if events:
    lines += ['', '## The kill chain, process by process', '',
              '| # | Signal | Started at step | Signal sent after the line of step | Exit code '
              '| Checkpoints after | CPU s | Wall s |', '|---|---|---|---|---|---|---|---|']
    for i, e in enumerate(events):
      lines.append(f"| {i} | {e.get('signal') or '— (to the end)'} | {e['started_at_step']} | "
                   f"{e.get('signal_after_step', '—')} | {e['rc']} | {e['checkpoints_after']} | "
                   f"{e.get('cpu_s', '?')} | {e.get('seconds', '?')} |")
  lines += ['', STATIC]
  return '\n'.join(lines) + '\n'


STATIC = '''## Bugs the suite found, and the fixes

- `rsam/training/checkpointing.py`: after one failed restore, orbax's CheckpointManager could not restore
  the intact checkpoints either (an empty newest checkpoint folder made it fail every older one with
  "Must provide `args` of type `Composite`"), so the fallback renamed **every** checkpoint `*.damaged`, and
  the next start began from step 0. Now each failed restore reopens the manager; newer failed checkpoints
  are set aside only once an older one restored; when none restores nothing is renamed (the cause may be a
  changed model, not damage), the manager is closed (no orbax traceback at exit) and the one-line error
  names the directory. Interrupted saves were never removed and would pile up
  (a full checkpoint each); the trainer now deletes them when it opens the directory (eval.py does not, so
  it can run beside a training). It does so itself, synchronously: orbax's `cleanup_tmp_directories` runs
  in a thread that, under load, outlived the process and printed a traceback after the error line. A
  restore that fails inside orbax leaves tensorstore reads and coroutines behind that later printed pages of
  "Event loop is closed" / "Encountered error while reading array index" tracebacks around the one-line
  message; exactly those reports are now dropped (an unraisable-exception hook and an asyncio log filter,
  installed at the first failed restore).
- `rsam/training/loop.py`: with `nan_policy='stop'` the non-finite check ran one step late, after the
  step's checkpoint was written, so a NaN at a checkpoint step left a checkpoint labelled with that step
  (holding the previous parameters) and a restart silently skipped the step; a SIGTERM right after a NaN
  step did the same. A step about to be checkpointed is now checked first (a host sync only at checkpoint
  steps). On 'stop' the pending saves are completed before the error. With `nan_policy='skip'` nothing
  said that steps were dropped: each is now a warning line and `results.json` lists `skipped_steps`. The
  message names the metric (loss, or the gradient when the loss is finite) and the step. `results.json` is
  written atomically. The updater/schedule ConfigErrors raised in `build()` now come before the workdir is
  written to and before any data is read.
- `rsam/training/config_check.py`: a config error raised after `config.json` was written (or any crash
  before the first checkpoint) locked the workdir to the bad config (the corrected one was refused as "a
  different config"); now only a workdir with checkpoints is protected, and `config.json` is written
  atomically (a half-written one is a one-line error pointing at `--force_resume`). Validation gaps that
  gave tracebacks, or a NaN run after compiling: `total_steps`/`num_epochs`/`eval_every_steps` of the wrong
  type, `eval_sets` given as a string, NaN/Inf `optimizer.lr`, non-numeric optimizer fields (momentum,
  weight_decay, b1, b2, eps), negative `grad_clip_norm`, `schedule.warmup_steps`/`end_lr` of the wrong
  type, the 'step' schedule without `step_boundaries`/`step_factor` (not in the base config: it always
  crashed), misspelt optimizer/schedule fields (silently ignored before), NaN/Inf updater fields (`rho=nan`
  passed the `>= 0` check), unknown `model.overrides` (a ValueError traceback after config.json was
  written), and warm-up not shorter than the run.

- Checksums (issue #15): a flipped byte inside an array file restored without error and with wrong values (orbax keeps no
  checksums). Each save now writes a sha256 manifest of its files before the save is committed, and each
  restore verifies it: a mismatch is set aside as damaged and the previous checkpoint is resumed.
- Interrupted saves (issue #15): the cleanup looked for `*.orbax-checkpoint-tmp-*`, but orbax 0.12 names
  an unfinished save `<step>.orbax-checkpoint-tmp` (and on gs:// writes it in place, finished once
  `commit_success.txt` exists), so real leftovers stayed; its test passed only on an invented folder name.
  Now both kinds are removed, tested by SIGKILLing real saves locally and on the GCS emulator.
- Restart cost (issue #15): the first checkpoint save compiled one small slice program per array shape and
  device on the main thread (orbax's replica-parallel saving); a resume computed the initial state only to
  overwrite it. Now one replica is written (no program) and a resume restores into abstract shapes.

- Issue #25 (a week on preemptible TPUs), each found with tests/fault_proxy.py or a real process/disk
  and fixed; every test below failed on the code before the fix:
  - a heartbeat whose reply was lost read its own write (a 412 on gcsfs's retry) as a takeover and exited
    75 for good; now it reads its token back, as `acquire` did. A VM recreated under another hostname was
    refused its own lease for `lease_timeout_s` (now `RSAM_LEASE_OWNER`); a deleted lease.json was "taken
    over", a future heartbeat a negative age.
  - gcsfs retried a request 6 times (about 30 s, a traceback per try): a 60 s outage crashed the run, a
    SIGTERM during one exited 1 unsaved, the write probe left objects in the bucket. Now every request
    retries up to `config.storage_retry_s` with one line, then exit 69; a signal ends the waits within 15
    s and exits 143 saying what was not saved; no probe object on gs://. fake-gcs-server answers 404 to a
    retried last chunk of a completed resumable upload (GCS answers 200): the run's own small writes are
    now single-request uploads, and the proxy answers such a retry as GCS does.
  - checkpoints deleted under recorded progress: a silent restart from step 0, duplicated dashboard,
    a second "finished" segment. Now refused (exit 2) with `--start_over`; a folder emptied under a run
    stops it at its next save.
  - a missing config.json switched the identity check off (now in every checkpoint's manifest); a missing
    checksum manifest beside others restored unverified as "saved before checksums" (now damage).
  - `--force_resume` against a live run deleted its save in progress (now it waits for the hand-over).
  - SIGHUP killed the run unsaved with its lease held; a closed stdout stopped it with a BrokenPipeError.
  - a full staging disk of a gs:// run was reported as the bucket full; RSAM_CACHE_DIR under a file was a
    traceback; a kill between the events and segments.json duplicated a TensorBoard point (now the resumed
    run reads the events).

## Not fixed here (reported)

- `data/`: unknown data fields (e.g. a misspelt `data.augment`) only log a warning and are ignored;
  `data.image_size='x'` raises a ValueError traceback instead of a DataError.
- `rsam/training/factory.py`: `updater.m` defaults to None, so `--config.updater.m=4` cannot be given on the command
  line (ml_collections cannot infer the type); the suite writes a small config file instead.
- On a pod, only process 0 checks the lease between steps: a `--force_resume` hand-over or a lost lease stops
  process 0 alone, and the others wait at the next collective until jax's timeout.

## Measurements

- JAX's persistent compilation cache on CPU (this machine, `train.py` on the suite's config, one process,
  measured on 2026-11-28 under load): cold 37.9 s CPU, cold with the cache being filled 36.6 s, warm
  11.5 s (of which about 5.3 s is importing TF/JAX/flax/orbax); that was SAM with m=4. In-process, a
  second `train_and_evaluate` of R-SAM with m=4 (before b57893e): 50 s CPU without the cache, 6 s with
  it. The suite compiles each step once and every other process and run loads it.
- Compile time of the train step (m=4, 8 devices, one process, CPU seconds): SAM 8.5 s; R-SAM 33 s before
  commit b57893e (one Threefry kernel per leaf), 16.7 s after it.
'''


def main():
  long = '--long' in sys.argv[1:]
  with tempfile.TemporaryDirectory() as tmp:
    load = os.getloadavg()[0]
    facts, outcomes, timing = run_suite(tmp, long=long)
    timing['load'] = f'{load:.1f}'
    timing['long'] = long
  with open(OUT, 'w') as f:
    f.write(render(facts, outcomes, timing))
  print(f'wrote {OUT}; pytest exit code {timing["rc"]}')
  return timing['rc']


if __name__ == '__main__':
  sys.exit(main())

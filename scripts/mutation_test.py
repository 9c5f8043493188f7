r"""Mutation testing (tests/mutation.py): break rsam/, data/ and rsam/training/ one change at a time in a
temporary copy of the checkout and run the tests relevant to each file; survivors are listed first.

    python scripts/mutation_test.py                       # the whole list (tens of minutes on 2 CPU cores)
    python scripts/mutation_test.py --only factory- eval- # the mutations whose id contains a fragment
    python scripts/mutation_test.py --list                # ids, files and test selections; runs nothing
    python scripts/mutation_test.py --smoke               # the harness's own check: one killed, one survivor

Exit status 0 when every mutation was killed (the smoke: when it behaved as expected), 1 otherwise.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from tests import mutation  # pylint: disable=wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--only', nargs='+', default=(), help='run the mutations whose id contains any of these')
  parser.add_argument('--list', action='store_true', help='list the mutations and exit')
  parser.add_argument('--smoke', action='store_true', help='run the harness smoke (tests/mutation.py: SMOKE)')
  parser.add_argument('--timeout', type=float, default=600, help='seconds per pytest run')
  parser.add_argument('--no-baseline', action='store_true', help='skip the run on the unmutated copy')
  args = parser.parse_args(argv)

  chosen = mutation.SMOKE if args.smoke else mutation.MUTATIONS
  if args.only:
    chosen = [m for m in chosen if any(f in m.id for f in args.only)]
  if args.list:
    for m in chosen:
      print(f"{m.id:32s} {m.file:30s} {' '.join(m.pytest_args())}")
    return 0
  results = mutation.run(chosen, REPO, timeout=args.timeout, baseline=not args.no_baseline,
                         log=lambda line: print(line, flush=True))
  print(mutation.report(results))
  if args.smoke:
    return 0 if [r.status for r in results] == ['killed', 'survived'] else 1
  return 0 if all(r.status in ('killed', 'timeout') for r in results) else 1


if __name__ == '__main__':
  sys.exit(main())

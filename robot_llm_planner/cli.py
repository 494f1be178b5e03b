"""
Offline command line: ``python3 -m robot_llm_planner.cli <subcommand> ...``.

Subcommands:
  postprocess  split LLaMA-Factory predictions into the seed's output_1 / output_2 format
"""

import argparse
import sys
from typing import List, Optional


def _postprocess(args: argparse.Namespace) -> int:
    from robot_llm_planner.postprocess import postprocess_file
    try:
        output, records = postprocess_file(args.predictions, args.dataset, args.output,
                                           args.instruction)
    except (OSError, ValueError) as exc:
        print('postprocess: %s' % exc, file=sys.stderr)
        return 2
    bad = [r['error'] for r in records if 'error' in r]
    for error in bad:
        print('postprocess: skipped %s' % error, file=sys.stderr)
    print('wrote %d records to %s' % (len(records), output))
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog='python3 -m robot_llm_planner.cli',
                                     description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='subcommand', required=True)

    post = sub.add_parser('postprocess', help='seed-format post-processing of predictions')
    post.add_argument('predictions', help='generated_predictions.jsonl from LLaMA-Factory')
    post.add_argument('--dataset', help='the alpaca JSON predicted on; commands are taken '
                      'from its rows by line index instead of from the prompts')
    post.add_argument('-o', '--output', help='output JSON (default: predict_postprocessed.json '
                      'beside the predictions)')
    post.add_argument('--instruction', default='', help='the alpaca instruction the prompts '
                      'start with, stripped from the recovered command')
    post.set_defaults(run=_postprocess)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line and return its exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(main())

"""
The training side's command line: generate the data set, print a prompt variant.

Run from a source checkout: ``python3 training/make_dataset.py [OPTIONS]`` and
``python3 training/prompt.py NAME [--task task1|task2]``.

Subcommands:
  make-dataset generate the fine-tuning data set into training/data
  prompt       print a prompt variant's instruction (planner_node's prompt.instruction)
"""

import argparse
import os
import sys
from typing import List, Optional


def _make_dataset(args: argparse.Namespace) -> int:
    from planner_training.dataset import make_dataset
    try:
        written = make_dataset(args.out, args.seed, args.size, args.skills, args.prompts)
    except (OSError, ValueError) as exc:
        print('make-dataset: %s' % exc, file=sys.stderr)
        return 2
    print('wrote %d files to %s' % (len(written), os.path.dirname(next(iter(written.values())))))
    return 0


def _prompt(args: argparse.Namespace) -> int:
    from planner_training.dataset import load_prompts
    from robot_llm_planner.core.skills import SkillSet
    try:
        prompts = load_prompts(args.prompts, SkillSet.load(args.skills))
    except ValueError as exc:
        print('prompt: %s' % exc, file=sys.stderr)
        return 2
    if args.name not in prompts:
        print('prompt: no variant %r (have: %s)' % (args.name, ', '.join(prompts)),
              file=sys.stderr)
        return 2
    print(prompts[args.name][args.task])
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the training side's subcommands."""
    parser = argparse.ArgumentParser(prog='planner_training', description=__doc__.split('\n')[1])
    sub = parser.add_subparsers(dest='subcommand', required=True)

    data = sub.add_parser('make-dataset', help='generate the fine-tuning data set')
    data.add_argument('--out', help='output folder (default: training/data)')
    data.add_argument('--seed', type=int, help='random seed (default: the shipped data set seed)')
    data.add_argument('--size', type=int, help='training examples; validation gets size/10, '
                      'test size/6 (default: 3000)')
    data.add_argument('--skills', help='skills YAML (default: the shipped config/skills.yaml)')
    data.add_argument('--prompts', help='prompt variants YAML (default: training/prompts.yaml)')
    data.set_defaults(run=_make_dataset)

    prompt = sub.add_parser('prompt', help="print a prompt variant's instruction text")
    prompt.add_argument('name', help='variant name, e.g. prompt3')
    prompt.add_argument('--task', choices=('task1', 'task2'), default='task2')
    prompt.add_argument('--skills', help='skills YAML (default: the shipped config/skills.yaml)')
    prompt.add_argument('--prompts', help='prompt variants YAML (default: training/prompts.yaml)')
    prompt.set_defaults(run=_prompt)

    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line and return its exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)

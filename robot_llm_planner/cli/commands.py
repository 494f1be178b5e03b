"""
Offline command line: ``python3 -m robot_llm_planner.cli <subcommand> ...``.

Subcommands:
  plan         plan commands with a model and print one /action_plan JSON per line
  postprocess  split LLaMA-Factory predictions into the seed's output_1 / output_2 format
  evaluate     plan metrics of prediction runs side by side (markdown, CSV, PNG)

The data set generator and the prompt variants are the training side's
(``python3 training/make_dataset.py``, ``python3 training/prompt.py``).
"""

import argparse
import math
import os
import sys
from typing import Callable, List, Optional


def int_at_least(minimum: int) -> Callable[[str], int]:
    """Return an argparse type: an integer >= ``minimum`` (argparse names the option)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError('expected an integer >= %d, got %r'
                                             % (minimum, text))
        return value
    return parse


def float_where(accepts: Callable[[float], bool], wanted: str) -> Callable[[str], float]:
    """Return an argparse type: a number ``accepts`` takes (never NaN), else ``wanted``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isnan(value) or not accepts(value):
            raise argparse.ArgumentTypeError('expected %s, got %r' % (wanted, text))
        return value
    return parse


positive_float = float_where(lambda value: 0 < value < math.inf, 'a number > 0')
probability = float_where(lambda value: 0.0 <= value <= 1.0, 'a number from 0 to 1')


def _evaluate(args: argparse.Namespace) -> int:
    from robot_llm_planner.core.backend import EngineError
    from robot_llm_planner.cli.evaluate import confidence_table, evaluate_files, plan_split
    from robot_llm_planner.inference.build import build_planner
    from robot_llm_planner.core.skills import SkillSet
    runs, names = list(args.runs), list(args.names or [])
    confidence = ''
    try:
        if args.split:
            if not args.model and args.backend == 'transformers':
                raise ValueError('--split runs the planner: give --model (and --adapter)')
            planner = build_planner(settings_from_args(args))
            planner.load()
            name = args.run_name or os.path.splitext(os.path.basename(args.split))[0]
            output = os.path.join(args.out, name + '.jsonl')
            rows = plan_split(planner, args.split, output, args.batch)
            print('planned %d commands of %s: %s' % (len(rows), args.split, output))
            confidence = confidence_table(rows)
            runs.append(output)
            names = names + [name] if names else names
        if not runs:
            raise ValueError('nothing to evaluate: give RUN files and/or --split')
        skills = SkillSet.load(args.skills or None)
        _, table = evaluate_files(runs, args.out, names or None, skills, args.instruction)
    except (OSError, ValueError, EngineError) as exc:
        print('evaluate: %s' % exc, file=sys.stderr)
        return 2
    print(table, end='')
    if confidence:
        print('\nPlans that pass every other check, by validation.min_confidence (%s):\n\n%s'
              % (name, confidence), end='')
        with open(os.path.join(args.out, 'results.md'), 'a', encoding='utf-8') as stream:
            stream.write('\n## %s: plans by validation.min_confidence\n\n%s' % (name, confidence))
    print('wrote results.md, results.csv and results.png to %s' % args.out)
    return 0


def _postprocess(args: argparse.Namespace) -> int:
    from robot_llm_planner.cli.postprocess import postprocess_file
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


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose and configure the model (shared by subcommands)."""
    from robot_llm_planner.inference.grammar import REMOTE_FIELDS
    from robot_llm_planner.core.settings import BACKENDS, PlannerSettings
    defaults = PlannerSettings()
    group = parser.add_argument_group('model')
    group.add_argument('--backend', choices=BACKENDS, default=defaults.backend)
    group.add_argument('--model', default='', help='base or merged model directory')
    group.add_argument('--adapter', default='', help='LoRA adapter directory (comma-separated '
                       'for several, merged in order)')
    group.add_argument('--device', default=defaults.device, help='auto | cpu | cuda | cuda:N')
    group.add_argument('--dtype', default=defaults.dtype,
                       help='auto | bfloat16 | float16 | float32')
    group.add_argument('--quantization', choices=('none', 'int8'),
                       default=defaults.quantization, help='int8: weight-only int8 layers')
    group.add_argument('--system', default=defaults.system, help='system prompt (default: '
                       'LLaMA-Factory >= 0.9.3 qwen default)')
    group.add_argument('--instruction', default='', help='alpaca instruction the model was '
                       'trained with (training/prompts.yaml)')
    group.add_argument('--max-new-tokens', type=int_at_least(1),
                       default=defaults.max_new_tokens,
                       help='most tokens generated per command (>= 1)')
    group.add_argument('--constrained', action=argparse.BooleanOptionalAction,
                       default=defaults.constrained,
                       help='grammar-constrained decoding from the skills file')
    group.add_argument('--fast-path', choices=('auto', 'on', 'off'), default=defaults.fast_path)
    group.add_argument('--draft-tokens', type=int_at_least(0), default=defaults.draft_tokens,
                       help='prompt-lookup draft tokens per step (0 = off)')
    group.add_argument('--skills', default='', help='skills YAML (default: config/skills.yaml)')
    group.add_argument('--grounded-arguments', action=argparse.BooleanOptionalAction,
                       default=defaults.grounded_arguments,
                       help='a target or location not in the command makes a plan invalid')
    group.add_argument('--min-confidence', type=probability, default=defaults.min_confidence,
                       help='a plan whose lowest token probability is below this is invalid '
                       '(low_confidence; 0 = off)')
    group.add_argument('--base-url', default=defaults.remote_base_url,
                       help='openai backend: server URL, e.g. http://gpu:8000/v1')
    group.add_argument('--remote-model', default='', help='openai backend: model name')
    group.add_argument('--api-key-env', default='', help='openai backend: environment '
                       'variable holding the API key')
    group.add_argument('--timeout', type=positive_float, default=defaults.remote_timeout_s,
                       help='openai backend: request timeout in seconds (> 0)')
    group.add_argument('--remote-grammar-field', default=defaults.remote_grammar_field,
                       choices=REMOTE_FIELDS,
                       help='openai backend: how --constrained sends the grammar (vLLM >= 0.10.2: '
                       'structured_outputs; older vLLM: guided_grammar)')


def settings_from_args(args: argparse.Namespace):
    """Return the PlannerSettings that the model options describe."""
    from robot_llm_planner.core.settings import PlannerSettings
    return PlannerSettings(
        backend=args.backend, model_path=args.model, adapter_path=args.adapter,
        device=args.device, dtype=args.dtype, quantization=args.quantization,
        system=args.system, instruction=args.instruction,
        max_new_tokens=args.max_new_tokens, constrained=args.constrained,
        fast_path=args.fast_path, draft_tokens=args.draft_tokens, skills_file=args.skills,
        grounded_arguments=args.grounded_arguments, min_confidence=args.min_confidence,
        remote_base_url=args.base_url, remote_model=args.remote_model,
        remote_api_key_env=args.api_key_env, remote_timeout_s=args.timeout,
        remote_grammar_field=args.remote_grammar_field)


def _plan(args: argparse.Namespace) -> int:
    from robot_llm_planner.core.backend import EngineError
    from robot_llm_planner.core.message import to_json
    from robot_llm_planner.inference.build import build_planner
    from robot_llm_planner.core.skills import SkillError
    # A blank line on stdin (a trailing newline, a separating empty line) is no command.
    commands = args.commands or [line.rstrip('\r\n') for line in sys.stdin if line.strip()]
    try:
        planner = build_planner(settings_from_args(args))
        planner.load()
    except (EngineError, SkillError, ValueError) as exc:
        print('plan: %s' % exc, file=sys.stderr)
        return 2
    model = planner.backend.describe()
    failed = 0
    for number, result in enumerate(planner.plan_batch(commands), start=1):
        print(to_json(result.message('cli-%d' % number, model)), flush=True)
        failed += result.status != 'ok'
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog='python3 -m robot_llm_planner.cli',
                                     description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='subcommand', required=True)

    plan = sub.add_parser('plan', help='plan commands; one /action_plan JSON per line')
    plan.add_argument('commands', nargs='*', metavar='COMMAND',
                      help='commands to plan (default: one per line on stdin)')
    add_model_arguments(plan)
    plan.set_defaults(run=_plan)

    post = sub.add_parser('postprocess', help='seed-format post-processing of predictions')
    post.add_argument('predictions', help='generated_predictions.jsonl from LLaMA-Factory')
    post.add_argument('--dataset', help='the alpaca JSON predicted on; commands are taken '
                      'from its rows by line index instead of from the prompts')
    post.add_argument('-o', '--output', help='output JSON (default: predict_postprocessed.json '
                      'beside the predictions)')
    post.add_argument('--instruction', default='', help='the alpaca instruction the prompts '
                      'start with, stripped from the recovered command')
    post.set_defaults(run=_postprocess)

    evaluate = sub.add_parser('evaluate', help='plan metrics of prediction runs side by side')
    evaluate.add_argument('runs', nargs='*', metavar='RUN', help='generated_predictions.jsonl '
                          'or JSONL rows {"command", "predict", "label"[, "latency_ms"]}; '
                          'give the --instruction of a prompt1..3 run so that it is stripped '
                          'from the prompts (the grounding check needs the command alone)')
    evaluate.add_argument('--names', nargs='+', help='one display name per RUN file')
    evaluate.add_argument('--out', default=os.path.join('.cache', 'evaluation'),
                          help='folder for results.md/csv/png (default: %(default)s)')
    evaluate.add_argument('--split', help='also run the planner (model options below) over '
                          'this alpaca split, e.g. training/data/task2_prompt0_test.json, and '
                          'evaluate that run beside the RUN files')
    evaluate.add_argument('--run-name', help='name of the --split run (default: the split '
                          "file's name); its rows go to OUT/NAME.jsonl")
    evaluate.add_argument('--batch', type=int_at_least(1), default=1, help='--split: commands '
                          'per planner batch (1 gives per-command latencies)')
    add_model_arguments(evaluate)
    evaluate.set_defaults(run=_evaluate)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line and return its exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(main())

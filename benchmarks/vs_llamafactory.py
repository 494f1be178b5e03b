"""
The planner against LLaMA-Factory's serving path, in one process: same model, same commands.

LLaMA-Factory's own ``ChatModel`` (huggingface engine, greedy) and this project's planner
(``build_planner``, once per ``--variant``) load the same base model and LoRA adapter and
answer the same commands (the first ``--limit`` of a split), one at a time and warm. The
paths take turns command by command, so that a load change on a shared machine touches them
alike. Per path: p50 and p90 ms per plan over ``--runs`` rounds (LLaMA-Factory: ``chat()``;
the planner: ``Planner.plan``, which parses and validates as well), each planner variant's
speed-up over LLaMA-Factory's p50, and how many answers are identical to LLaMA-Factory's:
over the commands where its answer is a valid plan (it parses and every action is a skill
with the right arguments, or it is the no-task answer) and over all. The planner's cache is
off (``cache.size`` 0): every plan is decoded.

A variant is a name and settings fields, ``--variant NAME [FIELD=VALUE ...]`` (the fields of
PlannerSettings, values as on the command line); none given: the defaults, plus the
``generate()`` path (``fast_path=off draft_tokens=0``).

    python3 benchmarks/vs_llamafactory.py --demo --out DIR      # the cached demo model
    python3 benchmarks/vs_llamafactory.py --model BASE --adapter LORA --out DIR
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout too
sys.path.insert(0, os.path.join(ROOT, 'training'))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

from report import write_report  # noqa: E402, I100
from robot_llm_planner.core.stats import percentile  # noqa: E402

DEFAULT_SPLIT = os.path.join(ROOT, 'training', 'data', 'task2_prompt0_test.json')
DEFAULT_VARIANTS = [['defaults'], ['generate()', 'fast_path=off', 'draft_tokens=0']]


def cpu_name() -> str:
    """Return the CPU's model name (Linux), or the machine type."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as stream:
            for line in stream:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def variant_settings(words: List[str]) -> Dict[str, object]:
    """Return the settings fields of one ``--variant NAME FIELD=VALUE...``, checked."""
    from robot_llm_planner.core.parameter_text import parse_text
    from robot_llm_planner.core.parameters import PARAMETERS
    by_field = {parameter.field: parameter for parameter in PARAMETERS if parameter.field}
    fields = {}
    for word in words[1:]:
        name, _, text = word.partition('=')
        parameter = by_field.get(name)
        if parameter is None or not _:
            raise SystemExit('--variant %s: %r is not FIELD=VALUE with a PlannerSettings field'
                             % (words[0], word))
        if parameter.kind is bool:
            if text not in ('true', 'false'):
                raise SystemExit('--variant %s: %s takes true or false' % (words[0], name))
            fields[name] = text == 'true'
        else:
            try:
                fields[name] = parse_text(parameter, text)
            except ValueError as exc:
                raise SystemExit('--variant %s: %s: %s' % (words[0], name, exc))
    return fields


def valid_answer(text: str, command: str, skills) -> bool:
    """Return True when ``text`` is a plan the planner would take, or the no-task answer."""
    from robot_llm_planner.core.plan import parse_plan
    plan = parse_plan(text, command)
    return plan.no_task or (plan.ok and not skills.validate(plan))


def demo_model_paths():
    """Return (base, adapter) of the cached demo model; exit if it is not trained."""
    from planner_training import demo_model
    directory = demo_model.model_directory()
    if not os.path.exists(os.path.join(directory, demo_model.DONE_FILE)):
        raise SystemExit('the demo model is not trained (no %s in %s): run make demo'
                         % (demo_model.DONE_FILE, directory))
    return os.path.join(directory, 'base'), os.path.join(directory, 'adapter')


def load_llamafactory(base: str, adapter: str, max_new_tokens: int):
    """Return LLaMA-Factory's ChatModel (huggingface engine, greedy) for the model."""
    from llamafactory.chat import ChatModel
    arguments = {'model_name_or_path': base, 'template': 'qwen', 'infer_backend': 'huggingface',
                 'do_sample': False, 'max_new_tokens': max_new_tokens}
    if adapter:
        arguments.update(adapter_name_or_path=adapter, finetuning_type='lora')
    return ChatModel(arguments)


def load_planner(base: str, adapter: str, max_new_tokens: int, fields: Dict[str, object]):
    """Return this project's planner (loaded and warmed up) with ``fields`` set."""
    from robot_llm_planner.core.settings import PlannerSettings
    from robot_llm_planner.inference.build import build_planner
    settings = PlannerSettings(model_path=base, adapter_path=adapter, device='cpu',
                               max_new_tokens=max_new_tokens, cache_size=0)
    for name, value in fields.items():
        setattr(settings, name, value)
    planner = build_planner(settings)
    planner.load()
    return planner


def run(args) -> dict:
    """Load every path, answer the commands, and return the report."""
    import torch
    import transformers
    torch.set_num_threads(args.threads)
    from robot_llm_planner.core.skills import SkillSet
    base, adapter = demo_model_paths() if args.demo else (args.model, args.adapter)
    with open(args.split, encoding='utf-8') as stream:
        commands = [row['input'] for row in json.load(stream)][:args.limit]
    variants = {words[0]: variant_settings(words) for words in args.variant or DEFAULT_VARIANTS}
    names = list(variants)
    if len(names) != len(args.variant or DEFAULT_VARIANTS) or 'LLaMA-Factory' in names:
        raise SystemExit('--variant names must differ from each other and from LLaMA-Factory')
    started = time.perf_counter()
    chat = load_llamafactory(base, adapter, args.max_new_tokens)
    report = {'model': base, 'adapter': adapter, 'split': os.path.relpath(args.split, ROOT),
              'commands': len(commands), 'runs': args.runs, 'threads': args.threads,
              'max_new_tokens': args.max_new_tokens, 'torch': torch.__version__,
              'transformers': transformers.__version__,
              'machine': '%s, %d cores' % (cpu_name(), os.cpu_count() or 0),
              'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
              'load_average_start': round(os.getloadavg()[0], 2),
              'llamafactory_load_s': round(time.perf_counter() - started, 2), 'paths': {}}
    planners = {}
    for name, fields in variants.items():
        started = time.perf_counter()
        planners[name] = load_planner(base, adapter, args.max_new_tokens, fields)
        report.setdefault('planner_load_s', {})[name] = round(time.perf_counter() - started, 2)
    skills = SkillSet.load()
    messages = [[{'role': 'user', 'content': command}] for command in commands]
    chat.chat(messages[0])  # warm (the planners warmed up at load)
    times: Dict[str, List[float]] = {name: [] for name in ['LLaMA-Factory'] + names}
    answers: Dict[str, List[str]] = {name: [] for name in times}
    for round_index in range(args.runs):
        for command, message in zip(commands, messages):
            began = time.perf_counter()
            text = chat.chat(message)[0].response_text
            times['LLaMA-Factory'].append((time.perf_counter() - began) * 1000.0)
            if round_index == 0:
                answers['LLaMA-Factory'].append(text)
            for name, planner in planners.items():
                began = time.perf_counter()
                result = planner.plan(command)
                times[name].append((time.perf_counter() - began) * 1000.0)
                if round_index == 0:
                    answers[name].append(result.plan.raw_output)
    reference = answers['LLaMA-Factory']
    valid = [valid_answer(text, command, skills) for text, command in zip(reference, commands)]
    for name in times:
        same = [a == b for a, b in zip(answers[name], reference)]
        report['paths'][name] = {
            'p50_ms': round(statistics.median(times[name]), 2),
            'p90_ms': round(percentile(times[name], 0.9), 2),
            'identical': sum(same), 'identical_where_valid': sum(
                s for s, v in zip(same, valid) if v),
            'differing_where_valid': [c for c, s, v in zip(commands, same, valid)
                                      if v and not s],
            'times_ms': [round(value, 3) for value in times[name]]}  # rounds x commands
        if name != 'LLaMA-Factory':
            report['paths'][name]['settings'] = variants[name]
    report['valid_llamafactory_answers'] = sum(valid)
    report['load_average_end'] = round(os.getloadavg()[0], 2)
    base_p50 = report['paths']['LLaMA-Factory']['p50_ms']
    for path in report['paths'].values():
        path['speedup'] = round(base_p50 / path['p50_ms'], 2)
    report['answers'] = [{'command': c, 'llamafactory': r, 'valid': v,
                          **{name: answers[name][i] for name in names}}
                         for i, (c, r, v) in enumerate(zip(commands, reference, valid))]
    return report


def markdown(report: dict) -> str:
    """Return the report's table as markdown."""
    lines = ['%s; %s; torch %s, transformers %s, %d torch thread(s); load average %.2f at '
             'the start, %.2f at the end. %s (+ %s); the first %d commands of %s, %d round(s), '
             "max_new_tokens %d; %d of LLaMA-Factory's answers are valid plans." % (
                 report['date'], report['machine'], report['torch'], report['transformers'],
                 report['threads'], report['load_average_start'], report['load_average_end'],
                 report['model'], report['adapter'] or 'no adapter', report['commands'],
                 report['split'], report['runs'], report['max_new_tokens'],
                 report['valid_llamafactory_answers']), '',
             '| path | settings | p50 ms per plan | p90 ms | speed-up (p50) | identical where '
             "LLaMA-Factory's is valid | identical, all |", '|---|---|---|---|---|---|---|']
    for name, path in report['paths'].items():
        settings = ', '.join('%s=%s' % item for item in path.get('settings', {}).items())
        lines.append('| %s | %s | %.1f | %.1f | %.2fx | %d/%d | %d/%d |' % (
            name, settings or ('-' if name == 'LLaMA-Factory' else 'defaults'), path['p50_ms'],
            path['p90_ms'], path['speedup'], path['identical_where_valid'],
            report['valid_llamafactory_answers'], path['identical'], report['commands']))
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    """Parse the options, run, write vs_llamafactory.json/.md under --out; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.strip().split('\n')[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--demo', action='store_true', help='the cached demo model')
    source.add_argument('--model', help='base model directory')
    parser.add_argument('--adapter', default='', help='LoRA adapter directory (with --model)')
    parser.add_argument('--split', default=DEFAULT_SPLIT, help='JSON rows with an "input"')
    parser.add_argument('--limit', type=int, default=20, help='commands (the first ones)')
    parser.add_argument('--runs', type=int, default=3, help='rounds over the commands')
    parser.add_argument('--threads', type=int, default=1, help='torch threads')
    parser.add_argument('--max-new-tokens', type=int, default=256)
    parser.add_argument('--variant', action='append', nargs='+', metavar='WORD',
                        help='NAME [FIELD=VALUE ...]: a planner with these settings (repeat)')
    parser.add_argument('--out', required=True)
    args = parser.parse_args(argv)
    report = run(args)
    write_report(args.out, 'vs_llamafactory', report, markdown(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())

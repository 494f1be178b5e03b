"""
Seed-compatible post-processing of LLaMA-Factory ``generated_predictions.jsonl``.

Each prediction line ``{"prompt", "predict", "label"}`` becomes::

    {"instruction": <command>, "output_1": [step, ...], "output_2": ["action, target", ...]}

exactly the format of the seed project's ``predict_postprocess_task2.py``. A line that cannot
be read keeps its place in the output (so indices still match the dataset) with an ``error``
key saying why.
"""

import json
import os
import re
from typing import List, Optional, Tuple

from robot_llm_planner.core.plan import NO_TASK, parse_plan

# The user turn of LLaMA-Factory's qwen template; since 0.9.2 the prompt keeps special tokens.
_QWEN_USER = re.compile(r'<\|im_start\|>user\n(.*?)<\|im_end\|>', re.S)
# Older releases decode the prompt without special tokens: 'system\n...\nuser\n...\nassistant\n'.
_PLAIN_USER = re.compile(r'(?:^|\n)user\n(.*)\nassistant\n?$', re.S)

SEED_PART_SEP = ', '


def command_from_prompt(prompt: str, instruction: str = '') -> str:
    """
    Recover the command from a qwen-formatted prompt (the last user turn).

    LLaMA-Factory writes an alpaca row's query as instruction, newline, input; give the
    ``instruction`` to strip it and keep the command alone.
    """
    turns = _QWEN_USER.findall(prompt)
    if turns:
        query = turns[-1]
    else:
        match = _PLAIN_USER.search(prompt)
        query = match.group(1) if match else prompt
    if instruction and query.startswith(instruction + '\n'):
        query = query[len(instruction) + 1:]
    return query.strip()


def seed_record(command: str, predict: str) -> dict:
    """
    Split one prediction into the seed's output_1 / output_2 lists.

    The no-task answer 无法执行 is kept as the only output_1 entry (output_2 empty), as the
    seed's split of the text on 。 and ； gives, so that it is not mistaken for an empty one.
    """
    plan = parse_plan(predict, command)
    if plan.no_task:
        return {'instruction': command, 'output_1': [NO_TASK], 'output_2': []}
    output_2 = []
    if plan.has_output2:
        output_2 = [SEED_PART_SEP.join([step.action] + step.arguments())
                    for step in plan.steps if step.action]
    return {
        'instruction': command,
        'output_1': [step.description for step in plan.steps if step.description],
        'output_2': output_2,
    }


def _load_dataset_inputs(path: str) -> List[str]:
    try:
        with open(path, encoding='utf-8') as stream:
            rows = json.load(stream)
    except UnicodeDecodeError as exc:
        raise ValueError('%s: the dataset is not UTF-8 text (%s)' % (path, exc)) from exc
    except json.JSONDecodeError as exc:
        raise ValueError('%s: the dataset is not valid JSON (%s)' % (path, exc)) from exc
    if not isinstance(rows, list):
        raise ValueError('%s: an alpaca dataset must be a JSON list of rows' % path)
    return [str(row.get('input', '')) if isinstance(row, dict) else '' for row in rows]


def _read_lines(path: str) -> List[Tuple[int, str]]:
    """Return the non-blank lines of a UTF-8 file with their 1-based numbers."""
    lines = []
    with open(path, 'rb') as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode('utf-8')
            except UnicodeDecodeError as exc:
                raise ValueError('%s: line %d is not UTF-8 text (%s)'
                                 % (path, number, exc)) from exc
            if line.strip():
                lines.append((number, line))
    return lines


def postprocess_file(predictions: str, dataset: Optional[str] = None,
                     output: Optional[str] = None,
                     instruction: str = '') -> Tuple[str, List[dict]]:
    """
    Post-process a predictions file; return the output path and the records written.

    Raise OSError or ValueError (naming the file; nothing is written) when a file cannot be
    read, is not UTF-8, the dataset is not a JSON list, or the predictions have no rows.
    """
    inputs = _load_dataset_inputs(dataset) if dataset else None
    lines = _read_lines(predictions)
    if not lines:
        raise ValueError('%s: no prediction rows (the file is empty or blank)' % predictions)
    records = []
    for number, line in lines:
        index = len(records)
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get('predict'), str):
                raise ValueError('expected an object with a string "predict"')
        except ValueError as exc:
            records.append({'instruction': '', 'output_1': [], 'output_2': [],
                            'error': 'line %d: %s' % (number, exc)})
            continue
        if inputs is not None:
            if index >= len(inputs):
                records.append({'instruction': '', 'output_1': [], 'output_2': [],
                                'error': 'line %d: the dataset has only %d rows'
                                % (number, len(inputs))})
                continue
            command = inputs[index]
        else:
            command = command_from_prompt(str(row.get('prompt', '')), instruction)
        records.append(seed_record(command, row['predict']))
    if output is None:
        output = os.path.join(os.path.dirname(os.path.abspath(predictions)),
                              'predict_postprocessed.json')
    with open(output, 'w', encoding='utf-8') as stream:
        json.dump(records, stream, ensure_ascii=False, indent=4)
        stream.write('\n')
    return output, records

"""
Synthetic Chinese home-robot commands labelled with plans: the fine-tuning data set.

``python3 training/make_dataset.py`` writes LLaMA-Factory alpaca files
``task{1,2}_prompt{0..3}_{train,validation,test,manual}.json`` plus ``dataset_info.json`` and
``dataset_meta.json`` into ``training/data``.

Every label is written by :func:`robot_llm_planner.core.plan.format_plan` from :class:`Step`
objects whose actions come from the skills file; a label that does not parse back unchanged,
does not validate against the skills or has a step whose preconditions do not hold stops the
generator with :class:`DatasetError`.

Labelling conventions (what a model learns to copy):

- an object is named in every step exactly as the command names it ("那本蓝色的书");
- a place is copied from the command ("厨房的桌子上", "沙发旁边", "冰箱里", "厨房");
- fetching ("帮我拿一瓶水") is 寻找物体 then 拿起物体, as in the seed data; bringing to a
  person adds 移动到 and 递给 that person; putting is 寻找物体, 拿起物体, 放下物体;
- a multi-step command is the concatenation of its clauses' plans;
- a command that asks for nothing the robot's skills can do (chit-chat, a question, cooking,
  a prompt injection) is answered ``无法执行`` (:data:`robot_llm_planner.core.plan.NO_TASK`):
  one such command per ``no_task_every`` task commands ends each split.

The words and phrasings are data (``vocabulary.yaml``, read by
:mod:`planner_training.vocabulary`); :mod:`planner_training.sampler` draws one example from
them; this module draws the splits, checks every label and writes the files. The test split
holds out some objects, rooms, furniture and phrasing templates that never appear in train
or validation (``heldout`` in the vocabulary, and ``dataset_meta.json``).

This module uses only the standard library and PyYAML.
"""

import json
import os
import random
from typing import Callable, Dict, List, Optional

from planner_training import vocabulary
from planner_training.sampler import (ACTIONS, bring_steps, close_step, command_key, Example,
                                      fetch_steps, goto_step, NO_TASK_CATEGORY, open_step,
                                      Pools, put_steps, Sampler)
from robot_llm_planner.core.plan import format_plan, parse_plan, Step, ungrounded_arguments
from robot_llm_planner.core.skills import SkillSet
import yaml

DEFAULT_SEED = 20240601
DEFAULT_SIZE = 3000
DEFAULT_OUT = os.path.join('training', 'data')
DEFAULT_PROMPTS = os.path.join('training', 'prompts.yaml')

TASKS = ('task1', 'task2')
SPLITS = ('train', 'validation', 'test', 'manual')
SHIPPED_PROMPTS = ('prompt0',)
SKILLS_PLACEHOLDER = '{skills}'
INFO_FILE = 'dataset_info.json'
META_FILE = 'dataset_meta.json'

# Argument names as the prompt's skill list shows them.
ARGUMENT_NAMES = {'target': '目标', 'location': '位置'}


class DatasetError(ValueError):
    """The data set cannot be generated as asked (bad skills, prompts or arguments)."""


# The test split cycles through these: each example must contain a held-out item of that
# kind ('none': only items and templates seen in train). Its commands without a task
# alternate between a held-out template and seen ones.
TEST_KINDS = ('object', 'location', 'template', 'none')

# Hand-written commands for predict demos.
MANUAL = (
    ('帮我拿一瓶水。', fetch_steps('一瓶水')),
    ('把遥控器拿给爸爸。', bring_steps('遥控器', '爸爸')),
    ('把红色的杯子放到厨房的桌子上。', put_steps('红色的杯子', '厨房的桌子上')),
    ('打开冰箱门。', [open_step('冰箱门')]),
    ('关上卧室的窗户。', [close_step('窗户', '卧室')]),
    ('去客厅。', [goto_step('客厅')]),
    ('麻烦你把那本蓝色的书放到书架上。', put_steps('那本蓝色的书', '书架上')),
    ('能不能帮我拿一下沙发旁边的拖鞋？', fetch_steps('拖鞋', '沙发旁边')),
    ('先打开冰箱门，再拿一盒牛奶给我，然后关上冰箱门。',
     [open_step('冰箱门')] + bring_steps('一盒牛奶', '我') + [close_step('冰箱门')]),
    ('快去厨房拿一个苹果吧！', [goto_step('厨房')] + fetch_steps('一个苹果', '厨房')),
    ('把客厅的灯关掉。', [close_step('灯', '客厅')]),
    ('请把冰箱里的可乐拿给爷爷。', bring_steps('可乐', '爷爷', '冰箱里')),
    ('帮我把毛巾放到卫生间的架子上，谢谢。', put_steps('毛巾', '卫生间的架子上')),
    ('打开电视吧。', [open_step('电视')]),
    ('走到门口。', [goto_step('门口')]),
    ('把茶几上的橙子拿给奶奶。', bring_steps('橙子', '奶奶', '茶几上')),
    ('关掉空调，然后去卧室。', [close_step('空调'), goto_step('卧室')]),
    ('劳驾把雨伞放到鞋柜里。', put_steps('雨伞', '鞋柜里')),
    ('去阳台，把窗户关上。', [goto_step('阳台'), close_step('窗户')]),
    ('可以帮我把桌子上的手机拿给妈妈吗？', bring_steps('手机', '妈妈', '桌子上')),
    ('先去书房，再把那本旧的书放到书架上。', [goto_step('书房')] + put_steps('那本旧的书', '书架上')),
    ('我想让你拿一瓶酸奶给我。', bring_steps('一瓶酸奶', '我')),
    ('你会做饭吗？', []),
    ('给我唱一首歌吧。', []),
)


def _draw(sampler: Sampler, count: int, accept: Callable[[Example, int], bool],
          taken: set, split: str) -> List[Example]:
    examples: List[Example] = []
    tries = 0
    while len(examples) < count:
        tries += 1
        if tries > 1000 + 500 * count:
            raise DatasetError('could only generate %d unique %s examples of %d; ask for fewer'
                               % (len(examples), split, count))
        example = sampler.example()
        key = command_key(example.command)
        if key in taken or not accept(example, len(examples)):
            continue
        taken.add(key)
        examples.append(example)
    return examples


def split_sizes(size: int) -> Dict[str, int]:
    """Return the train/validation/test sizes for ``size`` training examples."""
    if size < 10:
        raise DatasetError('--size must be at least 10, got %d' % size)
    return {'train': size, 'validation': max(1, size // 10), 'test': max(4, size // 6)}


def generate(skills: SkillSet, seed: int = DEFAULT_SEED,
             size: int = DEFAULT_SIZE) -> Dict[str, List[Example]]:
    """
    Return the examples of every split, checked against ``skills``.

    Train and validation draw only from the items and templates not held out; the test split
    cycles through :data:`TEST_KINDS`. Commands are unique across all splits (ignoring the
    final punctuation). Raise :class:`DatasetError` when ``skills`` lacks an action the
    templates use or a label does not round-trip.
    """
    check_skills(skills)
    sizes = split_sizes(size)
    rng = random.Random(seed)
    taken: set = set()
    seen = Sampler(rng, Pools.make(heldout=False))
    splits = {
        'train': _draw(seen, sizes['train'], lambda e, i: True, taken, 'train'),
        'validation': _draw(seen, sizes['validation'], lambda e, i: True, taken,
                            'validation'),
    }

    def test_accept(example: Example, index: int) -> bool:
        kind = TEST_KINDS[index % len(TEST_KINDS)]
        kinds = example.heldout_kinds()
        return not kinds if kind == 'none' else kind in kinds

    everything = Sampler(rng, Pools.make(heldout=True))
    splits['test'] = _draw(everything, sizes['test'], test_accept, taken, 'test')
    _add_no_task(splits, seed, taken)
    splits['manual'] = [Example(command, steps, 'manual' if steps else NO_TASK_CATEGORY)
                        for command, steps in MANUAL]
    for split, examples in splits.items():
        for example in examples:
            check_label(example, skills, split)
    return splits


def _add_no_task(splits: Dict[str, List[Example]], seed: int, taken: set) -> None:
    """
    Append one command without a task per ``no_task_every`` task commands to each split.

    They come from a generator of their own, so the task commands are those the same seed
    gives without them. The test split's alternate between the held-out no-task templates
    (each in turn first, then any) and seen templates and items, in commands that train and
    validation do not have.
    """
    rng = random.Random(seed + 1)
    seen = Sampler(rng, Pools.make(heldout=False), no_task=True)
    everything = Sampler(rng, Pools.make(heldout=True), no_task=True)

    def test_accept(example: Example, index: int) -> bool:
        if index % 2:
            return not example.heldout_kinds()
        cycle = vocabulary.HELDOUT_NO_TASK_TEMPLATES  # each in turn once, then any of them
        if index // 2 < len(cycle):
            return example.templates[0] == cycle[index // 2]
        return example.templates[0] in cycle

    for split, sampler, accept in (('train', seen, lambda e, i: True),
                                   ('validation', seen, lambda e, i: True),
                                   ('test', everything, test_accept)):
        count = max(1, len(splits[split]) // vocabulary.NO_TASK_EVERY)
        splits[split] += _draw(sampler, count, accept, taken, split)


def check_skills(skills: SkillSet) -> None:
    """Raise :class:`DatasetError` when ``skills`` lacks an action the templates use."""
    missing = [action for action in ACTIONS if action not in skills]
    if missing:
        raise DatasetError(
            'the dataset templates use action(s) %s that the skills file %s does not define '
            '(it has: %s); add them to the skills file or change the templates in %s'
            % ('、'.join(missing), skills.source or '(given)', '、'.join(skills.names()),
               vocabulary.PATH))


def check_label(example: Example, skills: SkillSet, split: str = '') -> None:
    """Raise :class:`DatasetError` unless the example's label parses back and validates."""
    label = format_plan(example.steps)
    plan = parse_plan(label, example.command)
    if not example.steps:
        if not plan.no_task or plan.steps or len(plan.errors) != 1:
            raise DatasetError('%s example %r: label %r does not parse back as no task'
                               % (split, example.command, label))
        return
    problems = [e.message for e in plan.errors + skills.validate(plan)
                + ungrounded_arguments(plan, example.command)
                + skills.check_preconditions(plan)]
    if plan.steps != example.steps:
        problems.append('the label does not parse back to the same steps')
    if problems:
        raise DatasetError('%s example %r: label %r: %s'
                           % (split, example.command, label, '; '.join(problems)))


# --- prompts ---------------------------------------------------------------------------------

def skill_list(skills: SkillSet) -> str:
    """Return the skill list shown by prompts that contain ``{skills}``."""
    lines = []
    for skill in skills:
        signature = skill.name + ''.join('，' + ARGUMENT_NAMES[a] for a in skill.required)
        signature += ''.join('[，%s]' % ARGUMENT_NAMES[a] for a in skill.optional)
        lines.append('- %s：%s' % (signature, skill.description))
    return '\n'.join(lines)


def load_prompts(path: Optional[str], skills: SkillSet) -> Dict[str, Dict[str, str]]:
    """
    Read the prompt variants and render them for each task.

    The file maps ``prompts: {name: text}``, where a text is a string for both tasks or a
    mapping ``{task1: text, task2: text}``; ``{skills}`` becomes :func:`skill_list`.
    Return ``{name: {task: text}}``. ``path`` None means ``training/prompts.yaml``.
    """
    path = path or DEFAULT_PROMPTS
    try:
        with open(path, encoding='utf-8') as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise DatasetError('cannot read prompts file %s: %s (run from the repository root or '
                           'pass --prompts)' % (path, exc.strerror)) from exc
    except yaml.YAMLError as exc:
        raise DatasetError('prompts file %s is not valid YAML: %s' % (path, exc)) from exc
    if not isinstance(data, dict) or not isinstance(data.get('prompts'), dict) \
            or not data['prompts']:
        raise DatasetError('prompts file %s must have a non-empty mapping `prompts:`' % path)
    rendered = {}
    for name, value in data['prompts'].items():
        texts = value if isinstance(value, dict) else {task: value for task in TASKS}
        if set(texts) != set(TASKS) or not all(isinstance(t, str) for t in texts.values()):
            raise DatasetError('prompts file %s: %r must be a string or a mapping with the '
                               'keys %s whose values are strings' % (path, name, list(TASKS)))
        rendered[str(name)] = {
            task: texts[task].replace(SKILLS_PLACEHOLDER, skill_list(skills)).strip()
            for task in TASKS}
    return rendered


# --- files -----------------------------------------------------------------------------------

def dataset_name(task: str, prompt: str, split: str) -> str:
    """Return the dataset_info.json name (and file stem) of one data file."""
    return '%s_%s_%s' % (task, prompt, split)


def task_label(steps: List[Step], task: str) -> str:
    """Return the model output for ``steps`` in ``task`` (task1: output1 only)."""
    return format_plan(steps, with_output2=(task == 'task2'))


def _dump(data) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1) + '\n'


def build_files(splits: Dict[str, List[Example]], prompts: Dict[str, Dict[str, str]],
                seed: int, size: int) -> Dict[str, str]:
    """Return every file of the data set as ``{file name: text}``."""
    files = {}
    info = {}
    for task in TASKS:
        for prompt, texts in prompts.items():
            for split in SPLITS:
                name = dataset_name(task, prompt, split)
                rows = [{'instruction': texts[task], 'input': e.command,
                         'output': task_label(e.steps, task)} for e in splits[split]]
                files[name + '.json'] = _dump(rows)
                info[name] = {'file_name': name + '.json', 'formatting': 'alpaca',
                              'columns': {'prompt': 'instruction', 'query': 'input',
                                          'response': 'output'}}
    files[INFO_FILE] = _dump(info)
    files[META_FILE] = _dump(metadata(splits, prompts, seed, size))
    return files


def metadata(splits: Dict[str, List[Example]], prompts: Dict[str, Dict[str, str]],
             seed: int, size: int) -> dict:
    """Return what dataset_meta.json records: seed, sizes, held-out items, prompts."""
    counts = {}
    for split, examples in splits.items():
        per_category: Dict[str, int] = {}
        for example in examples:
            per_category[example.category] = per_category.get(example.category, 0) + 1
        counts[split] = dict(sorted(per_category.items()))
    test_kinds = dict.fromkeys(TEST_KINDS + (NO_TASK_CATEGORY,), 0)
    for example in splits['test']:
        if example.category == NO_TASK_CATEGORY:
            test_kinds[NO_TASK_CATEGORY] += 1
            continue
        for kind in example.heldout_kinds() or ['none']:
            test_kinds[kind] += 1
    templates = {name: text for _, table in vocabulary.CLAUSE_TEMPLATES for name, text in table}
    templates.update((t[0], t[1]) for t in vocabulary.NO_TASK_TEMPLATES)
    templates.update((w[0], w[1]) for w in vocabulary.WRAPPERS)
    command = 'python3 training/make_dataset.py --seed %d --size %d' % (seed, size)
    return {
        'generator': command,
        'seed': seed,
        'size': size,
        'sizes': {split: len(examples) for split, examples in splits.items()},
        'categories': counts,
        'heldout': {
            'objects': list(vocabulary.HELDOUT_OBJECTS),
            'rooms': list(vocabulary.HELDOUT_ROOMS),
            'furniture': list(vocabulary.HELDOUT_FURNITURE),
            'templates': {name: templates[name] for name in vocabulary.HELDOUT_TEMPLATES},
            'note': ('never in train or validation; the test split cycles through examples '
                     'with a held-out object, location, template, and none; each split ends '
                     'with one command without a task (label %s) per %d task commands, the '
                     "test split's alternately with a held-out template" % (
                         format_plan([]), vocabulary.NO_TASK_EVERY)),
        },
        'test_examples_with_heldout': test_kinds,
        'actions': list(ACTIONS),
        'prompts': prompts,
        'shipped': shipped_files(prompts),
    }


def shipped_files(prompts: Dict[str, Dict[str, str]]) -> List[str]:
    """Return the data files kept in git; the others are made on demand and git-ignored."""
    names = [INFO_FILE, META_FILE]
    for task in TASKS:
        for prompt in prompts:
            if prompt in SHIPPED_PROMPTS:
                names += [dataset_name(task, prompt, split) + '.json' for split in SPLITS]
    return names


def make_dataset(out: Optional[str] = None, seed: Optional[int] = None,
                 size: Optional[int] = None, skills_path: Optional[str] = None,
                 prompts_path: Optional[str] = None) -> Dict[str, str]:
    """
    Generate the data set and write it into ``out``; return ``{file name: path}``.

    None means the default: ``training/data``, :data:`DEFAULT_SEED`, :data:`DEFAULT_SIZE`,
    the shipped skills file and ``training/prompts.yaml`` (paths relative to the current
    directory, i.e. the repository root).
    """
    out = out or DEFAULT_OUT
    seed = DEFAULT_SEED if seed is None else seed
    size = DEFAULT_SIZE if size is None else size
    skills = SkillSet.load(skills_path)
    check_skills(skills)
    prompts = load_prompts(prompts_path, skills)
    files = build_files(generate(skills, seed, size), prompts, seed, size)
    os.makedirs(out, exist_ok=True)
    written = {}
    for name, text in files.items():
        path = os.path.join(out, name)
        with open(path, 'w', encoding='utf-8', newline='\n') as stream:
            stream.write(text)
        written[name] = path
    return written

"""
The demo model: a small Qwen2 trained on the project's data with LLaMA-Factory, on CPU.

``make demo`` and the end-to-end training test use it in place of Qwen1.5-7B. The recipe is
the real deployment's, scaled down:

1. a tokenizer trained on the project's texts in which every Chinese character is one token
   (:func:`planner_training.tiny_qwen.build_tokenizer` with ``split_han``), so that a plan
   copies the command's characters one for one; optionally it also knows the 3755 common
   characters of GB2312 level 1, so that an object or place name the training data never
   shows is still made of single tokens;
2. a random-weight Qwen2 model of the recipe's size with a copy (induction) circuit planted
   in it (:mod:`planner_training.copy_circuit`; ``Recipe.copy_circuit``), without which the
   model does not learn to copy held-out names within the budget;
3. ``llamafactory-cli train`` with a config derived from ``training/config/full_sft.yaml``:
   full SFT from those weights gives the base model;
4. ``llamafactory-cli train`` with a config derived from ``training/config/lora_sft.yaml``:
   LoRA SFT on that base gives the adapter.

The planner then serves base + adapter exactly like Qwen1.5-7B + its LoRA adapter.

The training rows are the shipped split (``task2_prompt0_train``) plus more rows from the
project's own generator (:func:`planner_training.dataset.generate`, another seed; no command
of the shipped validation, test or manual splits is used) in three quarters of which object,
place and person names are replaced by random names, mostly of characters the data never uses,
some of characters of other names (so that copying, not recalling a known word, is the only way
to get those rows right), and in half of the 把/将 frames the verb is replaced by a random
character (so that the frame names the action), all seen once: new rows beat a second epoch
over the same ones. What it gets right of the held-out test split, and how long it trains, is
in docs/demo.md and benchmarks/RESULTS.md: far from what a pretrained base would get.

Everything is written into ``.cache/demo_model/<key>/`` where ``key`` hashes the recipe, the
training rows and the shipped configs: a second run with the same inputs reuses the model.
Run ``python3 -m planner_training.demo_model --evaluate`` to train (or reuse) the model and
measure it on the held-out test split.
"""

import argparse
from dataclasses import asdict, dataclass, field
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from planner_training.dataset import command_key
from robot_llm_planner.core.prompt import SYSTEM_PROMPT, SYSTEM_PROMPT_BEFORE_0_9_3
import yaml

# Bump when the code below changes what a recipe produces (part of the cache key).
RECIPE_CODE_VERSION = 1


def find_root() -> str:
    """
    Return the repository root: the folder with ``training/config`` and ``training/data``.

    The current directory when it has them (``make demo`` and the tests run there, also with
    the colcon install space sourced), else the source tree this module lives in.
    """
    source = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for candidate in (os.getcwd(), source):
        if os.path.isdir(os.path.join(candidate, 'training', 'config')):
            return candidate
    return os.getcwd()


ROOT = find_root()
DEFAULT_CACHE = os.path.join('.cache', 'demo_model')
TRAIN_FILE_NAME = 'demo_train.json'
LORA_FILE_NAME = 'demo_lora.json'
DONE_FILE = 'demo_model.json'
# The dataset columns of every alpaca file here (as in training/data/dataset_info.json).
ALPACA = {'formatting': 'alpaca',
          'columns': {'prompt': 'instruction', 'query': 'input', 'response': 'output'}}
# What the shipped configs carry that a CPU run of a tiny model does not want.
GPU_ONLY_KEYS = ('deepspeed', 'bf16', 'fp16', 'ddp_timeout')
EVAL_KEYS = ('eval_dataset', 'eval_strategy', 'eval_steps', 'per_device_eval_batch_size')


class DemoModelError(RuntimeError):
    """Training the demo model failed; the message says which stage and where its log is."""


@dataclass
class Recipe:
    """Everything that decides the demo model; its JSON form is part of the cache key."""

    # tokenizer: one token per character of 'data' = the training rows (the random names of
    # the extra rows included), 'shipped' = the shipped split only (the random names' and any
    # other new characters fall back to byte tokens), 'gb2312' = the training rows plus the
    # 3755 common characters of GB2312 level 1
    charset: str = 'data'
    # model size (Qwen2 architecture, tied embeddings)
    hidden_size: int = 128
    layers: int = 2  # the fewest an induction (copy) circuit needs; ~2x the rows/s of 4
    heads: int = 4
    kv_heads: int = 4
    intermediate_size: int = 512
    rope_theta: float = 1.0e6  # Qwen1.5's; the copy circuit needs slowly turning RoPE pairs
    # start from a planted copy (induction) circuit instead of fully random weights
    # (planner_training.copy_circuit); every weight is still trained
    copy_circuit: bool = True
    # data: the shipped training split (its first ``train_rows`` rows whose label has at most
    # ``max_label_chars`` characters; 0 = no limit) ...
    dataset: str = 'task2_prompt0_train'
    train_rows: int = 0
    max_label_chars: int = 0
    # ... plus rows generated with another seed, some names replaced by random characters
    extra_rows: int = 22000  # ~21,060 after de-duplication: 24,061 rows, seen once
    extra_seed: int = 1
    # share of the generator's commands without a task (无法执行) kept in the generated rows
    extra_no_task: float = 1.0
    name_substitution: float = 0.75  # share of the generated rows whose names are replaced
    # of a random name's characters, the share the data never uses (the rest: characters of
    # real names, so that known characters in new combinations must be copied too)
    fresh_share: float = 0.8
    # share of the verbs of 把/将 sentence frames whose action the frame decides (把 X 放到 /
    # 放在 / 收到 Y: put; 把 X 拿给 / 递给 P, 送到 P 那里: bring; 把 X 拿过来: fetch)
    # replaced by a random character, so that the frame, not the verb, names the action
    verb_substitution: float = 0.5
    # stage 1: full SFT of the (planted) random weights, from training/config/full_sft.yaml
    full_epochs: float = 1.0  # new rows beat a second epoch over the same ones (RESULTS.md)
    full_learning_rate: float = 2.0e-3  # the planted circuit's large embeddings want more
    full_batch_size: int = 8
    full_warmup: float = 0.05
    # stage 2: LoRA SFT of the base on the shipped split (training/config/lora_sft.yaml)
    lora_rows: int = 500
    lora_epochs: float = 1.0
    lora_learning_rate: float = 1.0e-3
    lora_batch_size: int = 16
    lora_rank: int = 8
    lora_alpha: int = 16
    # after stage 1, tokens the training rows never contain (Latin letters, digits, a few rare
    # characters) get their initial embeddings back: Adam pushes all of them toward one
    # "never predicted" direction, and the copy circuit can no longer tell them apart
    restore_unseen_embeddings: bool = True
    seed: int = 42
    # the same float arithmetic on every x86-64 CPU (:func:`reproducible_environment`): the
    # threads that compute in parallel, and the CPU kernels pinned to one code path
    threads: int = 2
    pinned_kernels: bool = True
    # the system prompt trained with: LLaMA-Factory's default, which the planner also uses
    system: str = SYSTEM_PROMPT
    extra: Dict[str, Dict] = field(default_factory=dict)  # per-stage config overrides

    def to_json(self) -> str:
        """Return the canonical JSON form (sorted keys) hashed into the cache key."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)


@dataclass
class DemoModel:
    """A trained demo model: what to pass as model.path and model.adapter_path."""

    base: str
    adapter: str
    directory: str
    cached: bool
    info: dict

    @property
    def train_seconds(self) -> float:
        """Return the wall time the training took when it ran (tokenizer to adapter)."""
        return float(self.info.get('train_seconds', 0.0))


# --- data ------------------------------------------------------------------------------------

def _load_rows(path: str) -> List[dict]:
    with open(path, encoding='utf-8') as stream:
        rows = json.load(stream)
    if not isinstance(rows, list):
        raise DemoModelError('%s is not an alpaca data set (a JSON list of rows)' % path)
    return rows


def gb2312_level1() -> List[str]:
    """Return the 3755 common characters of GB2312 level 1 (no download: Python's codec)."""
    chars = []
    for high in range(0xB0, 0xD8):
        for low in range(0xA1, 0xFF):
            try:
                chars.append(bytes([high, low]).decode('gb2312'))
            except UnicodeDecodeError:
                pass  # the five unused code points at the end of row 0xD7
    return chars


def data_dir(root: str = ROOT) -> str:
    """Return the folder with the shipped data set and dataset_info.json."""
    return os.path.join(root, 'training', 'data')


def split_rows(split: str, root: str = ROOT, task: str = 'task2', prompt: str = 'prompt0'):
    """Return the rows of one shipped split (``train``, ``test``, ...) of task2 prompt0."""
    return _load_rows(os.path.join(data_dir(root), '%s_%s_%s.json' % (task, prompt, split)))


def _name_pattern():
    """Return (regex of every name the generator uses, names that may be replaced)."""
    from planner_training import vocabulary
    names = [noun for noun, _, _ in vocabulary.OBJECTS] + list(vocabulary.ROOMS)
    names += [name for name, _, _ in vocabulary.FURNITURE]
    names += [person for person in vocabulary.PEOPLE if person != vocabulary.SPEAKER]
    # Names that contain or extend a replaceable one stay: 冰箱门 is not 冰箱 + 门.
    kept = [name for name, _, _ in vocabulary.OPENABLES] + list(vocabulary.OTHER_PLACES)
    replaceable = set(names) - set(kept)
    alternatives = sorted(set(names) | set(kept), key=len, reverse=True)
    return re.compile('|'.join(re.escape(name) for name in alternatives)), replaceable


def shipped_rows(recipe: Recipe, root: str = ROOT) -> List[dict]:
    """Return the rows of the shipped training split that the recipe uses."""
    with open(os.path.join(data_dir(root), recipe.dataset + '.json'), encoding='utf-8') \
            as stream:
        rows = json.load(stream)
    if recipe.max_label_chars:
        rows = [row for row in rows if len(row['output']) <= recipe.max_label_chars]
    if recipe.train_rows:
        rows = rows[:recipe.train_rows]
    return [dict(row) for row in rows]


def training_rows(recipe: Recipe, root: str = ROOT) -> List[dict]:
    """
    Return the recipe's full-SFT rows (alpaca, instruction empty), in training order.

    The shipped split's rows, and the extra rows from the project's generator with
    ``recipe.extra_seed``, which never repeat a command of the shipped splits.
    """
    rows = shipped_rows(recipe, root)
    if not recipe.extra_rows:
        return rows
    from planner_training import dataset
    from robot_llm_planner.core.plan import format_plan
    from robot_llm_planner.core.skills import SkillSet
    taken = {command_key(row['input']) for row in rows}
    for split in ('train', 'validation', 'test', 'manual'):
        taken |= {command_key(row['input']) for row in split_rows(split, root)}
    generated = dataset.generate(SkillSet.load(), seed=recipe.extra_seed,
                                 size=recipe.extra_rows)['train']
    extra = []
    no_task_credit = 0.0  # keeps every (1 / extra_no_task)-th command without a task
    for example in generated:
        if example.category == dataset.NO_TASK_CATEGORY:
            no_task_credit += recipe.extra_no_task
            if no_task_credit < 1.0:
                continue
            no_task_credit -= 1.0
        key = command_key(example.command)
        if key not in taken:
            taken.add(key)
            extra.append({'instruction': '', 'input': example.command,
                          'output': format_plan(example.steps)})
    used = {char for row in rows + extra for char in row['input'] + row['output']}
    fresh = [char for char in gb2312_level1() if char not in used]
    _substitute_names(extra, fresh, recipe, taken)
    _substitute_frame_verbs(extra, fresh, recipe, taken)
    combined = rows + extra
    random.Random(recipe.seed).shuffle(combined)
    return combined


def _substitute_names(extra: List[dict], fresh: List[str], recipe: Recipe, taken: set) -> None:
    """
    Replace names in ``extra`` (in place) by random ones.

    A random name's characters are, with probability ``recipe.fresh_share``, characters of
    ``fresh`` (the GB2312 level-1 characters the rows do not use), else characters of the
    names the training split may use (never of a held-out name). A row keeps its names when
    the new command would show a held-out name or repeat a command of ``taken`` (the command
    keys of every shipped split and of the rows so far), to which each new command is added.
    """
    if recipe.name_substitution <= 0:
        return
    from planner_training import vocabulary
    pattern, replaceable = _name_pattern()
    heldout = (vocabulary.HELDOUT_OBJECTS + vocabulary.HELDOUT_ROOMS
               + vocabulary.HELDOUT_FURNITURE)
    name_chars = sorted({char for name in replaceable - set(heldout) for char in name})
    rng = random.Random(recipe.extra_seed)

    def new_name() -> str:
        length = rng.choice((1, 2, 2, 2, 3, 3))
        return ''.join(rng.choice(fresh if rng.random() < recipe.fresh_share else name_chars)
                       for _ in range(length))

    for row in extra:
        mapping = {}
        for name in pattern.findall(row['input']):
            if name not in mapping:
                swap = name in replaceable and rng.random() < recipe.name_substitution
                mapping[name] = new_name() if swap else name
        if any(old != new for old, new in mapping.items()):
            def replace(match, mapping=mapping):
                return mapping.get(match.group(0), match.group(0))
            command = pattern.sub(replace, row['input'])
            if command_key(command) not in taken and \
                    not any(name in command for name in heldout):
                taken.add(command_key(command))
                row['input'] = command
                row['output'] = pattern.sub(replace, row['output'])


# A verb whose 把/将 frame decides the action: the verb character and what follows it.
_FRAME_VERB = re.compile('[放收拿递送](?=到|在|给|过来)')


def _substitute_frame_verbs(extra: List[dict], fresh: List[str], recipe: Recipe,
                            taken: set) -> None:
    """
    Replace (in place) the verbs of ``extra``'s 把/将 frames by random characters.

    In a clause with 把 or 将, each verb of ``_FRAME_VERB`` is replaced with probability
    ``recipe.verb_substitution`` by a character of ``fresh`` (as random names are made of)
    that no held-out name or phrasing of the generator has; the plan stays the same. A
    row keeps its verbs when the new command would repeat one of ``taken``.
    """
    if recipe.verb_substitution <= 0:
        return
    from planner_training import vocabulary
    patterns = (vocabulary.FETCH_TEMPLATES + vocabulary.BRING_TEMPLATES
                + vocabulary.PUT_TEMPLATES + vocabulary.GO_TEMPLATES
                + tuple(wrapper[:2] for wrapper in vocabulary.WRAPPERS)
                + tuple(template[:2] for template in vocabulary.NO_TASK_TEMPLATES))
    banned = set(''.join(vocabulary.HELDOUT_OBJECTS + vocabulary.HELDOUT_ROOMS
                         + vocabulary.HELDOUT_FURNITURE))
    banned.update(''.join(text for name, text in patterns
                          if name in vocabulary.HELDOUT_TEMPLATES))
    pool = [char for char in fresh if char not in banned]
    rng = random.Random(recipe.extra_seed + 1)

    def replace(match) -> str:
        return rng.choice(pool) if rng.random() < recipe.verb_substitution else match.group(0)

    for row in extra:
        clauses = row['input'].split('，')
        command = '，'.join(_FRAME_VERB.sub(replace, clause)
                           if '把' in clause or '将' in clause else clause
                           for clause in clauses)
        if command != row['input'] and command_key(command) not in taken:
            taken.add(command_key(command))
            row['input'] = command


def tokenizer_texts(rows: Sequence[dict], recipe: Recipe, root: str = ROOT) -> List[str]:
    """Return the texts the tokenizer is trained on: system prompts, skills, training rows."""
    from robot_llm_planner.core.skills import SkillSet
    if recipe.charset == 'shipped':
        rows = shipped_rows(recipe, root)
    # Repeated so that the BPE merges their English words: a prompt of ~25 tokens.
    texts = [recipe.system, SYSTEM_PROMPT, SYSTEM_PROMPT_BEFORE_0_9_3] * 20
    texts += ['system\n', 'user\n', 'assistant\n'] * 20
    texts += SkillSet.load().names()
    for row in rows:
        texts += [row['instruction'], row['input'], row['output']]
    if recipe.charset == 'gb2312':
        texts += gb2312_level1()
    elif recipe.charset not in ('data', 'shipped'):
        raise DemoModelError("recipe.charset must be 'data', 'shipped' or 'gb2312', got %r"
                             % recipe.charset)
    return [text for text in texts if text]


# --- LLaMA-Factory configs -------------------------------------------------------------------

def shipped_config(name: str, root: str = ROOT) -> dict:
    """Return a shipped LLaMA-Factory config of training/config as a dict."""
    with open(os.path.join(root, 'training', 'config', name), encoding='utf-8') as stream:
        return yaml.safe_load(stream)


def cpu_config(config: dict, **overrides) -> dict:
    """
    Return a shipped config adapted to a tiny model on CPU, with ``overrides`` applied.

    Drops what needs a GPU (DeepSpeed, bf16) and, when training, the periodic evaluation;
    turns gradient checkpointing off (it only saves memory, at ~30 % more compute);
    tokenizes in this process (``preprocessing_num_workers`` processes cost more than they
    save on 2 cores) and groups rows of similar length into batches (less padding).
    """
    config = dict(config)
    for key in GPU_ONLY_KEYS + (EVAL_KEYS if config.get('do_train') else ()):
        config.pop(key, None)
    config.update(
        gradient_checkpointing=False, disable_gradient_checkpointing=True,
        preprocessing_num_workers=None, dataloader_num_workers=0,
        dataloader_pin_memory=False, save_strategy='no', report_to='none',
        overwrite_output_dir=True)
    if config.get('do_train'):
        config['train_sampling_strategy'] = 'group_by_length'
    config.update(overrides)
    return config


def stage_configs(recipe: Recipe, directory: str, root: str = ROOT) -> Dict[str, dict]:
    """Return the training configs (full, lora) from full_sft.yaml and lora_sft.yaml."""
    data = os.path.join(directory, 'data')
    full = cpu_config(
        shipped_config('full_sft.yaml', root),
        model_name_or_path=os.path.join(directory, 'init'),
        dataset_dir=data, dataset='demo_train', output_dir=os.path.join(directory, 'base'),
        per_device_train_batch_size=recipe.full_batch_size, gradient_accumulation_steps=1,
        learning_rate=recipe.full_learning_rate, num_train_epochs=recipe.full_epochs,
        warmup_steps=recipe.full_warmup, logging_steps=50, seed=recipe.seed)
    full.update(recipe.extra.get('full', {}))
    lora = cpu_config(
        shipped_config('lora_sft.yaml', root),
        model_name_or_path=os.path.join(directory, 'base'),
        dataset_dir=data, dataset='demo_lora', output_dir=os.path.join(directory, 'adapter'),
        per_device_train_batch_size=recipe.lora_batch_size, gradient_accumulation_steps=1,
        learning_rate=recipe.lora_learning_rate, num_train_epochs=recipe.lora_epochs,
        lora_rank=recipe.lora_rank, lora_alpha=recipe.lora_alpha, logging_steps=20,
        seed=recipe.seed)
    lora.update(recipe.extra.get('lora', {}))
    if recipe.system != SYSTEM_PROMPT:  # LLaMA-Factory's own default needs no setting
        for config in (full, lora):
            config['default_system'] = recipe.system
    return {'full': full, 'lora': lora}


def predict_config(base: str, adapter: str, dataset_dir: str, dataset: str, output_dir: str,
                   root: str = ROOT, **overrides) -> dict:
    """Return a prediction config derived from training/config/lora_predict.yaml."""
    config = cpu_config(
        shipped_config('lora_predict.yaml', root), model_name_or_path=base,
        adapter_name_or_path=adapter, dataset_dir=dataset_dir, eval_dataset=dataset,
        output_dir=output_dir)
    config.update(overrides)
    return config


def write_config(config: dict, path: str) -> str:
    """Write a LLaMA-Factory YAML config and return its path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as stream:
        yaml.safe_dump(config, stream, allow_unicode=True, sort_keys=False)
    return path


# --- running LLaMA-Factory -------------------------------------------------------------------

# The trainer's tqdm bar (not the data set's "examples/s" ones): percent, step, steps, times.
_PROGRESS = re.compile(r'^\s*(\d+)%\|[^|]*\|\s*(\d+)/(\d+) \[([^\]<]*)<([^\],]*),'
                       r'\s*[0-9.?]+(?:s/it|it/s)\]')
_LOSS = re.compile(r"\{'loss': '?([0-9.e+-]+)'?")


def reproducible_environment(recipe: Recipe) -> Dict[str, str]:
    """
    Return the environment variables that make training compute the same floats anywhere.

    A float sum depends on its order, which the CPU's kernels decide: MKL (matrix products)
    picks its code by CPU vendor and instruction set, PyTorch's own kernels by instruction set
    (AVX-512 or AVX2), oneDNN likewise, and every library splits work by thread count. So the
    same recipe trained on an AMD EPYC and on an Intel Xeon gave different adapters. Pinned:
    MKL's conditional numerical reproducibility in its ``COMPATIBLE`` mode (documented to give
    the same results on Intel and non-Intel processors), PyTorch's and oneDNN's kernels at
    AVX2 (every x86-64 CPU of the last decade has it), and ``recipe.threads`` threads.
    With ``recipe.pinned_kernels`` off only the thread count is set.
    """
    threads = str(recipe.threads)
    env = {'OMP_NUM_THREADS': threads, 'MKL_NUM_THREADS': threads}
    if recipe.pinned_kernels:
        env.update(MKL_CBWR='COMPATIBLE', ATEN_CPU_CAPABILITY='avx2',
                   ONEDNN_MAX_CPU_ISA='AVX2', DNNL_MAX_CPU_ISA='AVX2')
    return env


def _environment(recipe: Optional[Recipe] = None) -> Dict[str, str]:
    env = dict(os.environ)
    if recipe is not None:
        env.update(reproducible_environment(recipe))
    env.update(HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', HF_DATASETS_OFFLINE='1',
               LLAMAFACTORY_VERBOSITY='WARN', TRANSFORMERS_VERBOSITY='warning',
               TOKENIZERS_PARALLELISM='false', DISABLE_VERSION_CHECK='1',
               PYTHONWARNINGS='ignore')
    # Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning
    # threads slow each other down several times over.
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    # The demo model trains on CPU: with GPUs visible LLaMA-Factory would use them (with
    # several, through torchrun), changing the training the cache key stands for.
    env['CUDA_VISIBLE_DEVICES'] = ''
    return env


def llamafactory_cli() -> List[str]:
    """Return the command that runs ``llamafactory-cli`` of this Python environment."""
    candidate = os.path.join(os.path.dirname(sys.executable), 'llamafactory-cli')
    if os.path.isfile(candidate):
        return [candidate]
    found = shutil.which('llamafactory-cli')
    if found:
        return [found]
    raise DemoModelError('llamafactory-cli not found: install llamafactory (make env)')


def run_llamafactory(config_path: str, log_path: str, label: str,
                     echo: Optional[Callable[[str], None]] = None, cwd: str = ROOT,
                     recipe: Optional[Recipe] = None) -> float:
    """
    Run ``llamafactory-cli train CONFIG``; return its wall time in seconds.

    The whole output goes to ``log_path``; ``echo`` (e.g. ``print``) receives one line per
    progress update and loss log. On failure the log's last lines are in the exception. If
    this process is interrupted (Ctrl-C, SIGTERM turned into SystemExit), the trainer is
    stopped too. With a ``recipe``, the trainer runs in its :func:`reproducible_environment`.
    """
    started = time.perf_counter()
    command = llamafactory_cli() + ['train', config_path]
    with open(log_path, 'wb') as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   cwd=cwd, env=_environment(recipe))
        try:
            _follow(process, log, label, echo)
        except BaseException:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
        code = process.wait()
    if code != 0:
        with open(log_path, encoding='utf-8', errors='replace') as stream:
            tail = ''.join(stream.readlines()[-25:])
        raise DemoModelError('%s: `%s` failed with exit status %d; log %s ends with:\n%s'
                             % (label, ' '.join(command), code, log_path, tail))
    return time.perf_counter() - started


def _follow(process, log, label: str, echo: Optional[Callable[[str], None]]) -> None:
    """Copy the trainer's output to ``log`` until it closes; echo progress and losses."""
    last_shown, last_line = -1.0, ''
    pending = b''
    while True:
        chunk = process.stdout.read1(4096) if hasattr(process.stdout, 'read1') \
            else process.stdout.read(4096)
        if not chunk:
            return
        log.write(chunk)
        log.flush()
        if echo is None:
            continue
        pending += chunk
        parts = re.split(rb'[\r\n]', pending)
        pending = parts.pop()
        for part in parts:
            text = part.decode('utf-8', 'replace')
            loss = _LOSS.search(text)
            if loss:
                echo('  [%s] loss %s' % (label, loss.group(1)))
                continue
            progress = _PROGRESS.search(text)
            now = time.perf_counter()
            if progress and (now - last_shown > 10 or progress.group(2) == progress.group(3)):
                line = '  [%s] step %s/%s (%s%%), %s elapsed, about %s left' % (
                    label, progress.group(2), progress.group(3), progress.group(1),
                    progress.group(4).strip(), progress.group(5).strip() or '?')
                if progress.group(2) != progress.group(3) or line != last_line:
                    echo(line)
                last_shown, last_line = now, line


# --- the model -------------------------------------------------------------------------------

def cache_key(recipe: Recipe, rows: Sequence[dict], lora_rows: Sequence[dict],
              root: str = ROOT) -> str:
    """Return the hash of everything that decides the model."""
    digest = hashlib.sha256()
    digest.update(('v%d\n' % RECIPE_CODE_VERSION).encode())
    digest.update(recipe.to_json().encode('utf-8'))
    for part in (rows, lora_rows):
        digest.update(json.dumps(list(part), ensure_ascii=False, sort_keys=True).encode())
    for name in ('full_sft.yaml', 'lora_sft.yaml'):
        with open(os.path.join(root, 'training', 'config', name), 'rb') as stream:
            digest.update(stream.read())
    return digest.hexdigest()[:16]


def _write_data(directory: str, rows: Sequence[dict], lora_rows: Sequence[dict]) -> str:
    data = os.path.join(directory, 'data')
    os.makedirs(data, exist_ok=True)
    info = {}
    for name, file_name, part in (('demo_train', TRAIN_FILE_NAME, rows),
                                  ('demo_lora', LORA_FILE_NAME, lora_rows)):
        with open(os.path.join(data, file_name), 'w', encoding='utf-8') as stream:
            json.dump(list(part), stream, ensure_ascii=False, indent=1)
        info[name] = dict(ALPACA, file_name=file_name)
    with open(os.path.join(data, 'dataset_info.json'), 'w', encoding='utf-8') as stream:
        json.dump(info, stream, ensure_ascii=False, indent=1)
    return data


def _versions() -> Dict[str, str]:
    versions = {'python': sys.version.split()[0]}
    for module in ('torch', 'transformers', 'peft', 'llamafactory', 'tokenizers'):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # a broken install must not stop the record
            versions[module] = '?'
    return versions


def _load_done(directory: str) -> Optional[dict]:
    path = os.path.join(directory, DONE_FILE)
    try:
        with open(path, encoding='utf-8') as stream:
            info = json.load(stream)
    except (OSError, ValueError):
        return None
    for key in ('base', 'adapter'):
        if not os.path.isfile(os.path.join(directory, key, 'config.json' if key == 'base'
                                           else 'adapter_config.json')):
            return None
    return info


def build_initial_model_in(env: Dict[str, str], recipe: Recipe, texts: Sequence[str],
                           folder: str) -> str:
    """Run :func:`build_initial_model` in a fresh Python process with ``env`` added."""
    os.makedirs(folder, exist_ok=True)
    arguments = os.path.join(folder, 'build_arguments.json')
    with open(arguments, 'w', encoding='utf-8') as stream:
        json.dump({'recipe': asdict(recipe), 'texts': list(texts), 'folder': folder}, stream,
                  ensure_ascii=False)
    code = ('import json, sys\n'
            'from planner_training.demo_model import Recipe, build_initial_model\n'
            'given = json.load(open(sys.argv[1], encoding="utf-8"))\n'
            'build_initial_model(Recipe(**given["recipe"]), given["texts"], given["folder"])\n')
    child_env = dict(os.environ, **env)
    child_env['PYTHONPATH'] = os.pathsep.join(path for path in sys.path if path)
    done = subprocess.run([sys.executable, '-c', code, arguments], env=child_env,
                          capture_output=True, text=True)
    os.remove(arguments)
    if done.returncode != 0:
        raise DemoModelError('building the initial model failed (exit status %d):\n%s'
                             % (done.returncode, done.stderr[-3000:]))
    return folder


def build_initial_model(recipe: Recipe, texts: Sequence[str], folder: str) -> str:
    """
    Write the recipe's tokenizer (trained on ``texts``) and random-weight Qwen2 to ``folder``.

    Return ``folder``: the model the first training stage starts from.
    """
    from planner_training.copy_circuit import plant_copy_circuit
    from planner_training.tiny_qwen import build_model, build_tokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar between the demo's lines
    build_tokenizer(texts, folder, vocab_size=100000, split_han=True)
    build_model(folder, folder, hidden_size=recipe.hidden_size, layers=recipe.layers,
                heads=recipe.heads, kv_heads=recipe.kv_heads,
                intermediate_size=recipe.intermediate_size, max_positions=1024,
                seed=recipe.seed, rope_theta=recipe.rope_theta,
                initialize=plant_copy_circuit if recipe.copy_circuit else None)
    return folder


def seen_token_ids(tokenizer, rows: Sequence[dict], system: str) -> set:
    """Return the ids of every token the training rows (prompt, answer, stop) contain."""
    from robot_llm_planner.core.prompt import IM_END, PromptBuilder
    seen = set(tokenizer.all_special_ids)  # the template's own, never restored
    for row in rows:
        prompt = PromptBuilder(system=system, instruction=row.get('instruction', ''))
        seen.update(prompt.token_ids(tokenizer, row.get('input', '')))
        seen.update(tokenizer.encode(row.get('output', '') + IM_END + '\n',
                                     add_special_tokens=False))
    return seen


def restore_unseen_embeddings(initial: str, trained: str, seen: set) -> int:
    """
    Give the tokens not in ``seen`` their embeddings of ``initial`` back in ``trained``.

    Training never showed them, so the only thing it taught their embeddings is "never
    predicted"; the initial ones are distinct, so the copy circuit can copy them (a command
    naming an iPad). Return how many were restored.
    """
    from safetensors.torch import load_file, save_file
    path = os.path.join(trained, 'model.safetensors')
    if not os.path.isfile(path):
        raise DemoModelError('%s: expected one model.safetensors to restore embeddings in'
                             % trained)
    before = load_file(os.path.join(initial, 'model.safetensors'))['model.embed_tokens.weight']
    weights = load_file(path)
    table = weights['model.embed_tokens.weight']
    unseen = [index for index in range(table.shape[0]) if index not in seen]
    table[unseen] = before[unseen].to(table.dtype)
    save_file(weights, path, metadata={'format': 'pt'})
    return len(unseen)


def _rows_and_key(recipe: Recipe, root: str):
    rows = training_rows(recipe, root)
    lora_rows = shipped_rows(recipe, root)
    lora_rows = lora_rows[:recipe.lora_rows] if recipe.lora_rows else lora_rows
    return rows, lora_rows, cache_key(recipe, rows, lora_rows, root)


def model_directory(recipe: Optional[Recipe] = None, cache_dir: Optional[str] = None,
                    root: str = ROOT) -> str:
    """Return the cache folder of ``recipe``'s model (trained there or not)."""
    _, _, key = _rows_and_key(recipe or Recipe(), root)
    return _cache_folder(key, cache_dir, root)


def _cache_folder(key: str, cache_dir: Optional[str], root: str) -> str:
    return os.path.join(cache_dir or os.path.join(root, DEFAULT_CACHE), key)


def train_demo_model(recipe: Optional[Recipe] = None, cache_dir: Optional[str] = None,
                     root: str = ROOT, echo: Optional[Callable[[str], None]] = print,
                     force: bool = False) -> DemoModel:
    """
    Train the demo model (or reuse the cached one) and return its base and adapter dirs.

    ``cache_dir`` defaults to ``<root>/.cache/demo_model``; ``echo`` receives progress lines
    (None: quiet). Raise :class:`DemoModelError` naming the failed stage and its log.
    """
    recipe = recipe or Recipe()
    say = echo or (lambda line: None)
    rows, lora_rows, key = _rows_and_key(recipe, root)
    texts = tokenizer_texts(rows, recipe, root)
    directory = _cache_folder(key, cache_dir, root)
    info = None if force else _load_done(directory)
    if info is not None:
        say('demo model: reusing %s (trained in %.0f s)' % (directory, info['train_seconds']))
        return DemoModel(os.path.join(directory, 'base'), os.path.join(directory, 'adapter'),
                         directory, True, info)
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(os.path.join(directory, 'logs'))
    started = time.perf_counter()
    cpu_started = _children_cpu()
    say('demo model: training into %s' % directory)
    say('  %d training rows (%d for the LoRA stage); %d-layer Qwen2, hidden %d'
        % (len(rows), len(lora_rows), recipe.layers, recipe.hidden_size))
    _write_data(directory, rows, lora_rows)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar between our lines
    # in a child process: its random weights and QR factorisation use the pinned kernels too
    build_initial_model_in(reproducible_environment(recipe), recipe, texts,
                           os.path.join(directory, 'init'))
    timings = {}
    for stage, label in (('full', 'full SFT'), ('lora', 'LoRA SFT')):
        config = stage_configs(recipe, directory, root)[stage]
        path = write_config(config, os.path.join(directory, 'configs', stage + '.yaml'))
        say('  %s: llamafactory-cli train %s' % (label, path))
        timings[stage] = run_llamafactory(path, os.path.join(directory, 'logs', stage + '.log'),
                                          label, echo, cwd=root, recipe=recipe)
        if stage == 'full' and recipe.restore_unseen_embeddings:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(os.path.join(directory, 'init'))
            seen = seen_token_ids(tokenizer, list(rows) + list(lora_rows), recipe.system)
            count = restore_unseen_embeddings(os.path.join(directory, 'init'),
                                              os.path.join(directory, 'base'), seen)
            say('  kept the initial embeddings of the %d tokens no training row contains'
                % count)
    info = {
        'key': key, 'recipe': asdict(recipe), 'rows': len(rows), 'lora_rows': len(lora_rows),
        'train_seconds': time.perf_counter() - started,
        'train_cpu_seconds': _children_cpu() - cpu_started,
        'stage_seconds': timings, 'versions': _versions(),
        'cpu_count': os.cpu_count(), 'load_average_after': _load_average(),
        'trained_at': time.strftime('%Y-%m-%d %H:%M:%S %z'),
    }
    with open(os.path.join(directory, DONE_FILE), 'w', encoding='utf-8') as stream:
        json.dump(info, stream, ensure_ascii=False, indent=1)
    say('demo model: trained in %.0f s (base %s, adapter %s)'
        % (info['train_seconds'], os.path.join(directory, 'base'),
           os.path.join(directory, 'adapter')))
    return DemoModel(os.path.join(directory, 'base'), os.path.join(directory, 'adapter'),
                     directory, False, info)


def _children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def _load_average() -> Optional[List[float]]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


# --- measuring it ----------------------------------------------------------------------------

def plan_rows(planner, rows: Sequence[dict], batch_size: int = 50) -> List[dict]:
    """Plan the commands of alpaca ``rows`` in batches; return evaluate_rows input rows."""
    from robot_llm_planner.cli.runs import plan_examples
    return plan_examples(planner, rows, batch_size)


def load_planner(model: DemoModel, **settings):
    """Return the planner serving ``model`` (loaded), greedy, on CPU unless told otherwise."""
    from robot_llm_planner.core.settings import PlannerSettings
    from robot_llm_planner.inference.build import build_planner
    options = {'model_path': model.base, 'adapter_path': model.adapter, 'device': 'cpu',
               'max_new_tokens': 256, 'cache_size': 0}
    options.update(settings)
    planner = build_planner(PlannerSettings(**options))
    planner.load()
    return planner


def heldout_accuracy(planner, split: str = 'test', root: str = ROOT,
                     limit: Optional[int] = None, batch_size: int = 50) -> dict:
    """
    Return evaluate_rows metrics of ``planner`` on a shipped split plus its predictions.

    This is the computation behind docs/demo.md's figure and the one ``make demo`` prints.
    """
    from robot_llm_planner.cli.evaluate import evaluate_rows
    rows = split_rows(split, root)
    rows = rows[:limit] if limit else rows
    started = time.perf_counter()
    predictions = plan_rows(planner, rows, batch_size)
    metrics = evaluate_rows(predictions, planner.skills)
    metrics['seconds'] = time.perf_counter() - started
    metrics['split'] = split
    metrics['predictions'] = predictions
    return metrics


def main(argv: Optional[List[str]] = None) -> int:
    """Train (or reuse) the demo model; with --evaluate measure it on the test split."""
    parser = argparse.ArgumentParser(prog='python3 -m planner_training.demo_model',
                                     description=main.__doc__)
    parser.add_argument('--evaluate', action='store_true', help='measure plan exact match')
    parser.add_argument('--split', default='test', help='split to measure (default: test)')
    parser.add_argument('--limit', type=int, default=0, help='measure the first N rows only')
    parser.add_argument('--force', action='store_true', help='train even if cached')
    parser.add_argument('--recipe', default='', help='JSON object of Recipe fields to change')
    parser.add_argument('--cache', default=None, help='cache folder (default: %s)'
                        % DEFAULT_CACHE)
    args = parser.parse_args(argv)
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # see _environment; before torch
    try:
        recipe = Recipe(**json.loads(args.recipe)) if args.recipe else Recipe()
        # measuring too computes with the pinned kernels (set before torch is imported)
        os.environ.update(reproducible_environment(recipe))
        model = train_demo_model(recipe, args.cache, force=args.force)
    except (DemoModelError, TypeError, ValueError) as exc:
        print('demo_model: %s' % exc, file=sys.stderr)
        return 2
    result = {'base': model.base, 'adapter': model.adapter, 'cached': model.cached,
              'train_seconds': round(model.train_seconds, 1),
              'train_cpu_seconds': round(model.info.get('train_cpu_seconds', 0.0), 1)}
    if args.evaluate:
        metrics = heldout_accuracy(load_planner(model), args.split, limit=args.limit or None)
        predictions = metrics.pop('predictions')
        out = os.path.join(model.directory, 'predictions-%s.jsonl' % args.split)
        with open(out, 'w', encoding='utf-8') as stream:
            for row in predictions:
                stream.write(json.dumps(row, ensure_ascii=False) + '\n')
        result.update(metrics)
        result['predictions'] = out
    print(json.dumps(result, ensure_ascii=False, indent=1))
    if args.evaluate:
        from robot_llm_planner.cli.results import confidence_table
        print('\nPlans that pass every other check, by validation.min_confidence:\n\n'
              + confidence_table(predictions), end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())

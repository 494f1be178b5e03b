"""
Every planner setting in one place.

The node's ROS parameters, the offline CLI's options and the demo all fill a
:class:`PlannerSettings`; :func:`robot_llm_planner.inference.build.build_planner` turns it into
a planner (not loaded).
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

from robot_llm_planner.core.command import DEFAULT_MAX_COMMAND_CHARS
from robot_llm_planner.core.prompt import SYSTEM_PROMPT

# The values a choice setting takes (the parameter table and the backends check against these).
BACKENDS = ('transformers', 'openai')
DTYPES = ('auto', 'bfloat16', 'float16', 'float32')
QUANTIZATION = ('none', 'int8')
FAST_PATHS = ('auto', 'on', 'off')
# How the grammar goes into a chat-completions request, per server generation:
#   structured_outputs: vLLM >= 0.10.2 ({"structured_outputs": {"grammar": ...}})
#   guided_grammar:     vLLM < 0.12 ({"guided_grammar": ...}; removed in 0.12)
#   none:               send nothing (servers without guided decoding)
REMOTE_FIELDS = ('structured_outputs', 'guided_grammar', 'none')
REMOTE_ENDPOINTS = ('auto', 'completions', 'chat')
# planner_node's queue when full: fifo refuses the new command, latest drops the oldest.
QUEUE_POLICIES = ('fifo', 'latest')
# plan_executor, when a plan arrives while one runs: queue it, or preempt the running one.
EXECUTION_POLICIES = ('queue', 'preempt')
# plan_executor's behaviour factory for skills given no other: the simulated household.
SIMULATED_BEHAVIOUR = 'robot_llm_planner.execution.simulation:simulated_skill'


@dataclass
class PlannerSettings:
    """What to serve and how; field names follow the node's parameters."""

    backend: str = 'transformers'        # model.backend
    model_path: str = ''                 # model.path
    adapter_path: str = ''               # model.adapter_path (comma-separated for several)
    device: str = 'auto'                 # model.device
    dtype: str = 'auto'                  # model.dtype
    quantization: str = 'none'           # model.quantization
    threads: int = 0                     # model.threads (0 = torch's default)
    max_prompt_tokens: int = 512         # model.max_prompt_tokens (LLaMA-Factory cutoff_len)
    remote_base_url: str = 'http://127.0.0.1:8000/v1'  # remote.base_url
    remote_model: str = ''               # remote.model
    remote_api_key_env: str = ''         # remote.api_key_env
    remote_timeout_s: float = 30.0       # remote.timeout_s
    remote_retries: int = 2              # remote.retries
    remote_grammar_field: str = 'structured_outputs'  # remote.grammar_field (grammar.py)
    remote_endpoint: str = 'auto'        # remote.endpoint
    system: str = SYSTEM_PROMPT          # prompt.system
    instruction: str = ''                # prompt.instruction
    max_new_tokens: int = 256            # generation.max_new_tokens
    do_sample: bool = False              # generation.do_sample
    constrained: bool = True             # generation.constrained
    fast_path: str = 'auto'              # generation.fast_path
    draft_tokens: int = 8                # generation.draft_tokens (prompt lookup)
    skills_file: str = ''                # skills_file ('' = the installed config/skills.yaml)
    grounded_arguments: bool = True      # validation.grounded_arguments
    min_confidence: float = 0.0          # validation.min_confidence (0 = off)
    preconditions: bool = True           # validation.preconditions
    bt_xml: bool = False                 # message.bt_xml
    bt_xml_linear: bool = False          # message.bt_xml_linear
    cache_size: int = 64                 # cache.size
    max_command_chars: int = DEFAULT_MAX_COMMAND_CHARS  # queue.max_command_chars


def split_adapters(adapter_path: str) -> List[str]:
    """Return the adapter directories of ``model.adapter_path`` (comma-separated, in order)."""
    return [part.strip() for part in (adapter_path or '').split(',') if part.strip()]


def parse_device(device: str) -> Tuple[str, Optional[int]]:
    """
    Return a ``model.device`` value as (auto, cpu or cuda; the CUDA index or None).

    Raise ValueError for anything but auto, cpu, cuda or cuda:N.
    """
    text = str(device).strip().lower()
    if text in ('auto', 'cpu', 'cuda'):
        return text, None
    if text.startswith('cuda:') and text[5:].isdigit():
        return 'cuda', int(text[5:])
    raise ValueError('model.device must be auto, cpu, cuda or cuda:N, got %r' % device)

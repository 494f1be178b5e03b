"""
Every planner setting in one place, and the planner they build.

The node's ROS parameters, the offline CLI's options and the demo all fill a
:class:`PlannerSettings`; :func:`build_planner` turns it into a :class:`Planner` (not loaded).
"""

from dataclasses import dataclass

from robot_llm_planner.backend import Backend, GenerationConfig
from robot_llm_planner.planner import DEFAULT_MAX_COMMAND_CHARS, Planner
from robot_llm_planner.prompt import PromptBuilder, SYSTEM_PROMPT
from robot_llm_planner.skills import SkillSet

BACKENDS = ('transformers', 'openai')
QUANTIZATION = ('none', 'int8')


@dataclass
class PlannerSettings:
    """What to serve and how; field names follow the node's parameters."""

    backend: str = 'transformers'        # model.backend
    model_path: str = ''                 # model.path
    adapter_path: str = ''               # model.adapter_path (comma-separated for several)
    device: str = 'auto'                 # model.device
    dtype: str = 'auto'                  # model.dtype
    quantization: str = 'none'           # model.quantization
    max_prompt_tokens: int = 512         # model.max_prompt_tokens (LLaMA-Factory cutoff_len)
    remote_base_url: str = 'http://127.0.0.1:8000/v1'  # remote.base_url
    remote_model: str = ''               # remote.model
    remote_api_key_env: str = ''         # remote.api_key_env
    remote_timeout_s: float = 30.0       # remote.timeout_s
    remote_retries: int = 2              # remote.retries
    remote_grammar_field: str = 'structured_outputs'  # remote.grammar_field (grammar.py)
    system: str = SYSTEM_PROMPT          # prompt.system
    instruction: str = ''                # prompt.instruction
    max_new_tokens: int = 256            # generation.max_new_tokens
    do_sample: bool = False              # generation.do_sample
    constrained: bool = True             # generation.constrained
    fast_path: str = 'auto'              # generation.fast_path
    draft_tokens: int = 0                # generation.draft_tokens (prompt lookup)
    skills_file: str = ''                # skills_file ('' = the installed config/skills.yaml)
    grounded_arguments: bool = True      # validation.grounded_arguments
    min_confidence: float = 0.0          # validation.min_confidence (0 = off)
    cache_size: int = 64                 # cache.size
    max_command_chars: int = DEFAULT_MAX_COMMAND_CHARS  # queue.max_command_chars


def build_backend(settings: PlannerSettings, skills: SkillSet) -> Backend:
    """Return the backend the settings ask for (not loaded)."""
    grammar = None
    if settings.constrained:
        from robot_llm_planner.grammar import PlanGrammar
        grammar = PlanGrammar(skills, remote_field=settings.remote_grammar_field)
    if settings.backend == 'transformers':
        from robot_llm_planner.transformers_backend import TransformersBackend
        return TransformersBackend(
            settings.model_path, settings.adapter_path, device=settings.device,
            dtype=settings.dtype, quantization=settings.quantization,
            fast_path=settings.fast_path,
            draft_tokens=settings.draft_tokens, max_prompt_tokens=settings.max_prompt_tokens,
            max_new_tokens=settings.max_new_tokens, grammar=grammar)
    if settings.backend == 'openai':
        from robot_llm_planner.openai_backend import OpenAIBackend
        return OpenAIBackend(settings.remote_base_url, settings.remote_model,
                             settings.remote_api_key_env, settings.remote_timeout_s,
                             settings.remote_retries, grammar=grammar)
    raise ValueError('model.backend must be one of %s, got %r'
                     % (', '.join(BACKENDS), settings.backend))


def build_planner(settings: PlannerSettings) -> Planner:
    """Return a planner for the settings; call ``load()`` on it to load the model."""
    skills = SkillSet.load(settings.skills_file or None)
    generation = GenerationConfig(max_new_tokens=settings.max_new_tokens,
                                  do_sample=settings.do_sample)
    return Planner(build_backend(settings, skills), skills,
                   PromptBuilder(settings.system, settings.instruction), generation,
                   cache_size=settings.cache_size, max_command_chars=settings.max_command_chars,
                   grounded_arguments=settings.grounded_arguments,
                   min_confidence=settings.min_confidence)

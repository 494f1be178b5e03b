"""Build a planner and its backend from the settings (:class:`.PlannerSettings`)."""

from robot_llm_planner.core.backend import Backend, GenerationConfig
from robot_llm_planner.core.planner import Planner
from robot_llm_planner.core.prompt import PromptBuilder
from robot_llm_planner.core.settings import BACKENDS, PlannerSettings
from robot_llm_planner.core.skills import SkillSet


def build_backend(settings: PlannerSettings, skills: SkillSet) -> Backend:
    """Return the backend the settings ask for (not loaded)."""
    grammar = None
    if settings.constrained:
        from robot_llm_planner.inference.grammar import PlanGrammar
        grammar = PlanGrammar(skills, remote_field=settings.remote_grammar_field)
    if settings.backend == 'transformers':
        from robot_llm_planner.inference.transformers_backend import TransformersBackend
        return TransformersBackend(
            settings.model_path, settings.adapter_path, device=settings.device,
            dtype=settings.dtype, quantization=settings.quantization,
            fast_path=settings.fast_path, threads=settings.threads,
            draft_tokens=settings.draft_tokens, max_prompt_tokens=settings.max_prompt_tokens,
            max_new_tokens=settings.max_new_tokens, grammar=grammar)
    if settings.backend == 'openai':
        from robot_llm_planner.inference.openai_backend import OpenAIBackend
        return OpenAIBackend(settings.remote_base_url, settings.remote_model,
                             settings.remote_api_key_env, settings.remote_timeout_s,
                             settings.remote_retries, grammar=grammar,
                             endpoint=settings.remote_endpoint)
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
                   min_confidence=settings.min_confidence,
                   preconditions=settings.preconditions, bt_xml=settings.bt_xml,
                   bt_xml_linear=settings.bt_xml_linear)

"""
What every inference backend provides, and the errors they raise.

A backend turns commands into the model's raw text. Two exist:

- :class:`robot_llm_planner.inference.transformers_backend.TransformersBackend`: the model on this
  machine's GPU or CPU (transformers + PEFT), LoRA adapters merged at load;
- :class:`robot_llm_planner.inference.openai_backend.OpenAIBackend`: an OpenAI-compatible server
  (vLLM with ``--enable-lora``, or ``llamafactory-cli api``).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from robot_llm_planner.core.prompt import PromptBuilder


class EngineError(RuntimeError):
    """
    Inference failed; the message names the path or setting at fault.

    ``transient`` is True when trying again later may succeed (a server that is down or
    overloaded), False when a setting or file must change first.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        """Record the message and whether the failure may pass."""
        super().__init__(message)
        self.transient = transient


class GenerationCancelled(EngineError):
    """Generation stopped early because :meth:`Backend.cancel` was called (shutdown)."""


class ModelLoadError(EngineError):
    """The model, tokenizer or adapter could not be loaded."""


class RemoteError(EngineError):
    """The remote server could not be reached or gave an unusable answer."""


@dataclass
class GenerationConfig:
    """How to decode: greedy unless ``do_sample``; at most ``max_new_tokens`` tokens."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9


@dataclass
class Generation:
    """The model's answer to one command."""

    text: str
    tokens: int = 0
    prompt_tokens: int = 0
    finished: bool = True  # False when max_new_tokens cut the answer short
    stats: Dict[str, float] = field(default_factory=dict)
    # The lowest probability the model gave a token of this answer (the stop token included),
    # as the model saw it, before the plan grammar's mask; None where the backend cannot tell.
    confidence: Optional[float] = None
    # Per generated token, in order: the characters of ``text`` its bytes fall in (start and
    # end offsets; a character split over tokens is in each) and its probability (as for
    # ``confidence``); None where the backend cannot tell. The planner turns them into each
    # step's confidence.
    token_probabilities: Optional[List[Tuple[int, int, float]]] = None
    error: str = ''  # why this command got no answer while others of its batch did


class Backend:
    """The interface the planner uses; subclasses implement load and generate."""

    name = 'backend'

    def load(self) -> None:
        """Load the model (and warm it up); raise ModelLoadError naming what is wrong."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop a generation in progress as soon as possible (it raises GenerationCancelled)."""

    def resume(self) -> None:
        """Generate again after :meth:`cancel` (the node was deactivated, not shut down)."""

    def placement(self) -> Dict[str, str]:
        """Return where the loaded model runs: ``device`` and ``dtype`` ('' where unknown)."""
        return {'device': '', 'dtype': ''}

    def warm_up(self, prompt: PromptBuilder) -> None:
        """Run a first generation with the served prompt (a no-op where nothing warms up)."""

    def generate(self, commands: List[str], prompt: PromptBuilder,
                 config: GenerationConfig) -> List[Generation]:
        """
        Return one Generation per command, in order; raise EngineError on failure.

        A backend that generates each command on its own (the remote one) may instead return
        a Generation with ``error`` set for a command that failed while others succeeded.
        """
        raise NotImplementedError

    def describe(self) -> Dict[str, str]:
        """Return what is served: backend name, base model and adapter(s)."""
        raise NotImplementedError

    def prompt_tokens(self, command: str, prompt: PromptBuilder) -> Optional[int]:
        """Return the prompt's length in tokens, or None where the server tokenizes."""
        return None

    max_prompt_tokens: Optional[int] = None

r"""
Prompts with train/serve parity: the exact text and token ids LLaMA-Factory trained on.

LLaMA-Factory's ``qwen`` template (0.9.5) renders one user turn as::

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n

and tokenizes the system part and the user part separately, concatenating the ids. An
alpaca row's query is ``instruction + "\n" + input`` (empty parts skipped). An empty system
prompt means the template's default, which changed in LLaMA-Factory 0.9.3:

- 0.9.3 and later: ``You are Qwen, created by Alibaba Cloud. You are a helpful assistant.``
- 0.9.2 and older: ``You are a helpful assistant.``

Serve a model with the system prompt of the release it was trained with. This module has no
torch dependency: a tokenizer is passed in where token ids are needed.
"""

from dataclasses import dataclass
from typing import Dict, List

SYSTEM_PROMPT = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.'
SYSTEM_PROMPT_BEFORE_0_9_3 = 'You are a helpful assistant.'

IM_START = '<|im_start|>'
IM_END = '<|im_end|>'
ENDOFTEXT = '<|endoftext|>'


def join_query(command: str, instruction: str = '') -> str:
    """Join an alpaca instruction and the command the way LLaMA-Factory's converter does."""
    return '\n'.join(part for part in (instruction, command) if part)


@dataclass(frozen=True)
class PromptBuilder:
    """Builds the qwen-template prompt for a command, as LLaMA-Factory does."""

    system: str = SYSTEM_PROMPT
    instruction: str = ''

    @property
    def effective_system(self) -> str:
        """Return the system prompt in use (LLaMA-Factory uses its default for an empty one)."""
        return self.system or SYSTEM_PROMPT

    def segments(self, command: str) -> List[str]:
        """Return the template parts LLaMA-Factory tokenizes one by one."""
        return [
            '%ssystem\n%s%s\n' % (IM_START, self.effective_system, IM_END),
            '%suser\n%s%s\n%sassistant\n' % (
                IM_START, join_query(command, self.instruction), IM_END, IM_START),
        ]

    def text(self, command: str) -> str:
        """Return the whole prompt as text."""
        return ''.join(self.segments(command))

    def token_ids(self, tokenizer, command: str) -> List[int]:
        """Return the prompt's token ids, encoded part by part like LLaMA-Factory."""
        ids: List[int] = []
        for segment in self.segments(command):
            ids += tokenizer.encode(segment, add_special_tokens=False)
        return ids

    def messages(self, command: str) -> List[Dict[str, str]]:
        """Return the chat messages for an OpenAI-compatible server using the same template."""
        return [{'role': 'system', 'content': self.effective_system},
                {'role': 'user', 'content': join_query(command, self.instruction)}]


def stop_token_ids(tokenizer) -> List[int]:
    """
    Return the ids that end an answer: ``<|im_end|>`` (or the eos token), none if neither.

    LLaMA-Factory's qwen template replaces eos with ``<|im_end|>`` and stops on it alone.
    """
    vocab = tokenizer.get_vocab()
    token = IM_END if IM_END in vocab else tokenizer.eos_token
    return [vocab[token]] if token in vocab else []

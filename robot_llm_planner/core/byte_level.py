"""
GPT-2's byte-level alphabet: how byte-level BPE vocabularies (Qwen's too) spell a token's bytes.

Printable Latin-1 bytes stand for themselves; every other byte stands for a character from
U+0100 on, in byte order. ``cli qwen-tokenizer`` writes Qwen's vocabulary with
:data:`BYTE_TO_CHAR`; the transformers backend reads a token's bytes back with
:func:`token_bytes` to place its probability in the text.
"""

from typing import Dict, Optional


def _alphabet() -> Dict[int, str]:
    printable = [byte for byte in range(256)
                 if ord('!') <= byte <= ord('~') or 0xA1 <= byte <= 0xAC or 0xAE <= byte <= 0xFF]
    others = [byte for byte in range(256) if byte not in printable]
    alphabet = {byte: chr(byte) for byte in printable}
    alphabet.update({byte: chr(256 + number) for number, byte in enumerate(others)})
    return alphabet


BYTE_TO_CHAR: Dict[int, str] = _alphabet()
CHAR_TO_BYTE: Dict[str, int] = {char: byte for byte, char in BYTE_TO_CHAR.items()}


def token_bytes(piece: Optional[str]) -> Optional[bytes]:
    """Return the bytes a byte-level BPE token stands for, None if it is not one."""
    if piece is None:
        return None
    try:
        return bytes(CHAR_TO_BYTE[char] for char in piece)
    except KeyError:
        return None

"""
A short content hash of a model or adapter directory: which weights the planner serves.

Two directories with the same path can hold different weights (a retrained adapter copied
over the old one), so the path alone does not say what runs. :func:`fingerprint` hashes every
file's name and size, the whole content of files up to :data:`WHOLE_FILE_BYTES` (configs,
tokenizers, LoRA adapters) and, of larger files (a base model's weight shards), three samples
of :data:`SAMPLE_BYTES` (start, middle, end): a fingerprint, not a checksum, read in
milliseconds even for a 15 GB model.
"""

import hashlib
import os
from typing import List

from robot_llm_planner.core.settings import split_adapters

WHOLE_FILE_BYTES = 64 << 20
SAMPLE_BYTES = 1 << 20
DIGITS = 12


def _files(path: str) -> List[str]:
    if os.path.isfile(path):
        return [path]
    found = []
    for root, directories, names in os.walk(path):
        directories[:] = sorted(d for d in directories if not d.startswith('.'))
        found += [os.path.join(root, name) for name in sorted(names) if not name.startswith('.')]
    return found


def _update(digest, path: str, size: int) -> None:
    with open(path, 'rb') as stream:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: stream.read(SAMPLE_BYTES), b''):
                digest.update(block)
            return
        for offset in (0, (size - SAMPLE_BYTES) // 2, size - SAMPLE_BYTES):
            stream.seek(offset)
            digest.update(stream.read(SAMPLE_BYTES))


def fingerprint(path: str) -> str:
    """
    Return the first :data:`DIGITS` hex digits of the directory's (or file's) content hash.

    '' for an empty path or one that does not exist; several comma-separated paths (LoRA
    adapters merged in order) give their fingerprints joined by commas.
    """
    parts = split_adapters(path)
    if len(parts) > 1:
        return ','.join(fingerprint(part) for part in parts)
    if not parts or not os.path.exists(parts[0]):
        return ''
    digest = hashlib.sha256()
    root = parts[0]
    for name in _files(root):
        try:
            size = os.path.getsize(name)
            digest.update(('%s\0%d\0' % (os.path.relpath(name, root), size)).encode('utf-8'))
            _update(digest, name, size)
        except OSError as exc:  # unreadable: counted by name, so the hash still changes
            digest.update(('%s\0unreadable %s\0' % (name, exc.errno)).encode('utf-8'))
    return digest.hexdigest()[:DIGITS]

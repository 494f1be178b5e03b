"""What the benchmarks share without torch: writing OUT/NAME.json and .md."""

import json
import os


def write_report(out, name, report, text):
    """Write ``report`` to out/name.json and the table ``text`` to out/name.md; print it."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name + '.json'), 'w', encoding='utf-8') as stream:
        json.dump(report, stream, indent=1, ensure_ascii=False)
    with open(os.path.join(out, name + '.md'), 'w', encoding='utf-8') as stream:
        stream.write(text)
    print(text, end='' if text.endswith('\n') else '\n')

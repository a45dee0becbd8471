"""Turn the Wikipedia summaries JSON into a text corpus: one article lead per paragraph, blank lines between.

Usage: python scripts/wiki_to_text.py summaries_en-us.json OUT.txt [MAX_BYTES]
Articles keep the order of the JSON file; inner newlines and runs of spaces become single spaces,
because a blank line is the document separator of the text domain.
"""

import json
import os
import re
import sys


def main() -> None:
    source, target = sys.argv[1], sys.argv[2]
    max_bytes = int(sys.argv[3]) if len(sys.argv) > 3 else None
    with open(source, encoding="utf-8") as handle:
        articles = json.load(handle)
    docs, size = [], 0
    for entry in articles.values():
        text = re.sub(r"\s+", " ", entry.get("extract") or "").strip()
        if not text:
            continue
        if max_bytes is not None and size + len(text.encode()) + 2 > max_bytes:
            break
        docs.append(text)
        size += len(text.encode()) + 2
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write("\n\n".join(docs) + "\n")
    os.replace(tmp, target)
    print(f"{target}: {len(docs)} documents, {os.path.getsize(target)} bytes")


if __name__ == "__main__":
    main()

"""Rewrite the ```text blocks of docs pages whose code prints something else now.

    python tools/update_docs_output.py docs/recurrence.md [...]

Runs each page as ``tests/test_docs.py`` does and replaces every differing output block
with what the code prints. Read the diff before committing: the docs show the product.
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
import test_docs  # noqa: E402

from flux_compile import __version__  # noqa: E402


def update(path):
    mismatches = []
    with tempfile.TemporaryDirectory() as workdir:
        test_docs.run_page(path, workdir, mismatches)
    if not mismatches:
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for line, _, printed in sorted(mismatches, reverse=True):
        start = line - 1                    # the ```text fence
        end = start + 1
        while not lines[end].startswith("```"):
            end += 1
        shown = test_docs.BLOCK_FILE.sub("/path/to/model.py", printed)
        shown = shown.replace(f"flux_compile {__version__} for", "flux_compile ... for").split("\n")
        lines[start + 1:end] = shown
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return len(mismatches)


if __name__ == "__main__":
    for page in sys.argv[1:]:
        print(f"{page}: {update(page)} output block(s) rewritten")

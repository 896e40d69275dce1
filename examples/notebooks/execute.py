"""Re-run the demo notebooks and save them with fresh outputs.

    python examples/notebooks/execute.py                 # every notebook in this folder
    python examples/notebooks/execute.py quickstart.ipynb

Needs ``nbclient``, ``nbformat``, ``ipykernel`` and ``matplotlib``. Cell ids are
numbered and timing metadata dropped, so a re-run only changes real outputs.
"""
import os
import sys

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))


def execute(path, timeout=120):
    """Execute one notebook in a fresh ``python3`` kernel, in its own folder; returns it."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=timeout,
                            resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
    client.execute()
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
        cell.metadata.pop("execution", None)
    return nb


def main(names):
    names = names or sorted(n for n in os.listdir(HERE) if n.endswith(".ipynb"))
    for name in names:
        path = name if os.path.isabs(name) else os.path.join(HERE, name)
        nbformat.write(execute(path), path)
        print("executed", os.path.relpath(path))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Jepsen-style fault injection for replicad (issue #9): run, record, check.

- ``schedule``: the seeded fault schedule (pure);
- ``runner``: real replicas through the fault proxy, concurrent client sessions, the
  schedule carried out, a JSON-lines history (``history``);
- ``checker``: session guarantees, lost writes, convergence and duplicates judged from
  the history alone (pure);
- ``plot``: a timeline PNG (matplotlib, imported lazily).

``python -m replicad.chaos [run] ...``, ``python -m replicad.chaos check HISTORY``;
docs/reliability.md has the figures and the commands that reproduce them.
"""

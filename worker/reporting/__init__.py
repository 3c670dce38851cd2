"""What an ops manager reads before and after the runs: the report over the store
(``sop-worker report``), the forward simulation (``simulate``), the impact of a mapping
change (``diff``) and the plan undoing a run (``undo``).

Nothing here writes to an org: the report reads the store alone; simulate, diff and undo
read the org at most once (a pull, with the dry-run sink) and make plans or figures.
"""

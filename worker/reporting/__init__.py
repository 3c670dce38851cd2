"""What an ops manager reads: the report over the store (``sop-worker report``), the forward
simulation, the impact of a mapping change and the undo of a run.

Everything here reads the store and the cached records only: no API call, no write.
"""

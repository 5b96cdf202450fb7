"""Test tools that run real processes: a fault-injecting TCP proxy and a cluster behind it.

Not imported by the replica itself; tests and (later) a chaos suite use it to partition
replicas without killing them (issue #7).
"""

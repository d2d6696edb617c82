"""DNS wire format and zone semantics, compiled answers and the answer table (see README.md).

Imports nothing else of fedns.
"""

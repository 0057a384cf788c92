"""The gate: the one Redis round trip per request (``lua/gate.lua``: rate-limit windows, the
cache lookup, the org's epoch), the pipelined client it goes over, and every Redis key name.
"""

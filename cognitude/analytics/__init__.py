"""Reports read from the ledger's rollups (never its raw rows).
"""

"""The response cache: its key and stored-value format, the org's cache policy, and the
Postgres cold tier behind Redis.
"""

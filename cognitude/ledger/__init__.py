"""The usage ledger: from a finished request to its row (tokens, cost), the batched COPY
writer with its spill files, the price catalog, the tokenizer, and the leader-locked
maintenance (partitions, retention, the hourly rollup).
"""

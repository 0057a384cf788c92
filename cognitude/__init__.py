"""Cognitude: an OpenAI-compatible LLM proxy (cache, rate limits, budgets, usage ledger)."""

__version__ = "0.1.0"

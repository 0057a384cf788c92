"""The management API, HTTP endpoints only: organizations, API keys, provider credentials,
limits, cache settings, analytics; what they share is in ``common`` and ``guards``."""

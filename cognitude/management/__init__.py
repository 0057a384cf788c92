"""The management API: organizations, API keys, provider credentials, limits and settings."""

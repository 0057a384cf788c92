"""Who is calling: API keys and their in-process cache, an org's own provider credentials
(encrypted at rest), passwords, and the cross-replica invalidation of all of it.
"""

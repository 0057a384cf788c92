"""The hot route, as stages a request moves through in order (DESIGN §1):
request → plan → admit → dispatch → respond → after; ``route`` is the ASGI boundary.
"""

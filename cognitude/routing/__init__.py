"""Smart routing: classify a chat request as simple / medium / complex (``classifier``).

The router, its per-org rules, the catalog view and the ``smart-*`` modes live beside the
classifier in this package; the classifier itself depends on nothing but the standard library.
"""

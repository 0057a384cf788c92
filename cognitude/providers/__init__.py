"""The upstream providers: which one serves a model, the pooled HTTP client and its bounds
(egress guard, deadlines, size caps), and the OpenAI wire format's answers.
"""

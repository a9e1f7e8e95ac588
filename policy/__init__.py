"""The Pulumi policy pack that reviews every stack: `rules.py` holds the rules, `__main__.py` serves them.

Run it with `pulumi preview --policy-pack policy`; it lives in its own virtualenv (`make policy-venv`).
"""

"""Spam checks on new comments: the ``ISpamCheck`` interface, the default
heuristic and the runner that asks the checks in order (docs/spam.md)."""

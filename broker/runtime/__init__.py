"""Runtime services with no web or SSH knowledge.

Settings, errors, periodic work, live sessions, recording, audit checkpoints, webhooks.
"""

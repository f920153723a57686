"""Key stores: SSH host/user keys, recording keys, agent keys."""

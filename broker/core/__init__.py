"""The session core: one maintenance session, its asset link and its forward relays.

Protocol- and front-end-neutral: the SSH front door (:mod:`broker.ssh`) is one adapter over it.
"""

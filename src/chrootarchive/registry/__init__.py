"""Talking to an image registry (the OCI distribution protocol), on the parent side only.

Nothing here is imported by the confined worker or by the ``untar`` path: the network,
TLS and credentials stay outside the jail.
"""

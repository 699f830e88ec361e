"""Peer discovery for task bucket groups (static lists and mDNS)."""

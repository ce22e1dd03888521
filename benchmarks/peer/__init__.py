"""Side-by-side runs against the original MutualNet / US-Nets code (see docs/peer.md)."""

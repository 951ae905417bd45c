"""Hearsay: a self-hosted speech gateway for voice bots."""

"""Fault suite: tests import their checks from ``faultkit`` (this folder is on sys.path)."""

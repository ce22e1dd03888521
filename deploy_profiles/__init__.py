"""Shipped deploy profiles (``*.yml``), read and validated by ``export.profiles``.

A package only so that an installed copy ships the YAML files as package data.
"""

"""Typed, frozen configuration: the checking machinery (typed.py) and shape checks shared by model
configs (shapes.py). Below every other layer: the families' configs and the recipes build on it."""

"""Figures: every matplotlib call of the package lives under here (import the submodule you need).

The face stays empty so that importing one figure module does not pull in the others, and so the
import contracts see the real imports.
"""

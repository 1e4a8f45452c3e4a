"""The attribution domain: who gets credit for a conversion, and how much.

Pure functions and dataclasses: no HTTP, no SQL, no clock reads (time is an argument).
"""

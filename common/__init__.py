"""Numpy-only code shared by training and the service: media decoding and fusion.

Nothing here imports torch, so the service can use it without pulling training in.
"""

"""Opt-in decoder processes (model.preprocess_in=processes): fetch and decode outside the worker's GIL, into
shared memory.
"""

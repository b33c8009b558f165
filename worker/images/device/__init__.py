"""Opt-in JPEG decode on the device (model.decode=gpu): the journal that keeps a crashing JPEG from becoming a
crash loop.
"""

"""How finished offsets are committed: stored and auto-committed after acks (acked.py), or inside transactions
(transactional.py).
"""

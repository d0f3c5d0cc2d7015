"""Front doors: one module per way in (the line protocol today), each a thin adapter
between a transport and the core that reuses every rule in ``twisted_chat.rules``.
"""

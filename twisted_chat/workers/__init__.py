"""``--workers N``: N processes behind one port, each a node of the backplane network.

``supervisor`` runs in the parent (twistd): it starts the workers on the sockets the
parent bound, restarts one that dies, stops them with it and puts their log in its own.
``child`` is a worker's entry point (``python -m twisted_chat.workers``).
"""

"""The groupchat terminal client: ``python -m twisted_chat.client``."""

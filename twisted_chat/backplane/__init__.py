"""A backplane: several nodes of groupchat sharing members, rooms and names."""

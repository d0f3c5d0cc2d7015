"""The chat core: members, rooms, the nickname registry, fan-out and the heartbeat rule.

It knows the people it serves only through ``interfaces.IParticipant`` and never imports
a transport, a front door or a rule about connections.
"""

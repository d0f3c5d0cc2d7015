"""What every connection obeys, whichever front door it came through: input limits,
the bounded output queue, batching, connection limits and logins.
"""

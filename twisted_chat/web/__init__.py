"""The browser client: the static files ``--web`` serves (no build step, nothing fetched
from elsewhere at run time)."""

"""``python -m twisted_chat.workers``: one worker process, started by the supervisor."""

from twisted_chat.workers.child import main

main()

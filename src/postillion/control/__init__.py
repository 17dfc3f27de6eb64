"""The control socket: `postillion ctl`, `mailq` and `sendmail` talk to the
running daemon through `control.sock` at the top of the spool.

The parent binds the socket (0666, in the 0711 spool) and hands it to the
queue process, which serves it: the queue's verbs are its own, the others it
passes to the smtp and mta processes or to the parent over their channels.
Who may do what is decided by the peer's uid (SO_PEERCRED), never by
anything the client says: root (and the daemon's own user) every verb, any
local user `enqueue` (sendmail) and `show queue|envelope|message` of the
mail it submitted itself.
"""

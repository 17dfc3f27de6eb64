"""The grammar of smtpd.conf's statements, one module per family.

parser.py reads files, dispatches each statement by its first word and
builds the Config; the statements themselves are parsed here:

    base.py     what every family shares (quoting, option helpers)
    tables.py   table, and the <name> / inline table references
    pki.py      pki, ca
    listen.py   listen on
    action.py   action
    match.py    match (and the rule that match and 2012 rules do not mix)
    options.py  hostname, smtp, queue, bounce, mda, scheduler, and the
                2012 spellings expire, max-message-size, bounce-warn
    mta.py      mta

Each family is a class whose methods `Parser` inherits; the 2012 rules
are compiled by legacy.py into the same model.
"""

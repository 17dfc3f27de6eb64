"""The MTA: relays mail to other hosts."""

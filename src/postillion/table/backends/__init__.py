"""Table backends, one module each; `table/registry.py` lists them by name.

A backend deals in raw strings (see `table/backend.py` for the contract);
parsing, key folding, list matching and timeouts are the `Table`'s job.
"""

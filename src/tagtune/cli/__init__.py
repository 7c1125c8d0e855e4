"""The thin command line: each module registers a few verbs that parse, call the library, print."""

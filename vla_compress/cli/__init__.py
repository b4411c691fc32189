"""The `vla-compress` command line (click). Rich output lives only here."""

"""Board side of edvit-tool. Imports only the stdlib, numpy and one interpreter — never torch, timm or the
host modules — so it can be copied to a board as-is."""

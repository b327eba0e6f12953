"""Sequence parallelism: per-head plans under Ulysses (DESIGN.md section 8).

Under Ulysses each rank holds a contiguous chunk of the (zero-padded)
sequence; an all-to-all gives every rank the whole sequence for a block of
H/P heads, it attends, and an all-to-all gives the chunks back. A per-head
plan composes with that directly: a rank runs its own heads' patterns
(`slicing`), after an optional per-layer head permutation that evens out the
ranks' work (`balance`). `ulysses` is the Wan self-attention path,
`sequence_split` the pad-and-split of the token sequence around the blocks
(what Raylight's forward does, for tests and benchmarks), `raylight` the
per-worker patch the Raylight node installs.
"""

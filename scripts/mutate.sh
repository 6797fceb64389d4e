#!/usr/bin/env bash
# Mutation testing over the security- and correctness-critical code: each
# mutation of scripts/mutations.txt (a plausible bug, keyed by a unique
# source snippet) is applied alone to a copy of the working tree and the
# tests of the packages it names are run. Prints each mutation, whether a
# test killed it and which, and the score. Exits 1 when a mutant survives or
# a snippet is no longer found. Not part of scripts/test.sh: it takes about
# an hour on two shared cores for 176 mutants (TESTING.md has the latest run).
#
#   scripts/mutate.sh                 # all mutations
#   scripts/mutate.sh -run '^policy-' # those whose id matches
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./scripts/mutate "$@"

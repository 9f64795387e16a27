"""Crash-test helper (no Ray): write ledger groups forever, print each acked key.

Usage: python tests/actors/ledger_crash_writer.py DB_PATH [GROUPS_PER_COMMIT]

Every group deposits to a client, escrows part of it for a request and settles
nothing else, so conservation and overdraft checks are exercised. A key is
printed (and flushed) only after `commit_groups` returned, i.e. after COMMIT:
the parent SIGKILLs us at a random moment and checks every printed key is in
the reopened database.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from actors.ledger import LedgerStore  # noqa: E402
from protocols.ledger import deposit_postings, escrow_postings  # noqa: E402


def main() -> None:
    path = sys.argv[1]
    per_commit = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    store = LedgerStore(path, verify=True)
    i = store.head()[0]  # continue after whatever a previous run left
    while True:
        groups = []
        for _ in range(per_commit):
            i += 1
            rid = f"req-{os.getpid()}-{i}"
            groups.append((deposit_postings(f"client/c{i % 7}", 10, rid)
                           + escrow_postings(rid, f"c{i % 7}", 7), float(i)))
        results = store.commit_groups(groups)
        out = []
        for r in results:
            if r.error is not None:
                raise r.error
            out.extend(r.keys)
        sys.stdout.write("".join(f"{k}\n" for k in out))
        sys.stdout.flush()


if __name__ == "__main__":
    main()

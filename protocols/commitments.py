"""Output commitments and the commit-reveal rule.

commitment  = H(canonical(request id, model hash, prompt hash, params, output token ids))
commit_hash = H(domain || committer public key || commitment || salt)

Binding the committer's key into the commit hash is what defeats a copying
node: copying another node's commit hash is useless, because only a salt that
opens it *for the copier's own key* will be accepted at reveal time, and the
reveals are opened only after every commit is in.
"""

from __future__ import annotations

from typing import Any, Sequence

from .canonical import digest, pack, sha256

COMMITMENT_DOMAIN = "verinfer/output/v1"
COMMIT_DOMAIN = b"verinfer/commit/v1|"
FINGERPRINTED_DOMAIN = b"verinfer/commit+fingerprint/v1|"


def prompt_hash(prompt: str | bytes, salt: bytes = b"") -> bytes:
    """H(domain || salt || prompt). Requests salt it with their nonce, so hashes of
    one prompt differ across requests. The nonce is public, though: a plaintext
    request's prompt travels in the clear anyway, and a sealed request salts with
    nonce || a secret that travels only inside the sealed prompt, so nobody but
    the client and the nodes it sealed to can test a guessed prompt against it."""
    data = prompt.encode("utf-8") if isinstance(prompt, str) else bytes(prompt)
    return sha256(b"verinfer/prompt|", bytes(salt), b"|", data)


def output_commitment(
    request_id: str,
    model_hash: str,
    prompt_hash_: bytes,
    params_wire: dict[str, Any],
    token_ids: Sequence[int],
) -> bytes:
    return digest(
        [COMMITMENT_DOMAIN, request_id, model_hash, prompt_hash_, params_wire, [int(t) for t in token_ids]]
    )


def commit_hash(committer: bytes, commitment: bytes, salt: bytes, fingerprint: bytes = b"") -> bytes:
    """H(domain, committer, commitment, salt), and the output's activation fingerprint
    (protocols.fingerprint) when the node made one: sealed with the tokens, so a node
    cannot choose its fingerprint after seeing another's."""
    if not fingerprint:
        return sha256(COMMIT_DOMAIN, committer, commitment, salt)
    from .fingerprint import fingerprint_hash

    return sha256(FINGERPRINTED_DOMAIN, committer, commitment, salt, fingerprint_hash(fingerprint))


def opens(commit: bytes, committer: bytes, commitment: bytes, salt: bytes, fingerprint: bytes = b"") -> bool:
    """True iff (commitment, salt, fingerprint) opens `commit` for `committer`."""
    return (
        isinstance(commitment, bytes)
        and isinstance(salt, bytes)
        and isinstance(fingerprint, bytes)
        and len(salt) >= 16
        and commit_hash(committer, commitment, salt, fingerprint) == commit
    )


def output_digest(token_ids: Sequence[int], text: str) -> bytes:
    """What a node signs about the output it handed the client."""
    return sha256(b"verinfer/output-digest|", pack([[int(t) for t in token_ids], text]))

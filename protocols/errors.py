"""Typed errors of the protocol. Every rejection of bad input is one of these.

Callers catch `VerinferError` to tell "the input was bad, nothing changed" from a
crash. Each subclass names one reason so tests and clients can react precisely.
"""


class VerinferError(Exception):
    """Base of every error verinfer raises on purpose."""


# --- messages -----------------------------------------------------------------
class MessageError(VerinferError):
    """A message was rejected; the receiver's state is unchanged."""


class MalformedMessage(MessageError):
    """Bytes are not a well-formed envelope or the body misses/mistypes a field."""


class UnknownVersion(MessageError):
    """Envelope version this code does not speak."""


class UnknownType(MessageError):
    """Envelope type this code does not know."""


class BadSignature(MessageError):
    """Signature does not verify under the claimed sender's key."""


class ReplayedMessage(MessageError):
    """The (sender, type, request id, nonce) was seen before."""


class UnknownSender(MessageError):
    """Sender is not a registered node/client/pseudonym for this context."""


# --- requests and models --------------------------------------------------------
class RequestError(VerinferError):
    """A request is not acceptable as asked."""


class PromptTooLarge(RequestError):
    """Prompt exceeds the network's configured limit."""


class UnknownModel(RequestError):
    """Model id is not registered."""


class ModelHashMismatch(RequestError):
    """Weights' content hash differs from the hash the registry records."""


class ModelLocked(RequestError):
    """Weights are encrypted at rest and this node holds no released key for them."""


class InvalidParams(RequestError):
    """Sampling params, mode or N outside what the network accepts."""


class UnknownRequest(RequestError):
    """No round with that request id."""


class SealedPromptRejected(RequestError):
    """A sealed prompt does not open for the node, or its plaintext does not match the
    signed prompt hash: the client's fault, which only the (attested) node can see."""

    def __init__(self, request_id: str, message: str):
        super().__init__(message)
        self.request_id = request_id


# --- nodes and selection -------------------------------------------------------
class NodeError(VerinferError):
    """Node admission or lookup failed."""


class UnknownNode(NodeError):
    """Node id not registered."""


class DuplicateNode(NodeError):
    """Node id already registered."""


class NotEnoughNodes(NodeError):
    """Fewer eligible nodes than the quorum asks for."""


class SelectorMisbehaved(NodeError):
    """The selector's unblinding does not open the mapping it committed to: nobody is
    slashed on its word, the client is refunded, and the evidence is reported."""


# --- ledger -------------------------------------------------------------------
class LedgerError(VerinferError):
    """Ledger refused a change; nothing was written."""


class InsufficientFunds(LedgerError):
    """A debit would take an account below zero."""


class ConservationViolation(LedgerError):
    """Sum over accounts no longer equals deposits minus withdrawals."""


class ChainBroken(LedgerError):
    """Stored entries do not form a valid hash chain."""


# --- config -------------------------------------------------------------------
class ConfigError(VerinferError):
    """Network configuration is invalid; the message names the field."""


# --- receipts -------------------------------------------------------------------
class ReceiptInvalid(VerinferError):
    """A receipt failed offline verification; the message says why."""

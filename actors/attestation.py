"""Attestation providers: the node side that produces evidence (may do I/O).

A provider answers a verifier's challenge: given the node's signing key, its
HPKE key and a fresh nonce, it returns evidence whose report_data binds all
three (protocols.attestation.report_data). The verifier is
protocols.attestation.verify, the same for every provider.

SimulatedProvider signs under a SimulatedRoot test root of trust: it proves
nothing about hardware and verifiers reject it unless their policy says
allow_simulated.

NvidiaGpuProvider uses NVIDIA GPU confidential computing through NVIDIA's
attestation SDK and NRAS (NVIDIA Remote Attestation Service). Untested here:
no GPU. To enable on H100/H200 nodes:
  1. Run the node in a confidential VM (Intel TDX or AMD SEV-SNP) with the GPU
     passed through and CC mode on (`nvidia_gpu_tools.py --set-cc-mode=on
     --reset-after-cc-mode-switch` from NVIDIA/nvtrust, checked with
     `nvidia-smi conf-compute -f` reporting CC status ON).
  2. Install a CC-capable driver (r535 or later; see nvtrust's compatibility
     matrix), then set the GPU ready state (`nvidia-smi conf-compute -srs 1`).
  3. `pip install nv-attestation-sdk` (pulls nv-local-gpu-verifier) in the
     node's venv; the node must reach nras.attestation.nvidia.com (override
     with NV_NRAS_GPU_URL), and the SDK reaches the RIM and OCSP services.
  4. Verifiers pin NRAS' signing keys as trust anchors: `fetch_nras_anchors()`
     once at start-up (trusting TLS to nvidia.com) or keys copied into config.
  5. The policy pins min_tcb_version (driver major*1000+minor) and, as with any
     provider, allow_simulated=False.
GPU CC attests the GPU (firmware, driver, VBIOS, no debug mode) and that the
GPU saw our report_data; it does not measure the CPU-side code, so code_hash,
model_hash and engine stay the node's own signed claim until a CPU TEE quote
(TDX/SNP) provider is added next to this one.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Protocol, runtime_checkable

from protocols.attestation import (
    NVIDIA_FORMAT,
    SIM_FORMAT,
    ProviderUnavailable,
    SimulatedRoot,
    nvidia_evidence,
    report_data,
)
from protocols.canonical import pack
from protocols.crypto import SigningKey

MEASURED_PACKAGES = ("protocols", "actors", "cluster")


@runtime_checkable
class Provider(Protocol):
    """Produces attestation evidence for a verifier's challenge."""

    name: str  # the evidence format it produces

    def evidence(self, signing_pub: bytes, kem_pub: bytes, nonce: bytes) -> bytes:
        """Evidence binding report_data(signing_pub, kem_pub, nonce)."""
        ...


def code_hash(root: Path | str | None = None) -> str:
    """Hex SHA-256 over the installed verinfer source: the `code_hash` measurement.

    Covers every .py file of the protocols, actors and cluster packages, sorted by
    path relative to the package's parent, each as (relative path, SHA-256 of the
    content). `root` is a directory holding those packages (default: wherever
    they are imported from). Without `root` the value is measured once per process,
    like a TEE measures at launch: it describes the code this process loaded, even if
    the files change later.
    """
    if root is None:
        if _CODE_HASH:
            return _CODE_HASH[0]
        _CODE_HASH.append(_measure(None))
        return _CODE_HASH[0]
    return _measure(root)


_CODE_HASH: list[str] = []


def _measure(root: Path | str | None) -> str:
    entries = []
    for pkg in MEASURED_PACKAGES:
        if root is not None:
            pkg_dir = Path(root) / pkg
        else:
            spec = importlib.util.find_spec(pkg)
            if spec is None or not spec.submodule_search_locations:
                raise FileNotFoundError(f"package {pkg!r} is not importable")
            pkg_dir = Path(list(spec.submodule_search_locations)[0])
        if not pkg_dir.is_dir():
            raise FileNotFoundError(f"no package directory {pkg_dir}")
        for f in pkg_dir.rglob("*.py"):
            if "__pycache__" not in f.parts:
                rel = f"{pkg}/{f.relative_to(pkg_dir).as_posix()}"
                entries.append([rel, hashlib.sha256(f.read_bytes()).digest()])
    entries.sort(key=lambda e: e[0])
    return hashlib.sha256(b"verinfer/code-hash/v1\x00" + pack(entries)).hexdigest()


class SimulatedProvider:
    """Evidence under a SimulatedRoot (format verinfer-sim-v1): SIMULATED, not hardware."""

    name = SIM_FORMAT
    simulated = True

    def __init__(self, root_seed: bytes, device_id: str, measurements: Mapping[str, str],
                 tcb_version: int, clock: Callable[[], float] = time.time,
                 validity_s: float = 86400.0):
        self._root = SimulatedRoot(root_seed)
        self.device_id = device_id
        self.measurements = dict(measurements)
        self.tcb_version = tcb_version
        self._clock = clock
        self._validity_s = validity_s

    @property
    def trust_anchor(self) -> bytes:
        return self._root.trust_anchor

    def evidence(self, signing_pub: bytes, kem_pub: bytes, nonce: bytes) -> bytes:
        return self._root.evidence(self.device_id, signing_pub, kem_pub, nonce, self.measurements,
                                   self.tcb_version, self._clock(), validity_s=self._validity_s)


# The SDK's Attestation is a process-wide singleton with class-level state.
_SDK_LOCK = threading.Lock()


def _sdk():
    try:
        from nv_attestation_sdk import attestation
    except ImportError as exc:
        raise ProviderUnavailable(
            "NVIDIA GPU attestation needs the nv-attestation-sdk package "
            f"(`pip install nv-attestation-sdk`) on a CC-enabled H100/H200: {exc}") from None
    return attestation


class NvidiaGpuProvider:
    """Evidence from NVIDIA GPU CC via nv_attestation_sdk + NRAS (format nvidia-gpu-cc-v1).

    The GPU's SPDM report is requested with nonce = report_data, sent to NRAS,
    and NRAS' signed tokens are wrapped with a report the node signs with its
    own signing key. Untested here (no GPU); the SDK is imported lazily.
    """

    name = NVIDIA_FORMAT
    simulated = False

    def __init__(self, signing_key: SigningKey, measurements: Mapping[str, str],
                 nras_url: str = "", clock: Callable[[], float] = time.time,
                 client_name: str = "verinfer-node", ppcie_mode: bool = False):
        self._signing_key = signing_key
        self.measurements = dict(measurements)
        self.nras_url = nras_url  # "" = the SDK's default (NV_NRAS_GPU_URL or NVIDIA's NRAS)
        self._clock = clock
        self._client_name = client_name
        self.ppcie_mode = ppcie_mode  # True only for multi-GPU protected-PCIe (NVSwitch) systems

    def evidence(self, signing_pub: bytes, kem_pub: bytes, nonce: bytes) -> bytes:
        if bytes(signing_pub) != self._signing_key.public:
            raise ValueError("NvidiaGpuProvider attests only its own signing key")
        rd = report_data(signing_pub, kem_pub, nonce)
        attestation = _sdk()
        with _SDK_LOCK:
            client = attestation.Attestation()
            if hasattr(client, "reset"):
                client.reset()
            else:
                client.clear_verifiers()
            client.set_name(self._client_name)
            client.set_nonce(rd.hex())  # 32 bytes = the 64 hex chars the SDK expects
            if hasattr(client, "set_claims_version"):
                client.set_claims_version("3.0")  # the claim names _verify_nvidia checks
            client.add_verifier(attestation.Devices.GPU, attestation.Environment.REMOTE,
                                self.nras_url, "")
            if not hasattr(client, "get_evidence"):  # SDK 1.0: attest() collects itself
                ok = client.attest()
            else:
                try:  # SDK >= 2: options dict; earlier: ppcie_mode keyword
                    gpu_evidence = client.get_evidence(options={"ppcie_mode": self.ppcie_mode})
                except TypeError:
                    gpu_evidence = client.get_evidence(ppcie_mode=self.ppcie_mode)
                ok = client.attest(gpu_evidence)
            token = client.get_token()
        if not ok or not token:
            raise ProviderUnavailable("NVIDIA GPU attestation failed (see the SDK log)")
        nras_eat = _nras_response(token)
        return nvidia_evidence(self._signing_key, kem_pub, nonce, self.measurements,
                               nras_eat, self._clock())


def _nras_response(token: str) -> list:
    """The SDK's EAT is [["JWT", sdk_jwt], {"REMOTE_GPU_CLAIMS": nras_response}]."""
    try:
        eat = json.loads(token)
        nras = eat[1]["REMOTE_GPU_CLAIMS"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ProviderUnavailable("SDK token carries no REMOTE_GPU_CLAIMS (NRAS) section") from None
    return json.loads(nras) if isinstance(nras, str) else nras


def fetch_nras_anchors(nras_url: str = "https://nras.attestation.nvidia.com",
                       timeout: float = 10.0) -> list[bytes]:
    """NRAS' token-signing keys (DER SubjectPublicKeyInfo) from its JWKS endpoint.

    Trust comes from TLS to NVIDIA; deployments that want no start-up fetch copy
    these bytes into config and pass them to verify() as trust anchors.
    """
    from urllib.parse import urlparse

    from Crypto.PublicKey import ECC

    u = urlparse(nras_url)
    with urllib.request.urlopen(f"{u.scheme}://{u.netloc}/.well-known/jwks.json", timeout=timeout) as resp:
        jwks = json.load(resp)
    anchors = []
    for key in jwks.get("keys", []):
        for cert_b64 in key.get("x5c", [])[:1]:
            anchors.append(ECC.import_key(base64.b64decode(cert_b64)).export_key(format="DER"))
    return anchors
